package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DefaultBusybox is where Debian's busybox-static installs its binary.
const DefaultBusybox = "/bin/busybox"

// BusyboxApplets are the commands BusyboxImage links to /bin/busybox by
// default: enough for shells, file and process tools, and the engine's
// tests (free, df, dd, mount, ps, top).
var BusyboxApplets = []string{
	"sh", "ash", "ls", "cat", "echo", "sleep", "true", "false", "env", "id",
	"free", "df", "du", "dd", "mount", "umount", "ps", "top", "kill", "pkill",
	"mkdir", "rm", "rmdir", "touch", "cp", "mv", "ln", "chmod", "chown",
	"grep", "head", "tail", "wc", "cut", "tr", "sed", "awk", "sort", "uniq",
	"hostname", "uname", "sync", "stat", "date", "pwd", "whoami", "nproc",
	"printf", "test", "[", "seq", "yes", "wget", "nc", "vi", "less", "tee",
	"xargs", "find", "basename", "dirname", "readlink", "realpath", "uptime",
	"mktemp", "md5sum", "sha256sum", "timeout", "watch", "nohup", "setsid",
	"init", "halt", "poweroff", "reboot", "login", "su", "tty", "stty",
}

// BusyboxOptions configures BusyboxImage. The zero value builds a
// linux/amd64 image from /bin/busybox whose command is /bin/sh.
type BusyboxOptions struct {
	// Binary is the statically linked busybox to put in the image
	// (default DefaultBusybox).
	Binary string
	// Applets to link to /bin/busybox (default BusyboxApplets).
	Applets []string
	// Files adds regular files (path → content, mode 0755 when the path is
	// under a bin directory, 0644 otherwise) in a second layer.
	Files map[string]string
	// Entrypoint, Cmd, Env, WorkingDir, User and Labels go into the image
	// config (Cmd defaults to ["/bin/sh"]; PATH is always set).
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
	Labels     map[string]string
	// Architecture of the image (default amd64).
	Architecture string
	// Created is the config's creation time (default 2024-01-01T00:00:00Z).
	Created time.Time
}

// BusyboxImage builds a small runnable image from a static busybox: a
// layer with /bin/busybox, a symlink per applet, /etc/passwd and
// /etc/group (root, nobody), and the usual empty directories; and, when
// opts.Files is set, a second layer with those files. The result is an
// OCI index over one platform, ready for Registry.Push. It fails with
// errdefs.ErrNotFound when the binary is missing (apt-get install
// busybox-static).
func BusyboxImage(opts BusyboxOptions) (*Image, error) {
	if opts.Binary == "" {
		opts.Binary = DefaultBusybox
	}
	if opts.Applets == nil {
		opts.Applets = BusyboxApplets
	}
	if opts.Architecture == "" {
		opts.Architecture = "amd64"
	}
	if opts.Cmd == nil && opts.Entrypoint == nil {
		opts.Cmd = []string{"/bin/sh"}
	}
	if opts.Created.IsZero() {
		opts.Created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	bin, err := os.ReadFile(opts.Binary)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("busybox image: %s is missing (apt-get install busybox-static): %w", opts.Binary, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	mtime := opts.Created
	base := []tarEntry{}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home",
		"proc", "sys", "dev", "run", "var", "var/log", "var/tmp", "mnt", "data"} {
		mode := int64(0o755)
		if d == "tmp" || d == "var/tmp" {
			mode = 0o1777
		}
		base = append(base, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode}})
	}
	base = append(base,
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, data: bin},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644},
			data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644},
			data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		// Login shells read /etc/profile.d/*.sh, as on a distribution.
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/profile.d/", Mode: 0o755}},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/profile", Mode: 0o644},
			data: []byte("for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\nunset f\n")},
	)
	seen := map[string]bool{"busybox": true}
	for _, a := range opts.Applets {
		if seen[a] || a == "" || strings.Contains(a, "/") {
			continue
		}
		seen[a] = true
		dir := "bin"
		switch a {
		case "init", "halt", "poweroff", "reboot":
			dir = "sbin"
		}
		target := "/bin/busybox"
		base = append(base, tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: dir + "/" + a, Linkname: target, Mode: 0o777}})
	}
	layers := [][]tarEntry{base}
	if len(opts.Files) > 0 {
		var extra []tarEntry
		dirs := map[string]bool{}
		names := make([]string, 0, len(opts.Files))
		for name := range opts.Files {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			clean := strings.TrimPrefix(path.Clean("/"+name), "/")
			for d := path.Dir(clean); d != "." && !dirs[d]; d = path.Dir(d) {
				dirs[d] = true
			}
		}
		dirList := make([]string, 0, len(dirs))
		for d := range dirs {
			dirList = append(dirList, d)
		}
		sort.Strings(dirList)
		for _, d := range dirList {
			extra = append(extra, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}})
		}
		for _, name := range names {
			clean := strings.TrimPrefix(path.Clean("/"+name), "/")
			mode := int64(0o644)
			if strings.Contains("/"+path.Dir(clean)+"/", "bin/") {
				mode = 0o755
			}
			extra = append(extra, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: clean, Mode: mode}, data: []byte(opts.Files[name])})
		}
		layers = append(layers, extra)
	}

	img := &Image{}
	plat := ocispec.Platform{OS: "linux", Architecture: opts.Architecture}
	created := opts.Created
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, opts.Env...)
	cfg := ocispec.Image{
		Created:  &created,
		Author:   "pouchfly busybox image builder",
		Platform: plat,
		Config: ocispec.ImageConfig{
			Env: env, Entrypoint: opts.Entrypoint, Cmd: opts.Cmd,
			WorkingDir: opts.WorkingDir, User: opts.User, Labels: opts.Labels,
		},
		RootFS: ocispec.RootFS{Type: "layers"},
	}
	man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	for i, entries := range layers {
		data, diffID, err := buildLayer(entries, mtime)
		if err != nil {
			return nil, err
		}
		d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}
		img.Blobs = append(img.Blobs, Blob{Descriptor: d, Data: data})
		man.Layers = append(man.Layers, d)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		cfg.History = append(cfg.History, ocispec.History{Created: &created, CreatedBy: fmt.Sprintf("pouchfly busybox layer %d", i)})
	}
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	man.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}
	img.Blobs = append(img.Blobs, Blob{Descriptor: man.Config, Data: cfgBytes})
	manBytes, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	img.Platforms = []PlatformImage{{
		Descriptor: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manBytes),
			Size: int64(len(manBytes)), Platform: &plat},
		Manifest: man, ManifestBytes: manBytes, Config: cfg, ConfigBytes: cfgBytes,
	}}
	img.Index = ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{img.Platforms[0].Descriptor}}
	if img.IndexBytes, err = json.Marshal(img.Index); err != nil {
		return nil, err
	}
	img.IndexDescriptor = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex,
		Digest: digest.FromBytes(img.IndexBytes), Size: int64(len(img.IndexBytes))}
	return img, nil
}

type tarEntry struct {
	hdr  tar.Header
	data []byte
}

// buildLayer writes entries as a gzip'd tar; it returns the blob and the
// digest of the uncompressed tar (the diff ID).
func buildLayer(entries []tarEntry, mtime time.Time) ([]byte, digest.Digest, error) {
	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, "", err
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diff))
	for _, e := range entries {
		h := e.hdr
		h.ModTime = mtime
		h.Format = tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, "", err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, "", err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := gz.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), digest.NewDigestFromBytes(digest.SHA256, diff.Sum(nil)), nil
}
