package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/engine/lxcfs"
	"github.com/pouchfly/pouchfly/engine/volume"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"golang.org/x/sys/unix"
)

// extensions wires the PouchContainer features that live in their own
// packages: lxcfs (engine/lxcfs), volumes (engine/volume) and rich
// containers (engine/rich). Each hook is small: validate a request, add
// spec options, act around start/stop/remove.
type extensions struct {
	e       *Engine
	lxcfs   *lxcfs.Supervisor
	volumes *volume.Store
}

// start sets up the extensions (after containerd and quota, before the
// containers are restored).
func (x *extensions) start(ctx context.Context, e *Engine) error {
	x.e = e
	var q volume.Quota
	if e.quota != nil {
		q = e.quota
	}
	vs, err := volume.New(e.cfg.Home, e.cfg.Volume, q)
	if err != nil {
		return err
	}
	vs.SetUsage(e.volumeUsers)
	if err := vs.Restore(ctx); err != nil {
		e.log.Warn("volume restore", "err", err)
	}
	x.volumes = vs

	ls, err := lxcfs.New(e.cfg.Lxcfs, e.cfg.Home)
	if err != nil {
		return err
	}
	x.lxcfs = ls
	ls.OnRestart(func() { x.repairLxcfs() })
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		if err := ls.Run(e.ctx); err != nil {
			e.log.Warn("lxcfs unavailable: --enableLxcfs will fail", "err", err)
		}
	}()
	return nil
}

func (x *extensions) close() {}

