package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/sys/signal"
	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// runState is a container's current run.
type runState struct {
	task     client.Task
	dio      *cio.DirectIO
	stdin    io.WriteCloser
	copyDone chan struct{}
	exitCh   <-chan client.ExitStatus
	pid      int
	started  time.Time
	// rootfs is a detached clone of the rootfs mount (see holdRootfs),
	// -1 when none; takeRootfs hands it over once.
	rootfs atomic.Int64
}

// takeRootfs returns the rootfs hold (or -1), leaving none.
func (r *runState) takeRootfs() int { return int(r.rootfs.Swap(-1)) }

// StartContainer answers POST /containers/{id}/start.
func (e *Engine) StartContainer(ctx context.Context, ref string) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	switch {
	case c.removing:
		c.mu.Unlock()
		return fmt.Errorf("container %s is being removed: %w", short(c.ID), ErrConflict)
	case c.run != nil:
		c.mu.Unlock()
		return errNotModified
	case c.starting:
		c.mu.Unlock()
		return fmt.Errorf("container %s is already starting: %w", short(c.ID), ErrConflict)
	}
	c.starting = true
	c.ManualStop = false
	if c.restartT != nil {
		c.restartT.Stop()
		c.restartT = nil
	}
	c.State.Restarting = false
	c.mu.Unlock()
	err = e.startRun(ctx, c)
	c.mu.Lock()
	c.starting = false
	c.mu.Unlock()
	return err
}

// startRun creates and starts the containerd task of c, wiring its stdio
// to the log and the attached clients, and starts its monitor.
func (e *Engine) startRun(ctx context.Context, c *container) (err error) {
	began := time.Now()
	nctx := e.nsCtx(ctx)
	cc, err := e.client.LoadContainer(nctx, c.ID)
	if err != nil {
		return e.startFailed(c, fmt.Errorf("container %s is gone from containerd: %w", short(c.ID), err))
	}
	if c.RootfsQuotaDir != "" && e.quota != nil {
		// Idempotent; mounts the quota again after a reboot.
		if err := e.quota.Limit(ctx, c.RootfsQuotaDir, c.RootfsQuota); err != nil {
			return e.startFailed(c, fmt.Errorf("rootfs quota: %w", err))
		}
	}
	if err := e.ext.preStart(ctx, c); err != nil {
		return e.startFailed(c, err)
	}
	// A task left over (a crash between create and start, or an exit we
	// did not see) goes first.
	if t, terr := cc.Task(nctx, nil); terr == nil {
		if st, serr := t.Status(nctx); serr == nil && (st.Status == client.Running || st.Status == client.Paused) {
			return errNotModified
		}
		_, _ = t.Delete(nctx, client.WithProcessKill)
	}
	c.mu.Lock()
	released := c.rootfsReleased
	c.mu.Unlock()
	if released != nil {
		// The previous run's overlay is still shutting down (rootfs.go).
		select {
		case <-released:
		case <-ctx.Done():
			return e.startFailed(c, ctx.Err())
		}
	}
	if c.Config.Rich {
		richPrepare(c)
	}
	fifos := c.fifoSet()
	dio, err := cio.NewDirectIO(context.Background(), fifos)
	if err != nil {
		return e.startFailed(c, fmt.Errorf("stdio: %w", err))
	}
	lw, err := openLog(c.logPath())
	if err != nil {
		dio.Cancel()
		_ = dio.Close()
		return e.startFailed(c, err)
	}
	copyDone := make(chan struct{})
	c.copyOutput(dio, lw, copyDone)
	cleanupIO := func() {
		dio.Cancel()
		_ = dio.Close()
		select {
		case <-copyDone:
		case <-time.After(2 * time.Second):
		}
	}
	task, err := cc.NewTask(nctx, func(string) (cio.IO, error) { return dio, nil })
	if err != nil {
		cleanupIO()
		return e.startFailed(c, err)
	}
	// Wait before Start, so that no exit is missed; the wait lives as long
	// as the engine.
	exitCh, err := task.Wait(e.nsCtx(e.ctx))
	if err != nil {
		_, _ = task.Delete(nctx, client.WithProcessKill)
		cleanupIO()
		return e.startFailed(c, err)
	}
	c.mu.Lock()
	size := c.ttySize
	c.ttySize = nil
	c.mu.Unlock()
	if size != nil && c.Config.Tty {
		// The pseudo-terminal exists once the task is created: size it
		// before the process runs.
		if err := task.Resize(nctx, size[0], size[1]); err != nil {
			e.log.Warn("tty size before start", "id", short(c.ID), "err", err)
		}
	}
	if err := task.Start(nctx); err != nil {
		_, _ = task.Delete(context.WithoutCancel(nctx), client.WithProcessKill)
		cleanupIO()
		return e.startFailed(c, err)
	}
	run := &runState{task: task, dio: dio, copyDone: copyDone, exitCh: exitCh, pid: int(task.Pid()), started: time.Now()}
	run.rootfs.Store(int64(e.holdRootfs(c)))
	if dio.Stdin != nil {
		run.stdin = dio.Stdin
	}
	c.mu.Lock()
	exited := c.exited
	c.setRunLocked(run)
	c.State.Running, c.State.Restarting, c.State.Dead = true, false, false
	c.State.Pid, c.State.ExitCode, c.State.Error, c.State.OOMKilled = run.pid, 0, "", false
	c.State.StartedAt = time.Now().UTC()
	if err := c.saveLocked(); err != nil {
		e.log.Warn("save container", "id", short(c.ID), "err", err)
	}
	c.mu.Unlock()
	e.ext.postStart(ctx, c, run.pid)
	e.metrics.starts.Inc()
	e.metrics.startSeconds.Observe(time.Since(began).Seconds())
	e.bg.Add(1)
	go func() { defer e.bg.Done(); e.monitor(c, run) }()
	e.log.Info("container started", "id", short(c.ID), "pid", run.pid)
	if c.Config.Rich {
		// The start succeeds once pouch-init ran the initscript and the
		// command; a failing initscript fails it (the container exits).
		if err := e.richWaitStarted(ctx, c, exited); err != nil {
			return fmt.Errorf("container %s: %w", short(c.ID), err)
		}
	}
	return nil
}

