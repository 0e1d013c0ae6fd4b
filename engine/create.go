package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/oci"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/engine/quota"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// runcShim is the containerd runtime type of every container: the runc
// shim, which runs the named runtime's binary.
const runcShim = "io.containerd.runc.v2"

// Labels pouchd puts on its containerd containers.
const (
	labelName    = "io.pouchfly.name"
	labelRuntime = "io.pouchfly.runtime"
)

// bindSpec is one parsed -v value.
type bindSpec struct {
	Source, Dest string
	ReadOnly     bool
	// Volume is the named volume (Source is then empty until created);
	// Anonymous volumes get a generated name.
	Volume    string
	Anonymous bool
}

// parseBind reads "/host:/dest[:ro]", "NAME:/dest[:ro]" or "/dest".
func parseBind(s string) (bindSpec, error) {
	parts := strings.Split(s, ":")
	var b bindSpec
	switch len(parts) {
	case 1:
		b.Dest, b.Anonymous = parts[0], true
	case 2, 3:
		b.Source, b.Dest = parts[0], parts[1]
		if len(parts) == 3 {
			for _, o := range strings.Split(parts[2], ",") {
				switch o {
				case "ro":
					b.ReadOnly = true
				case "rw", "z", "Z", "rprivate", "private", "rslave", "slave", "rshared", "shared", "":
				default:
					return b, fmt.Errorf("volume %q: unknown mode %q (want ro or rw): %w", s, o, errdefs.ErrInvalid)
				}
			}
		}
	default:
		return b, fmt.Errorf("volume %q: want /host/path:/path[:ro], NAME:/path[:ro] or /path: %w", s, errdefs.ErrInvalid)
	}
	if !path.IsAbs(b.Dest) || path.Clean(b.Dest) == "/" {
		return b, fmt.Errorf("volume %q: the container path must be absolute and not /: %w", s, errdefs.ErrInvalid)
	}
	b.Dest = path.Clean(b.Dest)
	switch {
	case b.Anonymous:
	case strings.HasPrefix(b.Source, "/"):
		b.Source = filepath.Clean(b.Source)
	case b.Source == "":
		return b, fmt.Errorf("volume %q: empty source: %w", s, errdefs.ErrInvalid)
	default:
		b.Volume, b.Source = b.Source, ""
	}
	return b, nil
}

// validRestart checks a restart policy.
func validRestart(p api.RestartPolicy, autoRemove bool) error {
	switch p.Name {
	case "", "no":
	case "always", "unless-stopped":
		if p.MaximumRetryCount != 0 {
			return fmt.Errorf("restart policy %s takes no maximum retry count: %w", p.Name, errdefs.ErrInvalid)
		}
	case "on-failure":
		if p.MaximumRetryCount < 0 {
			return fmt.Errorf("restart policy on-failure: negative retry count: %w", errdefs.ErrInvalid)
		}
	default:
		return fmt.Errorf("restart policy %q: want no, always, unless-stopped or on-failure[:N]: %w", p.Name, errdefs.ErrInvalid)
	}
	if autoRemove && p.Name != "" && p.Name != "no" {
		return fmt.Errorf("conflicting options: --restart %s and --rm: %w", p.Name, errdefs.ErrInvalid)
	}
	return nil
}

// runtimeBinary returns the binary containerd's runc shim should run for
// the named runtime: the runtime's path, or a wrapper script adding its
// args (HOME/runtimes/NAME).
func (e *Engine) runtimeBinary(name string) (string, error) {
	rts := e.cfg.runtimes()
	rt, ok := rts[name]
	if !ok {
		names := make([]string, 0, len(rts))
		for n := range rts {
			names = append(names, n)
		}
		sortStrings(names)
		return "", fmt.Errorf("unknown runtime %q: configured runtimes are %s (config: runtimes): %w", name, strings.Join(names, ", "), errdefs.ErrInvalid)
	}
	bin, err := exec.LookPath(rt.Path)
	if err != nil {
		return "", fmt.Errorf("runtime %q: binary %q not found: %w", name, rt.Path, errdefs.ErrInvalid)
	}
	if len(rt.Args) > 0 {
		return filepath.Join(e.cfg.Home, "runtimes", name), nil
	}
	return bin, nil
}

