package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/engine/rich"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// validateRich checks --rich, --rich-mode and --initscript, and that
// pouch-init is there.
func validateRich(e *Engine, cfg *api.ContainerConfig, hc *api.HostConfig) error {
	if !cfg.Rich {
		if cfg.RichMode != "" || cfg.InitScript != "" {
			return fmt.Errorf("--rich-mode and --initscript need --rich: %w", errdefs.ErrInvalid)
		}
		return nil
	}
	if err := rich.Validate(rich.Options{Mode: cfg.RichMode, InitScript: cfg.InitScript}, hc.Privileged); err != nil {
		return err
	}
	if e.ext.richInit() == "" {
		return fmt.Errorf("--rich: the pouch-init binary is missing (%s; config rich.init_path): %w", e.richInitWant(), errdefs.ErrUnavailable)
	}
	if cfg.RichMode == rich.ModeSystemd && cfg.StopSignal == "" {
		cfg.StopSignal = "SIGRTMIN+3"
	}
	return nil
}

// richInitWant is where pouch-init is expected.
func (e *Engine) richInitWant() string {
	if e.cfg.Rich.InitPath != "" {
		return e.cfg.Rich.InitPath
	}
	exe, _ := os.Executable()
	return filepath.Join(filepath.Dir(exe), "pouch-init")
}

// richStatusDir is where a rich container's pouch-init reports its start.
func richStatusDir(c *containerMeta, dir string) string { return filepath.Join(dir, "rich") }

// richSpecOpt makes pouch-init the container's PID 1 (engine/rich.Apply).
func richSpecOpt(e *Engine, m *containerMeta) (oci.SpecOpts, error) {
	initPath := e.ext.richInit()
	dir := richStatusDir(m, filepath.Join(e.cfg.Home, "containers", m.ID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	opts := rich.Options{Mode: m.Config.RichMode, InitScript: m.Config.InitScript, StatusDir: dir}
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		return rich.Apply(s, initPath, opts)
	}, nil
}

// richWaitStarted waits for pouch-init to report that the command (after
// the initscript) runs; its error fails the start.
func (e *Engine) richWaitStarted(ctx context.Context, c *container, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, err := rich.WaitStarted(ctx, richStatusDir(&c.containerMeta, c.dir), exited)
	return err
}

// richPrepare clears the status of the previous run.
func richPrepare(c *container) {
	_ = os.Remove(filepath.Join(richStatusDir(&c.containerMeta, c.dir), rich.StatusFile))
}