// startFailed records a start that did not happen (Docker's exit codes:
// 127 command not found, 126 not executable) and returns err classified.
func (e *Engine) startFailed(c *container, err error) error {
	if errors.Is(err, errNotModified) {
		return err
	}
	code := execExitCode(err)
	c.mu.Lock()
	c.State.Running, c.State.Pid, c.State.ExitCode, c.State.Error = false, 0, code, err.Error()
	now := time.Now().UTC()
	if c.State.StartedAt.IsZero() {
		c.State.StartedAt = now
	}
	c.State.FinishedAt = now
	_ = c.saveLocked()
	c.mu.Unlock()
	e.log.Warn("container start failed", "id", short(c.ID), "err", err)
	msg := err.Error()
	if code == 127 || code == 126 {
		return fmt.Errorf("failed to start container %s: %s: %w", short(c.ID), msg, errdefs.ErrInvalid)
	}
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("failed to start container %s: %s: %w", short(c.ID), msg, errdefs.ErrNotFound)
	}
	return fmt.Errorf("failed to start container %s: %w", short(c.ID), err)
}

// monitor waits for a run to end and records it: exit code, output
// drained, task deleted; then the restart policy or --rm applies. When
// the engine closes it returns without touching anything (the container
// keeps running; the next pouchd re-attaches).
func (e *Engine) monitor(c *container, run *runState) {
	var st client.ExitStatus
	for {
		st = <-run.exitCh
		if e.ctx.Err() != nil {
			return
		}
		if st.Error() == nil {
			break
		}
		// The wait broke (containerd restarting?): wait again.
		e.log.Warn("lost the task's wait; retrying", "id", short(c.ID), "err", st.Error())
		for {
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			ch, err := run.task.Wait(e.nsCtx(e.ctx))
			if err == nil {
				run.exitCh = ch
				break
			}
			if cerrdefs.IsNotFound(err) {
				st = *client.NewExitStatus(255, time.Now(), nil)
				run.exitCh = closedExit(st)
				break
			}
		}
	}
	seen := time.Now()
	code := int(st.ExitCode())
	e.metrics.exits.Inc()
	e.log.Debug("task exit seen", "id", short(c.ID), "code", code, "exit_time", st.ExitTime())
	select {
	case <-run.copyDone:
	case <-time.After(5 * time.Second):
		e.log.Warn("container output did not end 5s after exit", "id", short(c.ID))
	}
	run.dio.Cancel()
	_ = run.dio.Close()
	<-run.copyDone
	// Before the task's deletion removes the cgroup.
	oom := code == 137 && c.HostConfig.Memory > 0 && oomKilled(e.cfg.CgroupParent, c.ID)
	dctx := e.nsCtx(context.Background())
	e.log.Debug("task output drained", "id", short(c.ID))
	if _, err := run.task.Delete(dctx); err != nil && !cerrdefs.IsNotFound(err) {
		_, _ = run.task.Delete(dctx, client.WithProcessKill)
	}
	// The shim unmounted the rootfs; the overlay (and its sync) goes now.
	released := e.releaseRootfs(run.takeRootfs())
	e.ext.postStop(context.Background(), c)
	c.mu.Lock()
	c.setRunLocked(nil)
	c.rootfsReleased = released
	c.State.Running, c.State.Pid, c.State.ExitCode = false, 0, code
	c.State.FinishedAt = st.ExitTime().UTC()
	if c.State.FinishedAt.IsZero() || c.State.FinishedAt.Year() < 2000 {
		c.State.FinishedAt = time.Now().UTC()
	}
	c.State.OOMKilled = oom
	restart, delay := e.shouldRestartLocked(c, code, time.Since(run.started))
	if restart {
		c.State.Restarting = true
	}
	_ = c.saveLocked()
	close(c.exited)
	c.exited = make(chan struct{})
	autoRemove := c.HostConfig.AutoRemove && !c.removing
	c.mu.Unlock()
	e.metrics.exitSeconds.Observe(time.Since(seen).Seconds())
	e.log.Info("container exited", "id", short(c.ID), "code", code, "restart", restart)
	switch {
	case autoRemove:
		if err := e.removeContainer(context.Background(), c); err != nil {
			e.log.Warn("auto-remove", "id", short(c.ID), "err", err)
		}
	case restart:
		e.scheduleRestart(c, delay)
	}
}

