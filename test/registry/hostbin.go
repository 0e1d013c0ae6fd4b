package registry

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DefaultProcpsFree is where Debian's procps installs free(1), the one
// that reads /proc/meminfo (busybox's free asks sysinfo(2) instead).
const DefaultProcpsFree = "/usr/bin/free"

// SharedLibraries lists what the dynamically linked binary bin needs at
// run time, as ldd(1) resolves it on this host: every shared library and
// the ELF interpreter (the loader), by the paths the binary will look
// for them at. A static binary needs none.
func SharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", bin, err, strings.TrimSpace(string(out)))
	}
	var libs []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if _, after, ok := strings.Cut(l, "=>"); ok {
			l = strings.TrimSpace(after)
		}
		p, _, _ := strings.Cut(l, " (")
		p = strings.TrimSpace(p)
		if strings.HasPrefix(p, "/") {
			libs = append(libs, p)
		} else if strings.Contains(l, "not found") {
			return nil, fmt.Errorf("ldd %s: a library is missing: %s: %w", bin, l, errdefs.ErrNotFound)
		}
	}
	sort.Strings(libs)
	return libs, nil
}

// AddHostBinaries returns img (a single-platform image such as
// BusyboxImage's) with one more layer holding the host's binaries bins
// (at the same paths) and everything SharedLibraries lists for them, so
// that dynamically linked tools of the host run in the image, e.g.
// procps's free next to busybox. Symlinks are stored as the files they
// point to. A missing binary is errdefs.ErrNotFound.
func AddHostBinaries(img *Image, bins ...string) (*Image, error) {
	if img == nil || len(img.Platforms) != 1 {
		return nil, fmt.Errorf("AddHostBinaries: want a single-platform image: %w", errdefs.ErrInvalid)
	}
	files := map[string]int64{} // path → mode
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s: %w (is its package installed?): %w", b, err, errdefs.ErrNotFound)
		}
		files[b] = 0o755
		libs, err := SharedLibraries(b)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			files[l] = 0o755 // the loader must be executable
		}
	}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		for d := path.Dir(n); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)
	var entries []tarEntry
	for _, d := range dirList {
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755}})
	}
	for _, n := range names {
		data, err := os.ReadFile(n) // follows symlinks
		if err != nil {
			return nil, err
		}
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(n, "/"), Mode: files[n]}, data: data})
	}

	p := img.Platforms[0]
	mtime := p.Config.Created
	if mtime == nil {
		return nil, fmt.Errorf("AddHostBinaries: the image config has no creation time: %w", errdefs.ErrInvalid)
	}
	data, diffID, err := buildLayer(entries, *mtime)
	if err != nil {
		return nil, err
	}
	out := &Image{}
	for _, b := range img.Blobs {
		if b.Descriptor.Digest != p.Manifest.Config.Digest {
			out.Blobs = append(out.Blobs, b)
		}
	}
	ld := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(data), Size: int64(len(data))}
	out.Blobs = append(out.Blobs, Blob{Descriptor: ld, Data: data})
	cfg := p.Config
	cfg.RootFS.DiffIDs = append(append([]digest.Digest{}, cfg.RootFS.DiffIDs...), diffID)
	cfg.History = append(append([]ocispec.History{}, cfg.History...),
		ocispec.History{Created: mtime, CreatedBy: "pouchfly: host binaries " + strings.Join(bins, " ")})
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	man := p.Manifest
	man.Layers = append(append([]ocispec.Descriptor{}, man.Layers...), ld)
	man.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}
	out.Blobs = append(out.Blobs, Blob{Descriptor: man.Config, Data: cfgBytes})
	manBytes, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	plat := *p.Descriptor.Platform
	out.Platforms = []PlatformImage{{
		Descriptor: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manBytes),
			Size: int64(len(manBytes)), Platform: &plat},
		Manifest: man, ManifestBytes: manBytes, Config: cfg, ConfigBytes: cfgBytes,
	}}
	out.Index = img.Index
	out.Index.Manifests = []ocispec.Descriptor{out.Platforms[0].Descriptor}
	if out.IndexBytes, err = json.Marshal(out.Index); err != nil {
		return nil, err
	}
	out.IndexDescriptor = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex,
		Digest: digest.FromBytes(out.IndexBytes), Size: int64(len(out.IndexBytes))}
	return out, nil
}
