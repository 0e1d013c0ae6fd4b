package hostconfig

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DefaultCertsDir is containerd's usual hosts directory (its CRI
// config_path, ctr's --hosts-dir).
const DefaultCertsDir = "/etc/containerd/certs.d"

// containerdMarker starts every hosts.toml Pouchfly writes.
const containerdMarker = `# Written by "dfget mirror containerd" (Pouchfly).`

// ContainerdOptions configures Containerd and UndoContainerd.
type ContainerdOptions struct {
	// CertsDir is containerd's hosts directory (default DefaultCertsDir).
	CertsDir string
	// Registries to route through the mirror, as images name them:
	// "docker.io", "ghcr.io", "registry.local:5000", or "_default" (every
	// registry without a directory of its own). "NAME=URL" sets the
	// registry's own endpoint (the fallback), e.g.
	// "10.0.0.1:5000=http://10.0.0.1:5000"; by default it is
	// https://registry-1.docker.io for docker.io, https://NAME otherwise,
	// and none for _default.
	Registries []string
	// Mirror is the local mirror's URL (default DefaultMirror).
	Mirror string
	// DryRun computes the changes without writing anything.
	DryRun bool
}

type containerdRegistry struct {
	name, server string
}

func (o *ContainerdOptions) normalize() ([]containerdRegistry, error) {
	if o.CertsDir == "" {
		o.CertsDir = DefaultCertsDir
	}
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	m, err := ValidateMirror(o.Mirror)
	if err != nil {
		return nil, err
	}
	o.Mirror = m
	if len(o.Registries) == 0 {
		return nil, fmt.Errorf("name at least one registry (e.g. docker.io): %w", errdefs.ErrInvalid)
	}
	var regs []containerdRegistry
	seen := map[string]bool{}
	for _, spec := range o.Registries {
		name, server, hasServer := strings.Cut(strings.TrimSpace(spec), "=")
		if !validRegistryHost(name) {
			return nil, fmt.Errorf("registry %q: want a registry host[:port] as in image names "+
				"(docker.io, ghcr.io, registry.local:5000) or _default, optionally =https://endpoint: %w", spec, errdefs.ErrInvalid)
		}
		if seen[name] {
			return nil, fmt.Errorf("registry %q named twice: %w", name, errdefs.ErrInvalid)
		}
		seen[name] = true
		switch {
		case hasServer:
			if server, err = ValidateMirror(server); err != nil {
				return nil, fmt.Errorf("registry %q endpoint: %w", name, err)
			}
		case name == "docker.io":
			server = "https://registry-1.docker.io"
		case name == "_default":
			server = ""
		default:
			server = "https://" + name
		}
		regs = append(regs, containerdRegistry{name: name, server: server})
	}
	return regs, nil
}

var hostLabelRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$`)

// validRegistryHost accepts host[:port] (DNS name, IPv4, or [IPv6]) and
// "_default".
func validRegistryHost(s string) bool {
	if s == "_default" {
		return true
	}
	host := s
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return false
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return false
		}
		if strings.HasPrefix(s, "[") {
			ip := net.ParseIP(h)
			return ip != nil && ip.To4() == nil
		}
		host = h
	}
	if host == "" || len(host) > 253 {
		return false
	}
	for _, l := range strings.Split(host, ".") {
		if !hostLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// hostsPath is the hosts.toml of one registry.
func hostsPath(certsDir, registry string) string {
	// containerd names the directory of [::1]:5000 "[::1]:5000" as well.
	return filepath.Join(certsDir, registry, "hosts.toml")
}

func containerdKind(certsDir string, reg containerdRegistry, mirror string) fileKind {
	return fileKind{
		ours:    func(cur []byte) bool { return bytes.HasPrefix(cur, []byte(containerdMarker)) },
		rebuild: true,
		build: func(src []byte) ([]byte, error) {
			return buildHostsTOML(src, reg, mirror, filepath.Join(certsDir, reg.name, "hosts.toml"))
		},
		cleanup: func() error {
			// The registry's directory, if Pouchfly left it empty.
			_ = os.Remove(filepath.Join(certsDir, reg.name))
			return nil
		},
	}
}

// Containerd writes certs.d/<registry>/hosts.toml for each registry so
// that containerd resolves and pulls through the mirror first and falls
// back to the registry's own endpoint. An existing hosts.toml is backed up
// and merged: its top-level settings (server, ca, …) and its other hosts
// are kept, after the mirror. It returns one Change per registry, those
// done before a failure included.
func Containerd(opts ContainerdOptions) ([]Change, error) {
	regs, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	var changes []Change
	for _, reg := range regs {
		ch, err := apply(hostsPath(opts.CertsDir, reg.name), opts.DryRun, containerdKind(opts.CertsDir, reg, opts.Mirror))
		if err != nil {
			return changes, fmt.Errorf("containerd %s: %w", reg.name, err)
		}
		changes = append(changes, ch)
	}
	return changes, nil
}

// UndoContainerd puts back each registry's hosts.toml from its backup, or
// removes it when Pouchfly created it. Mirror is not needed.
func UndoContainerd(opts ContainerdOptions) ([]Change, error) {
	regs, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	var changes []Change
	for _, reg := range regs {
		ch, err := undo(hostsPath(opts.CertsDir, reg.name), opts.DryRun, containerdKind(opts.CertsDir, reg, opts.Mirror))
		if err != nil {
			return changes, fmt.Errorf("containerd %s: %w", reg.name, err)
		}
		changes = append(changes, ch)
	}
	return changes, nil
}

// buildHostsTOML returns the hosts.toml for reg: the marker, the
// registry's top-level settings (src's if it has them, else server =
// reg.server), the mirror's host table, then src's other host tables.
func buildHostsTOML(src []byte, reg containerdRegistry, mirror, path string) ([]byte, error) {
	var top []byte
	var tables [][]byte
	srcHasServer := false
	if src != nil {
		var doc map[string]any
		if err := toml.Unmarshal(src, &doc); err != nil {
			return nil, fmt.Errorf("%s is not valid TOML, refusing to change it (fix or move it first): %v: %w",
				path, err, errdefs.ErrInvalid)
		}
		_, srcHasServer = doc["server"]
		top, tables = splitTOMLTables(src)
	}

	var b bytes.Buffer
	b.WriteString(containerdMarker + "\n")
	b.WriteString("# containerd resolves and pulls through the local Pouchfly mirror first and\n")
	b.WriteString("# falls back to the hosts below, then to server. Pouchfly rewrites this file\n")
	fmt.Fprintf(&b, "# on every run; the file from before, if any, is in hosts.toml%s.\n", BackupSuffix)
	fmt.Fprintf(&b, "# Undo: dfget mirror containerd --undo --registry %s\n\n", reg.name)
	if !srcHasServer && reg.server != "" {
		fmt.Fprintf(&b, "server = %s\n", strconv.Quote(reg.server))
	}
	if t := bytes.TrimSpace(top); len(t) > 0 {
		b.Write(t)
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", strconv.Quote(mirror))
	for _, t := range tables {
		if path := tableKeyPath(t); len(path) >= 2 && path[0] == "host" && strings.TrimSuffix(path[1], "/") == mirror {
			continue // a previous mirror entry for the same URL
		}
		b.WriteString("\n")
		b.Write(bytes.TrimRight(t, "\n"))
		b.WriteString("\n")
	}
	out := b.Bytes()

	// The result must parse and say what we mean.
	var check struct {
		Server string `toml:"server"`
		Host   map[string]struct {
			Capabilities []string `toml:"capabilities"`
		} `toml:"host"`
	}
	if err := toml.Unmarshal(out, &check); err != nil {
		return nil, fmt.Errorf("%s: cannot merge the existing file (%v); move it away and run again: %w",
			path, err, errdefs.ErrInvalid)
	}
	if h, ok := check.Host[mirror]; !ok || !slices.Contains(h.Capabilities, "pull") {
		return nil, fmt.Errorf("%s: cannot merge the existing file; move it away and run again: %w", path, errdefs.ErrInvalid)
	}
	return out, nil
}

// splitTOMLTables splits a TOML document into its top-level part (before
// the first table header) and its tables (each header with its body and
// sub-tables, comments just above a header going with that table).
func splitTOMLTables(src []byte) (top []byte, tables [][]byte) {
	lines := bytes.SplitAfter(src, []byte("\n"))
	var starts []int
	prevHeader := -1
	var group []string
	for i, l := range lines {
		path := tableKeyPath(l)
		if path == nil {
			continue
		}
		// Sub-tables ([host."x".header]) stay with their host's table.
		if len(group) >= 2 && len(path) > 2 && slices.Equal(path[:2], group[:2]) {
			prevHeader = i
			continue
		}
		group = path
		// Take along the comment lines right above the header.
		s := i
		for s-1 > prevHeader && bytes.HasPrefix(bytes.TrimSpace(lines[s-1]), []byte("#")) {
			s--
		}
		starts = append(starts, s)
		prevHeader = i
	}
	if len(starts) == 0 {
		return src, nil
	}
	top = bytes.Join(lines[:starts[0]], nil)
	for i, s := range starts {
		end := len(lines)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		tables = append(tables, bytes.Join(lines[s:end], nil))
	}
	return top, tables
}

// tableKeyPath returns the key path of a table header line ([a."b"] or
// [[a.b]]), or nil if the text's first non-comment line is not one.
func tableKeyPath(text []byte) []string {
	var line []byte
	for _, l := range bytes.Split(text, []byte("\n")) {
		t := bytes.TrimSpace(l)
		if len(t) == 0 || t[0] == '#' {
			continue
		}
		line = t
		break
	}
	if len(line) < 3 || line[0] != '[' {
		return nil
	}
	var doc map[string]any
	if err := toml.Unmarshal(line, &doc); err != nil || len(doc) != 1 {
		return nil
	}
	var path []string
	for cur := any(doc); ; {
		var m map[string]any
		switch v := cur.(type) {
		case map[string]any:
			m = v
		case []any: // [[array.of.tables]]
			if len(v) == 1 {
				cur = v[0]
				continue
			}
		}
		if len(m) != 1 {
			return path
		}
		for k, v := range m {
			path = append(path, k)
			cur = v
		}
	}
}