func closedExit(st client.ExitStatus) <-chan client.ExitStatus {
	ch := make(chan client.ExitStatus, 1)
	ch <- st
	return ch
}

// oomKilled reads memory.oom_control's oom_kill counter (cgroup v1) of
// the container's cgroup, if it is still there.
func oomKilled(parent, id string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", parent, id, "memory.oom_control"))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n > 0
		}
	}
	return false
}

// shouldRestartLocked applies the restart policy to an exit; delay grows
// 100ms → 10s while the container keeps failing fast.
func (e *Engine) shouldRestartLocked(c *container, code int, ran time.Duration) (bool, time.Duration) {
	if c.ManualStop || c.removing || e.ctx.Err() != nil {
		return false, 0
	}
	p := c.HostConfig.RestartPolicy
	switch p.Name {
	case "always", "unless-stopped":
	case "on-failure":
		if code == 0 || (p.MaximumRetryCount > 0 && c.RestartCount >= p.MaximumRetryCount) {
			return false, 0
		}
	default:
		return false, 0
	}
	delay := 100 * time.Millisecond
	if ran < 10*time.Second {
		for i := 0; i < c.RestartCount && delay < 10*time.Second; i++ {
			delay *= 2
		}
	}
	return true, min(delay, 10*time.Second)
}

func (e *Engine) scheduleRestart(c *container, delay time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.restartT != nil {
		c.restartT.Stop()
	}
	c.restartT = time.AfterFunc(delay, func() {
		c.mu.Lock()
		c.restartT = nil
		if c.ManualStop || c.removing || c.run != nil || c.starting || e.ctx.Err() != nil {
			c.State.Restarting = false
			c.mu.Unlock()
			return
		}
		c.starting = true
		c.RestartCount++
		c.mu.Unlock()
		e.metrics.restarts.Inc()
		err := e.startRun(e.ctx, c)
		c.mu.Lock()
		c.starting = false
		if err != nil && !errors.Is(err, errNotModified) {
			c.State.Restarting = false
			_ = c.saveLocked()
		}
		c.mu.Unlock()
		if err != nil {
			e.log.Warn("restart failed", "id", short(c.ID), "err", err)
		}
	})
}