// lxcfsStatus reports for `pouch info`.
func (x *extensions) lxcfsStatus() (bool, string) {
	if x.lxcfs == nil {
		return false, "not configured"
	}
	if pid := x.lxcfs.Pid(); pid > 0 {
		return true, fmt.Sprintf("running (pid %d) at %s", pid, x.lxcfs.MountPoint())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := x.lxcfs.Ready(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return false, err.Error()
	}
	return true, "starting"
}

// repairLxcfs re-binds lxcfs files in every running container that uses
// them (lxcfs was restarted: the old binds are dead).
func (x *extensions) repairLxcfs() {
	e := x.e
	e.mu.Lock()
	var cs []*container
	for _, c := range e.containers {
		cs = append(cs, c)
	}
	e.mu.Unlock()
	for _, c := range cs {
		c.mu.Lock()
		pid, on := c.State.Pid, c.HostConfig.EnableLxcfs && c.run != nil
		c.mu.Unlock()
		if !on || pid == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		err := x.lxcfs.Repair(ctx, pid)
		cancel()
		if err != nil {
			e.log.Warn("lxcfs repair", "id", short(c.ID), "pid", pid, "err", err)
		} else {
			e.log.Info("lxcfs binds repaired", "id", short(c.ID), "pid", pid)
		}
	}
}

// validate checks the extension fields of a create request.
func (x *extensions) validate(cfg *api.ContainerConfig, hc *api.HostConfig) error {
	if hc.EnableLxcfs {
		if x.lxcfs == nil {
			return fmt.Errorf("--enableLxcfs: lxcfs is not configured: %w", errdefs.ErrUnavailable)
		}
		ctx, cancel := context.WithTimeout(x.e.ctx, x.e.cfg.Lxcfs.ReadyTimeout)
		defer cancel()
		if err := x.lxcfs.Ready(ctx); err != nil {
			return fmt.Errorf("--enableLxcfs: lxcfs is not available on this host: %v: %w", err, errdefs.ErrUnavailable)
		}
	}
	return validateRich(x.e, cfg, hc)
}

// specOpts adds the extensions' spec changes.
func (x *extensions) specOpts(ctx context.Context, m *containerMeta) ([]oci.SpecOpts, error) {
	var opts []oci.SpecOpts
	if m.HostConfig.EnableLxcfs {
		binds := x.lxcfs.Binds()
		opts = append(opts, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			s.Mounts = append(s.Mounts, binds...)
			return nil
		})
	}
	if m.Config.Rich {
		o, err := richSpecOpt(x.e, m)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	return opts, nil
}

// preStart runs before a task is created.
func (x *extensions) preStart(ctx context.Context, c *container) error {
	if c.HostConfig.EnableLxcfs {
		rctx, cancel := context.WithTimeout(ctx, x.e.cfg.Lxcfs.ReadyTimeout)
		defer cancel()
		if err := x.lxcfs.Ready(rctx); err != nil {
			return fmt.Errorf("lxcfs is not available: %v: %w", err, errdefs.ErrUnavailable)
		}
	}
	return nil
}

// postStart runs after a task started.
func (x *extensions) postStart(ctx context.Context, c *container, pid int) {}

// postStop runs after a task ended.
func (x *extensions) postStop(ctx context.Context, c *container) {}

// postRemove runs before a container's rootfs and volumes go.
func (x *extensions) postRemove(ctx context.Context, c *container) {}

// ensureVolume returns the named volume, creating it (with size when
// sized) when it does not exist; created tells whether it did.
func (x *extensions) ensureVolume(ctx context.Context, name string, size int64, sized bool) (volume.Volume, bool, error) {
	if v, err := x.volumes.Get(ctx, name); err == nil {
		return v, false, nil
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return volume.Volume{}, false, err
	}
	var opts map[string]string
	if sized {
		opts = map[string]string{volume.OptSize: fmt.Sprint(size)}
	}
	v, err := x.volumes.Create(ctx, name, volume.DriverLocal, opts, nil)
	if err != nil {
		return volume.Volume{}, false, err
	}
	return v, true, nil
}

// richInit is the pouch-init binary rich containers use.
func (x *extensions) richInit() string {
	p := x.e.cfg.Rich.InitPath
	if p == "" {
		exe, err := os.Executable()
		if err != nil {
			return ""
		}
		p = filepath.Join(filepath.Dir(exe), "pouch-init")
	}
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func validVolumeName(name string) error { return volume.ValidateName(name) }

// volumeUsers lists the containers that use the named volume.
func (e *Engine) volumeUsers(name string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	for id, c := range e.containers {
		for _, m := range c.Mounts {
			if m.Type == "volume" && m.Name == name {
				ids = append(ids, id)
				break
			}
		}
	}
	return ids
}

// Volumes returns the volume store (nil before Start).
func (e *Engine) Volumes() *volume.Store { return e.ext.volumes }

// VolumeCreate answers POST /volumes/create.
func (e *Engine) VolumeCreate(ctx context.Context, req api.VolumeCreateRequest) (api.Volume, error) {
	name := req.Name
	if name == "" {
		name = newID()
	}
	v, err := e.ext.volumes.Create(ctx, name, req.Driver, req.DriverOpts, req.Labels)
	if err != nil {
		return api.Volume{}, err
	}
	return e.apiVolume(ctx, v), nil
}

// VolumeList answers GET /volumes.
func (e *Engine) VolumeList(ctx context.Context) (api.VolumeList, error) {
	vs, err := e.ext.volumes.List(ctx)
	if err != nil {
		return api.VolumeList{}, err
	}
	out := api.VolumeList{Volumes: []*api.Volume{}, Warnings: []string{}}
	for _, v := range vs {
		av := e.apiVolume(ctx, v)
		out.Volumes = append(out.Volumes, &av)
	}
	return out, nil
}

// VolumeInspect answers GET /volumes/{name}.
func (e *Engine) VolumeInspect(ctx context.Context, name string) (api.Volume, error) {
	v, err := e.ext.volumes.Get(ctx, name)
	if err != nil {
		return api.Volume{}, err
	}
	return e.apiVolume(ctx, v), nil
}

// VolumeRemove answers DELETE /volumes/{name}.
func (e *Engine) VolumeRemove(ctx context.Context, name string, force bool) error {
	err := e.removeVolume(ctx, name, force, "")
	if errors.Is(err, volume.ErrInUse) {
		return fmt.Errorf("%v: %w", err, ErrConflict)
	}
	return err
}

// removeVolume removes a volume, unmounting its quota filesystem first
// when copies in other mount namespaces make the driver refuse (see
// releaseQuota) and no container but owner (being removed) uses it.
func (e *Engine) removeVolume(ctx context.Context, name string, force bool, owner string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = e.ext.volumes.Remove(ctx, name, force); err == nil || !errors.Is(err, unix.EBUSY) {
			return err
		}
		users := e.volumeUsers(name)
		if i >= 2 && e.homeShared && (len(users) == 0 || len(users) == 1 && users[0] == owner) {
			if v, gerr := e.ext.volumes.Get(ctx, name); gerr == nil {
				if mps, merr := mountPoints(); merr == nil && mps[v.Mountpoint] {
					if unix.Unmount(v.Mountpoint, 0) == nil {
						e.log.Info("unmounted a volume's quota filesystem held in other mount namespaces", "volume", name)
						continue
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}

func (e *Engine) apiVolume(ctx context.Context, v volume.Volume) api.Volume {
	out := api.Volume{Name: v.Name, Driver: v.Driver, Mountpoint: v.Mountpoint, Labels: v.Labels, Options: v.Options, Scope: v.Scope,
		CreatedAt: v.CreatedAt.Format(time.RFC3339)}
	if v.Size > 0 {
		out.Status = map[string]string{"size": formatSize(v.Size), "quota_driver": e.QuotaDriverName()}
		if used, _, err := e.ext.volumes.Usage(ctx, v.Name); err == nil && used >= 0 {
			out.Status["used"] = formatSize(used)
		}
	}
	return out
}