// writeRuntimeWrappers writes HOME/runtimes/NAME for runtimes with args:
// the shim runs one binary, so extra arguments live in a wrapper.
func (e *Engine) writeRuntimeWrappers() error {
	for name, rt := range e.cfg.runtimes() {
		if len(rt.Args) == 0 {
			continue
		}
		bin, err := exec.LookPath(rt.Path)
		if err != nil {
			e.log.Warn("runtime binary not found", "runtime", name, "path", rt.Path)
			bin = rt.Path
		}
		var b strings.Builder
		b.WriteString("#!/bin/sh\n# Written by pouchd: runtime " + name + "\nexec " + shellQuote(bin))
		for _, a := range rt.Args {
			b.WriteString(" " + shellQuote(a))
		}
		b.WriteString(" \"$@\"\n")
		if err := os.WriteFile(filepath.Join(e.cfg.Home, "runtimes", name), []byte(b.String()), 0o755); err != nil {
			return err
		}
	}
	return nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Create answers POST /containers/create. It checks every input first
// (image present, name free, runtime known, memory at least min_memory,
// quota spec, volumes, lxcfs up when asked for, rich mode) so that a bad
// request leaves nothing behind, then prepares the rootfs snapshot, limits
// it (--disk-quota), creates the volumes, and creates the containerd
// container with its OCI spec. Any later failure undoes what was done.
func (e *Engine) Create(ctx context.Context, name string, req api.ContainerCreateRequest) (resp api.ContainerCreateResponse, err error) {
	cfg := req.ContainerConfig
	hc := api.HostConfig{}
	if req.HostConfig != nil {
		hc = *req.HostConfig
	}
	began := time.Now()
	// --- Validation: nothing is created before it passes.
	if cfg.Image == "" {
		return resp, fmt.Errorf("no image given: %w", errdefs.ErrInvalid)
	}
	name = strings.TrimPrefix(name, "/")
	if name != "" && !nameRE.MatchString(name) {
		return resp, fmt.Errorf("invalid container name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed: %w", name, errdefs.ErrInvalid)
	}
	if hc.Runtime == "" {
		hc.Runtime = e.cfg.DefaultRuntime
	}
	rtBinary, err := e.runtimeBinary(hc.Runtime)
	if err != nil {
		return resp, err
	}
	if hc.Memory < 0 {
		return resp, fmt.Errorf("memory limit %d: must be positive: %w", hc.Memory, errdefs.ErrInvalid)
	}
	if hc.Memory > 0 && hc.Memory < int64(e.cfg.MinMemory) {
		return resp, fmt.Errorf("minimum memory limit allowed is %s (asked for %s): %w", units.Format(int64(e.cfg.MinMemory)), units.Format(hc.Memory), errdefs.ErrInvalid)
	}
	if hc.NanoCPUs < 0 || hc.NanoCPUs > int64(runtime.NumCPU())*1e9 {
		return resp, fmt.Errorf("range of CPUs is from 0.01 to %d.00, as there are only %d CPUs available: %w", runtime.NumCPU(), runtime.NumCPU(), errdefs.ErrInvalid)
	}
	if hc.NanoCPUs > 0 && hc.NanoCPUs < 1e7 {
		return resp, fmt.Errorf("range of CPUs is from 0.01 to %d.00: %w", runtime.NumCPU(), errdefs.ErrInvalid)
	}
	if hc.PidsLimit < -1 {
		return resp, fmt.Errorf("pids limit %d: want -1 (unlimited) or a positive number: %w", hc.PidsLimit, errdefs.ErrInvalid)
	}
	if err := validRestart(hc.RestartPolicy, hc.AutoRemove); err != nil {
		return resp, err
	}
	qspec, err := quota.ParseSpec(cfg.DiskQuota)
	if err != nil {
		return resp, err
	}
	if !qspec.IsZero() {
		cfg.DiskQuota = qspec.Values()
		if e.quota == nil {
			return resp, fmt.Errorf("--disk-quota: no disk quota driver works on this host (%v): %w", e.quotaErr, errdefs.ErrUnavailable)
		}
	}
	var binds []bindSpec
	dests := map[string]bool{}
	for _, s := range hc.Binds {
		b, err := parseBind(s)
		if err != nil {
			return resp, err
		}
		if dests[b.Dest] {
			return resp, fmt.Errorf("duplicate mount point %s: %w", b.Dest, errdefs.ErrInvalid)
		}
		dests[b.Dest] = true
		if b.Volume != "" || b.Anonymous {
			if e.ext.volumes == nil {
				return resp, fmt.Errorf("volume %s: volumes are unavailable in this pouchd: %w", b.Volume, errdefs.ErrUnavailable)
			}
			if b.Volume != "" {
				if err := validVolumeName(b.Volume); err != nil {
					return resp, err
				}
			}
		}
		binds = append(binds, b)
	}
	if err := e.ext.validate(&cfg, &hc); err != nil {
		return resp, err
	}
	img, ref, err := e.getImage(ctx, cfg.Image)
	if err != nil {
		return resp, err
	}
	nctx := e.nsCtx(ctx)
	ociImg, err := imageConfigJSON(nctx, img)
	if err != nil {
		return resp, fmt.Errorf("image %s: config: %w", cfg.Image, err)
	}
	imgCfg := ociImg.Config
	// Docker's rules: --entrypoint resets the image's Cmd.
	entrypoint, cmd := imgCfg.Entrypoint, imgCfg.Cmd
	if len(cfg.Entrypoint) > 0 {
		entrypoint, cmd = cfg.Entrypoint, nil
		if len(cfg.Entrypoint) == 1 && cfg.Entrypoint[0] == "" {
			entrypoint = nil
		}
	}
	if len(cfg.Cmd) > 0 {
		cmd = cfg.Cmd
	}
	args := append(append([]string{}, entrypoint...), cmd...)
	if len(args) == 0 {
		return resp, fmt.Errorf("no command specified (the image has neither Entrypoint nor Cmd): %w", errdefs.ErrInvalid)
	}
	if cfg.StopSignal == "" {
		cfg.StopSignal = imgCfg.StopSignal
	}
	imgID := ""
	if d, err := img.Config(nctx); err == nil {
		imgID = d.Digest.String()
	}

	// --- Creation, undone on failure.
	id := newID()
	if name == "" {
		name = randomName(id)
	}
	if err := e.reserveName(name, id); err != nil {
		return resp, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	undo = append(undo, func() { e.releaseName(name, id) })
	dir := filepath.Join(e.cfg.Home, "containers", id)
	if err = os.MkdirAll(dir, 0o700); err != nil {
		return resp, err
	}
	undo = append(undo, func() { _ = os.RemoveAll(dir) })

	// The rootfs: a snapshot on the image's layers, limited before anything
	// mounts it.
	lctx, done, err := e.client.WithLease(nctx)
	if err != nil {
		return resp, err
	}
	defer done(context.WithoutCancel(lctx))
	diffIDs, err := img.RootFS(lctx)
	if err != nil {
		return resp, err
	}
	sn := e.client.SnapshotService(e.cfg.Snapshotter)
	parent := identity.ChainID(diffIDs).String()
	mounts, err := sn.Prepare(lctx, id, parent)
	if cerrdefs.IsNotFound(err) {
		// The image's layers are not (or no longer) unpacked: unpack them
		// and prepare again. (Preparing first spares the common case a
		// walk over every layer's snapshot.)
		if err = img.Unpack(lctx, e.cfg.Snapshotter); err != nil {
			return resp, fmt.Errorf("unpack %s: %w", cfg.Image, err)
		}
		mounts, err = sn.Prepare(lctx, id, parent)
	}
	if err != nil {
		return resp, fmt.Errorf("prepare rootfs: %w", err)
	}
	undo = append(undo, func() { _ = sn.Remove(context.WithoutCancel(nctx), id) })
	meta := containerMeta{
		ID: id, Name: name, Created: time.Now().UTC(), Image: ref, ImageID: imgID, Path: args[0], Args: args[1:],
		Config: cfg, HostConfig: hc, Runtime: hc.Runtime, Snapshotter: e.cfg.Snapshotter, SnapshotKey: id,
	}
	if size, ok := qspec.For("/"); ok {
		qdir, derr := snapshotDir(mounts)
		if derr != nil {
			err = derr
			return resp, err
		}
		if err = e.quota.Limit(ctx, qdir, size); err != nil {
			return resp, fmt.Errorf("--disk-quota for the rootfs: %w", err)
		}
		undo = append(undo, func() { _ = e.releaseQuota(context.WithoutCancel(ctx), qdir) })
		meta.RootfsQuotaDir, meta.RootfsQuota = qdir, size
	}

	// Volumes and binds.
	var specMounts []specs.Mount
	for _, b := range binds {
		rec := mountRecord{MountPoint: api.MountPoint{Destination: b.Dest, RW: !b.ReadOnly}}
		if b.Volume != "" || b.Anonymous {
			vname := b.Volume
			if b.Anonymous {
				vname = newID()
			}
			size, sized := qspec.For(b.Dest)
			v, created, verr := e.ext.ensureVolume(ctx, vname, size, sized)
			if verr != nil {
				err = verr
				return resp, err
			}
			if created {
				undo = append(undo, func() { _ = e.removeVolume(context.WithoutCancel(ctx), vname, true, "") })
			}
			rec.Type, rec.Name, rec.Source, rec.Driver = "volume", vname, v.Mountpoint, v.Driver
			rec.Created = created && b.Anonymous
			if v.Size > 0 {
				rec.Quota = formatSize(v.Size)
			}
		} else {
			if _, serr := os.Stat(b.Source); errors.Is(serr, os.ErrNotExist) {
				if err = os.MkdirAll(b.Source, 0o755); err != nil {
					return resp, fmt.Errorf("bind source %s: %w", b.Source, err)
				}
			}
			rec.Type, rec.Source = "bind", b.Source
		}
		opts := []string{"rbind", "rprivate"}
		if b.ReadOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		specMounts = append(specMounts, specs.Mount{Destination: b.Dest, Type: "bind", Source: rec.Source, Options: opts})
		meta.Mounts = append(meta.Mounts, rec)
	}

	specOpts, err := e.specOpts(ctx, img, &meta, args, specMounts)
	if err != nil {
		return resp, err
	}
	runtimeOpts := &options.Options{BinaryName: rtBinary}
	labels := map[string]string{labelName: name, labelRuntime: hc.Runtime}
	_, err = e.client.NewContainer(lctx, id,
		client.WithImage(img),
		client.WithSnapshotter(e.cfg.Snapshotter),
		client.WithSnapshot(id),
		client.WithRuntime(runcShim, runtimeOpts),
		client.WithNewSpec(specOpts...),
		client.WithContainerLabels(labels),
	)
	if err != nil {
		if cfg.User != "" && (strings.Contains(err.Error(), "no users found") || strings.Contains(err.Error(), "no groups found")) {
			return resp, fmt.Errorf("unable to find user %s: no matching entries in the image's passwd or group file: %w", cfg.User, errdefs.ErrInvalid)
		}
		return resp, fmt.Errorf("create container: %w", err)
	}
	undo = append(undo, func() {
		_ = e.client.ContainerService().Delete(context.WithoutCancel(nctx), id)
	})
	c := newContainer(dir, meta)
	c.mu.Lock()
	err = c.saveLocked()
	c.mu.Unlock()
	if err != nil {
		return resp, err
	}
	e.mu.Lock()
	e.containers[id] = c
	e.mu.Unlock()
	e.metrics.createSeconds.Observe(time.Since(began).Seconds())
	e.log.Info("container created", "id", short(id), "name", name, "image", ref, "runtime", hc.Runtime)
	return api.ContainerCreateResponse{ID: id, Warnings: []string{}}, nil
}

// snapshotDir returns the overlay snapshot directory (the parent of
// upperdir) from an active snapshot's mounts.
func snapshotDir(mounts []mount.Mount) (string, error) {
	for _, m := range mounts {
		for _, o := range m.Options {
			if up, ok := strings.CutPrefix(o, "upperdir="); ok {
				return filepath.Dir(up), nil
			}
		}
		if m.Type == "bind" && m.Source != "" {
			return filepath.Dir(m.Source), nil
		}
	}
	return "", fmt.Errorf("--disk-quota needs the overlayfs snapshotter (no upperdir in the rootfs mounts): %w", errdefs.ErrInvalid)
}

// specOpts builds the OCI spec options of a container.
func (e *Engine) specOpts(ctx context.Context, img client.Image, m *containerMeta, args []string, mounts []specs.Mount) ([]oci.SpecOpts, error) {
	cfg, hc := m.Config, m.HostConfig
	hostname := cfg.Hostname
	if hostname == "" {
		hostname = m.ID[:12]
	}
	opts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(args...),
		oci.WithHostname(hostname),
		// Containers share the host's network (pouchd has no network
		// management; see docs/engine.md).
		oci.WithHostNamespace(specs.NetworkNamespace),
		oci.WithHostHostsFile,
		oci.WithHostResolvconf,
		oci.WithCgroup(path.Join(e.cfg.CgroupParent, m.ID)),
		// The container's own cgroup at /sys/fs/cgroup (read-only), as
		// Docker and PouchContainer give it: -m is visible inside.
		withCgroupMount,
		oci.WithEnv(append([]string{"HOSTNAME=" + hostname}, cfg.Env...)),
	}
	if cfg.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(cfg.WorkingDir))
	}
	if cfg.User != "" {
		opts = append(opts, oci.WithUser(cfg.User), oci.WithAdditionalGIDs(cfg.User))
	}
	if cfg.Tty {
		opts = append(opts, oci.WithTTY, oci.WithEnv([]string{"TERM=xterm"}))
		if cs := hc.ConsoleSize; cs != nil && cs[0] > 0 && cs[1] > 0 {
			// runc sizes the pseudo-terminal before the process runs.
			opts = append(opts, oci.WithTTYSize(int(cs[1]), int(cs[0])))
		}
	}
	if hc.Privileged {
		opts = append(opts, oci.WithPrivileged, oci.WithAllDevicesAllowed, oci.WithHostDevices)
	}
	if hc.Memory > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(hc.Memory)))
	}
	if hc.NanoCPUs > 0 {
		const period = 100000
		opts = append(opts, oci.WithCPUCFS(hc.NanoCPUs*period/1e9, period))
	}
	if hc.CPUShares > 0 {
		opts = append(opts, oci.WithCPUShares(uint64(hc.CPUShares)))
	}
	if hc.PidsLimit > 0 {
		opts = append(opts, oci.WithPidsLimit(hc.PidsLimit))
	}
	if len(mounts) > 0 {
		opts = append(opts, oci.WithMounts(mounts))
	}
	ext, err := e.ext.specOpts(ctx, m)
	if err != nil {
		return nil, err
	}
	return append(opts, ext...), nil
}

func withCgroupMount(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	for _, m := range s.Mounts {
		if m.Destination == "/sys/fs/cgroup" {
			return nil
		}
	}
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup",
		Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}})
	return nil
}

func formatSize(n int64) string { return units.Format(n) }

// execExitCode maps a start failure to Docker's exit codes: 127 when the
// command is missing, 126 when it cannot be executed.
func execExitCode(err error) int {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		return 127
	case strings.Contains(msg, "permission denied"):
		return 126
	}
	return 128
}