// StopContainer answers POST /containers/{id}/stop: the stop signal
// (SIGTERM unless the container says otherwise), then SIGKILL after
// timeout (nil: the container's StopTimeout or the config's).
func (e *Engine) StopContainer(ctx context.Context, ref string, timeout *time.Duration) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.ManualStop = true
	wasRestarting := c.State.Restarting
	if c.restartT != nil {
		c.restartT.Stop()
		c.restartT = nil
	}
	c.State.Restarting = false
	run, exited := c.run, c.exited
	_ = c.saveLocked()
	sig := c.Config.StopSignal
	t := e.cfg.StopTimeout
	if c.Config.StopTimeout != nil {
		t = time.Duration(*c.Config.StopTimeout) * time.Second
	}
	c.mu.Unlock()
	if timeout != nil {
		t = *timeout
	}
	if run == nil {
		if wasRestarting {
			return nil
		}
		return errNotModified
	}
	s := syscall.SIGTERM
	if sig != "" {
		if p, err := signal.ParseSignal(sig); err == nil {
			s = p
		}
	}
	nctx := e.nsCtx(ctx)
	if err := run.task.Kill(nctx, s); err != nil && !cerrdefs.IsNotFound(err) {
		e.log.Warn("stop signal", "id", short(c.ID), "err", err)
	}
	select {
	case <-exited:
		return nil
	case <-time.After(t):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := run.task.Kill(nctx, syscall.SIGKILL, client.WithKillAll); err != nil && !cerrdefs.IsNotFound(err) {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// KillContainer answers POST /containers/{id}/kill (default SIGKILL).
// SIGKILL and the stop signal count as a manual stop: no restart.
func (e *Engine) KillContainer(ctx context.Context, ref, sig string) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	s := syscall.SIGKILL
	if sig != "" {
		p, err := signal.ParseSignal(sig)
		if err != nil {
			return fmt.Errorf("signal %q: %v: %w", sig, err, errdefs.ErrInvalid)
		}
		s = p
	}
	c.mu.Lock()
	run := c.run
	if run == nil {
		c.mu.Unlock()
		return fmt.Errorf("container %s is not running: %w", short(c.ID), ErrConflict)
	}
	if s == syscall.SIGKILL || s == syscall.SIGTERM {
		c.ManualStop = true
		_ = c.saveLocked()
	}
	c.mu.Unlock()
	return run.task.Kill(e.nsCtx(ctx), s)
}

// RemoveContainer answers DELETE /containers/{id}: a running container is
// ErrConflict unless force (then it is killed first). It deletes the task,
// releases the rootfs quota, deletes the containerd container and its
// snapshot, anonymous volumes, and the container's directory.
func (e *Engine) RemoveContainer(ctx context.Context, ref string, force bool) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.removing {
		c.mu.Unlock()
		return fmt.Errorf("removal of container %s is already in progress: %w", short(c.ID), ErrConflict)
	}
	running := c.run != nil || c.starting
	if running && !force {
		c.mu.Unlock()
		return fmt.Errorf("you cannot remove a running container %s: stop it first, or remove it with force (-f): %w", short(c.ID), ErrConflict)
	}
	c.mu.Unlock()
	return e.removeContainer(ctx, c)
}

func (e *Engine) removeContainer(ctx context.Context, c *container) error {
	c.mu.Lock()
	if c.removing {
		c.mu.Unlock()
		return nil
	}
	c.removing = true
	c.ManualStop = true
	if c.restartT != nil {
		c.restartT.Stop()
		c.restartT = nil
	}
	run, exited := c.run, c.exited
	c.mu.Unlock()
	nctx := e.nsCtx(context.WithoutCancel(ctx))
	if run != nil {
		_ = run.task.Kill(nctx, syscall.SIGKILL, client.WithKillAll)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			e.log.Warn("container did not exit after SIGKILL", "id", short(c.ID))
		}
	}
	// Wait for a start in flight to settle.
	for i := 0; i < 100; i++ {
		c.mu.Lock()
		busy := c.starting
		c.mu.Unlock()
		if !busy {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	err := e.cleanup(nctx, c)
	if err != nil {
		c.mu.Lock()
		c.removing = false
		c.State.Dead = true
		c.State.Error = "removal failed: " + err.Error()
		_ = c.saveLocked()
		c.mu.Unlock()
		return err
	}
	e.mu.Lock()
	delete(e.containers, c.ID)
	if e.names[c.Name] == c.ID {
		delete(e.names, c.Name)
	}
	e.mu.Unlock()
	e.forgetExecs(c)
	close(c.removed)
	e.log.Info("container removed", "id", short(c.ID))
	return nil
}

// cleanup removes everything of c outside the engine's maps.
func (e *Engine) cleanup(nctx context.Context, c *container) error {
	cc, err := e.client.LoadContainer(nctx, c.ID)
	if err == nil {
		if t, terr := cc.Task(nctx, nil); terr == nil {
			if _, err := t.Delete(nctx, client.WithProcessKill); err != nil && !cerrdefs.IsNotFound(err) {
				return fmt.Errorf("delete task: %w", err)
			}
		}
	} else if !cerrdefs.IsNotFound(err) {
		return err
	}
	e.ext.postRemove(nctx, c)
	if c.RootfsQuotaDir != "" && e.quota != nil {
		if err := e.releaseQuota(nctx, c.RootfsQuotaDir); err != nil {
			return fmt.Errorf("release rootfs quota: %w", err)
		}
	}
	if cc != nil {
		if err := cc.Delete(nctx, client.WithSnapshotCleanup); err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("delete container: %w", err)
		}
	} else if c.SnapshotKey != "" {
		_ = e.client.SnapshotService(c.Snapshotter).Remove(nctx, c.SnapshotKey)
	}
	for _, m := range c.Mounts {
		if m.Created && e.ext.volumes != nil {
			if err := e.removeVolume(nctx, m.Name, true, c.ID); err != nil {
				e.log.Warn("remove anonymous volume", "volume", m.Name, "err", err)
			}
		}
	}
	return os.RemoveAll(c.dir)
}

// releaseQuota releases a quota directory, retrying for a few seconds
// while its filesystem is busy: the mount namespace of a container that
// just exited can outlive its task's deletion for a moment, and other
// processes on the host hold copies of it in the mount namespaces they
// create. The driver refuses to release a filesystem mounted in another
// namespace; when the home is a shared mount (makeShared) pouchd unmounts
// it itself (never lazily: a filesystem still in use here stays), which
// propagates to those copies (they are slaves of ours), and the driver
// then only waits for its loop device to go.
func (e *Engine) releaseQuota(ctx context.Context, dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = e.quota.Release(ctx, dir); err == nil || !errors.Is(err, unix.EBUSY) {
			return err
		}
		if i >= 2 && e.homeShared {
			if mps, merr := mountPoints(); merr == nil && mps[dir] {
				if uerr := unix.Unmount(dir, 0); uerr == nil {
					e.log.Info("unmounted a quota filesystem held in other mount namespaces", "dir", dir)
					continue
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

// WaitContainer registers a wait for condition ("not-running" or "",
// "next-exit", "removed") and returns a function that blocks until it is
// met and returns the exit code. Registering before starting a container
// makes "next-exit" race-free.
func (e *Engine) WaitContainer(ref, condition string) (func(ctx context.Context) (int, error), error) {
	c, err := e.get(ref)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var ch <-chan struct{}
	switch condition {
	case "", "not-running":
		if c.run == nil && !c.starting && !c.State.Restarting {
			code := c.State.ExitCode
			return func(context.Context) (int, error) { return code, nil }, nil
		}
		ch = c.exited
	case "next-exit":
		ch = c.exited
	case "removed":
		ch = c.removed
	default:
		return nil, fmt.Errorf("wait condition %q: want not-running, next-exit or removed: %w", condition, errdefs.ErrInvalid)
	}
	return func(ctx context.Context) (int, error) {
		select {
		case <-ch:
		case <-ctx.Done():
			return -1, ctx.Err()
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.State.ExitCode, nil
	}, nil
}

// detach stops watching c's run (engine shutdown): its FIFOs are closed
// on pouchd's side; the container keeps running.
func (c *container) detach() {
	c.mu.Lock()
	run := c.run
	if c.restartT != nil {
		c.restartT.Stop()
		c.restartT = nil
	}
	c.mu.Unlock()
	if run != nil {
		run.dio.Cancel()
		_ = run.dio.Close()
		if fd := run.takeRootfs(); fd >= 0 {
			_ = unix.Close(fd) // still mounted by the shim: no sync
		}
	}
}

// restore loads the containers under the home and reconciles them with
// containerd: running tasks are re-attached, exits that happened while
// pouchd was away are recorded, restart policies apply.
func (e *Engine) restore(ctx context.Context) error {
	root := filepath.Join(e.cfg.Home, "containers")
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	nctx := e.nsCtx(ctx)
	var toStart []*container
	for _, ent := range ents {
		if !ent.IsDir() {
			continue
		}
		dir := filepath.Join(root, ent.Name())
		m, err := loadMeta(dir)
		if err != nil {
			// A create that never finished: undo what it left.
			e.log.Warn("removing half-created container", "dir", dir, "err", err)
			id := ent.Name()
			if cc, err := e.client.LoadContainer(nctx, id); err == nil {
				_ = cc.Delete(nctx, client.WithSnapshotCleanup)
			} else {
				_ = e.client.SnapshotService(e.cfg.Snapshotter).Remove(nctx, id)
			}
			_ = os.RemoveAll(dir)
			continue
		}
		c := newContainer(dir, m)
		e.mu.Lock()
		e.containers[m.ID] = c
		e.names[m.Name] = m.ID
		e.mu.Unlock()
		running, exited, code := e.reattach(nctx, c)
		if running {
			continue
		}
		c.mu.Lock()
		p := c.HostConfig.RestartPolicy.Name
		autoRemove := exited && c.HostConfig.AutoRemove
		restart := false
		switch {
		case exited:
			// It exited while pouchd was away: its policy decides.
			restart, _ = e.shouldRestartLocked(c, code, time.Minute)
		case !c.ManualStop && (p == "always" || p == "unless-stopped"):
			restart = true
		}
		if restart {
			c.RestartCount++
		}
		c.mu.Unlock()
		switch {
		case autoRemove:
			if err := e.removeContainer(ctx, c); err != nil {
				e.log.Warn("auto-remove at startup", "id", short(c.ID), "err", err)
			}
		case restart:
			toStart = append(toStart, c)
		}
	}
	for _, c := range toStart {
		c.mu.Lock()
		c.starting = true
		c.mu.Unlock()
		err := e.startRun(ctx, c)
		c.mu.Lock()
		c.starting = false
		c.mu.Unlock()
		if err != nil && !errors.Is(err, errNotModified) {
			e.log.Warn("restart at startup failed", "id", short(c.ID), "err", err)
		}
	}
	return nil
}

// reattach reconciles one restored container with its task; it reports
// whether the container is running (and now monitored), or whether it
// exited while pouchd was away (with its code).
func (e *Engine) reattach(nctx context.Context, c *container) (running, exited bool, code int) {
	cc, err := e.client.LoadContainer(nctx, c.ID)
	if err != nil {
		c.mu.Lock()
		c.State.Running, c.State.Pid, c.State.Dead = false, 0, true
		c.State.Error = "containerd has no such container any more"
		_ = c.saveLocked()
		c.mu.Unlock()
		return false, false, 0
	}
	task, err := cc.Task(nctx, nil)
	if err != nil {
		c.mu.Lock()
		wasRunning := c.State.Running
		if wasRunning {
			c.State.Running, c.State.Pid, c.State.ExitCode = false, 0, 255
			c.State.FinishedAt = time.Now().UTC()
			c.State.Error = "the task was gone when pouchd restarted"
		}
		_ = c.saveLocked()
		c.mu.Unlock()
		return false, wasRunning, 255
	}
	st, err := task.Status(nctx)
	if err != nil || (st.Status != client.Running && st.Status != client.Paused) {
		code := 255
		at := time.Now()
		if err == nil && st.Status == client.Stopped {
			code, at = int(st.ExitStatus), st.ExitTime
		}
		_, _ = task.Delete(nctx, client.WithProcessKill)
		e.ext.postStop(nctx, c)
		c.mu.Lock()
		wasRunning := c.State.Running
		c.State.Running, c.State.Pid = false, 0
		if wasRunning {
			c.State.ExitCode, c.State.FinishedAt = code, at.UTC()
		}
		_ = c.saveLocked()
		c.mu.Unlock()
		return false, wasRunning, code
	}
	dio, err := cio.NewDirectIO(context.Background(), c.fifoSet())
	if err != nil {
		e.log.Warn("re-attach stdio", "id", short(c.ID), "err", err)
		return false, false, 0
	}
	lw, err := openLog(c.logPath())
	if err != nil {
		dio.Cancel()
		_ = dio.Close()
		return false, false, 0
	}
	copyDone := make(chan struct{})
	c.copyOutput(dio, lw, copyDone)
	exitCh, err := task.Wait(e.nsCtx(e.ctx))
	if err != nil {
		dio.Cancel()
		_ = dio.Close()
		return false, false, 0
	}
	run := &runState{task: task, dio: dio, copyDone: copyDone, exitCh: exitCh, pid: int(task.Pid()), started: time.Now()}
	run.rootfs.Store(int64(e.holdRootfs(c)))
	if dio.Stdin != nil {
		run.stdin = dio.Stdin
	}
	c.mu.Lock()
	c.setRunLocked(run)
	c.State.Running, c.State.Pid, c.State.Restarting = true, run.pid, false
	_ = c.saveLocked()
	c.mu.Unlock()
	e.bg.Add(1)
	go func() { defer e.bg.Done(); e.monitor(c, run) }()
	e.log.Info("re-attached running container", "id", short(c.ID), "pid", run.pid)
	return true, false, 0
}
