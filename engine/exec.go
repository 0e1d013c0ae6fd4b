package engine

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	cerrdefs "github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// execProc is a command run in a running container (POST
// /containers/{id}/exec, then /exec/{id}/start).
type execProc struct {
	id  string
	c   *container
	cfg api.ExecConfig

	mu       sync.Mutex
	started  bool
	running  bool
	exitCode *int
	pid      int
	process  client.Process
	done     chan struct{}
}

// ExecCreate prepares an exec in a running container.
func (e *Engine) ExecCreate(ctx context.Context, ref string, cfg api.ExecConfig) (string, error) {
	c, err := e.get(ref)
	if err != nil {
		return "", err
	}
	if len(cfg.Cmd) == 0 {
		return "", fmt.Errorf("exec: no command given: %w", errdefs.ErrInvalid)
	}
	c.mu.Lock()
	running := c.run != nil
	c.mu.Unlock()
	if !running {
		return "", fmt.Errorf("container %s is not running: %w", short(c.ID), ErrConflict)
	}
	id := newID()
	e.mu.Lock()
	e.execs[id] = &execProc{id: id, c: c, cfg: cfg, done: make(chan struct{})}
	e.mu.Unlock()
	return id, nil
}

func (e *Engine) getExec(id string) (*execProc, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x, ok := e.execs[id]
	if !ok {
		return nil, fmt.Errorf("no such exec instance: %s: %w", id, errdefs.ErrNotFound)
	}
	return x, nil
}

// ExecInspect answers GET /exec/{id}/json.
func (e *Engine) ExecInspect(id string) (api.ExecInspect, error) {
	x, err := e.getExec(id)
	if err != nil {
		return api.ExecInspect{}, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return api.ExecInspect{ID: x.id, ContainerID: x.c.ID, Running: x.running, ExitCode: x.exitCode, Pid: x.pid, Config: x.cfg}, nil
}

// ExecStart runs the exec. With detach it returns once the process
// started; otherwise it copies stdin (may be nil) to the process and its
// output to stdout/stderr (stderr is unused with a TTY) and returns when
// the process exited and its output drained. The exit code is in
// ExecInspect.
func (e *Engine) ExecStart(ctx context.Context, id string, detach bool, stdin io.Reader, stdout, stderr io.Writer) error {
	x, err := e.getExec(id)
	if err != nil {
		return err
	}
	x.mu.Lock()
	if x.started {
		x.mu.Unlock()
		return fmt.Errorf("exec %s has already been started: %w", short(id), ErrConflict)
	}
	x.started = true
	x.mu.Unlock()
	c := x.c
	c.mu.Lock()
	run := c.run
	c.mu.Unlock()
	if run == nil {
		return fmt.Errorf("container %s is not running: %w", short(c.ID), ErrConflict)
	}
	nctx := e.nsCtx(ctx)
	cc, err := e.client.LoadContainer(nctx, c.ID)
	if err != nil {
		return err
	}
	spec, err := cc.Spec(nctx)
	if err != nil {
		return err
	}
	p := *spec.Process
	p.Args = x.cfg.Cmd
	p.Terminal = x.cfg.Tty
	p.Env = mergeEnv(p.Env, x.cfg.Env)
	if x.cfg.Tty {
		p.Env = mergeEnv(p.Env, []string{"TERM=xterm"})
	}
	if x.cfg.WorkingDir != "" {
		p.Cwd = x.cfg.WorkingDir
	}
	if x.cfg.User != "" {
		u, err := resolveUser(run.pid, x.cfg.User)
		if err != nil {
			return err
		}
		p.User = u
	}
	p.ConsoleSize = nil
	if cs := x.cfg.ConsoleSize; x.cfg.Tty && cs != nil && cs[0] > 0 && cs[1] > 0 {
		// runc sizes the exec's pseudo-terminal before the process runs.
		p.ConsoleSize = &specs.Box{Height: cs[0], Width: cs[1]}
	}
	fifos, err := cio.NewFIFOSetInDir(e.cfg.Home+"/exec", id, x.cfg.Tty)
	if err != nil {
		return err
	}
	if stdin == nil || !x.cfg.AttachStdin {
		fifos.Stdin = ""
	}
	dio, err := cio.NewDirectIO(context.Background(), fifos)
	if err != nil {
		return err
	}
	proc, err := run.task.Exec(nctx, id, &p, func(string) (cio.IO, error) { return dio, nil })
	if err != nil {
		dio.Cancel()
		_ = dio.Close()
		return fmt.Errorf("exec: %w", err)
	}
	exitCh, err := proc.Wait(e.nsCtx(e.ctx))
	if err != nil {
		_, _ = proc.Delete(nctx)
		dio.Cancel()
		_ = dio.Close()
		return err
	}
	var wg sync.WaitGroup
	cp := func(w io.Writer, r io.Reader) {
		defer wg.Done()
		if w == nil {
			w = io.Discard
		}
		_, _ = io.Copy(w, r)
	}
	if dio.Stdout != nil {
		wg.Add(1)
		go cp(stdout, dio.Stdout)
	}
	if dio.Stderr != nil {
		wg.Add(1)
		go cp(stderr, dio.Stderr)
	}
	if err := proc.Start(nctx); err != nil {
		_, _ = proc.Delete(context.WithoutCancel(nctx), client.WithProcessKill)
		dio.Cancel()
		_ = dio.Close()
		code := execExitCode(err)
		x.mu.Lock()
		x.exitCode = &code
		x.mu.Unlock()
		close(x.done)
		return fmt.Errorf("exec failed: %v: %w", err, errdefs.ErrInvalid)
	}
	if dio.Stdin != nil && stdin != nil {
		go func() {
			_, _ = io.Copy(dio.Stdin, stdin)
			// EOF reaches the process once every writer of the FIFO closed:
			// ours, and the shim's own (CloseIO).
			_ = dio.Stdin.Close()
			_ = proc.CloseIO(e.nsCtx(context.Background()), client.WithStdinCloser)
		}()
	}
	x.mu.Lock()
	x.running, x.pid, x.process = true, int(proc.Pid()), proc
	x.mu.Unlock()
	finish := func() {
		st := <-exitCh
		copied := make(chan struct{})
		go func() { wg.Wait(); close(copied) }()
		select {
		case <-copied:
		case <-time.After(5 * time.Second):
		}
		dio.Cancel()
		_ = dio.Close()
		if _, err := proc.Delete(e.nsCtx(context.Background())); err != nil && !cerrdefs.IsNotFound(err) {
			e.log.Warn("exec delete", "exec", short(id), "err", err)
		}
		code := int(st.ExitCode())
		x.mu.Lock()
		x.running, x.exitCode = false, &code
		x.mu.Unlock()
		close(x.done)
	}
	if detach {
		e.bg.Add(1)
		go func() { defer e.bg.Done(); finish() }()
		return nil
	}
	finish()
	return nil
}

// ExecResize sets an exec's TTY size.
func (e *Engine) ExecResize(ctx context.Context, id string, w, h uint32) error {
	x, err := e.getExec(id)
	if err != nil {
		return err
	}
	x.mu.Lock()
	p := x.process
	x.mu.Unlock()
	if p == nil {
		return fmt.Errorf("exec %s is not running: %w", short(id), ErrConflict)
	}
	if w == 0 || h == 0 {
		return fmt.Errorf("resize %dx%d: width and height must be positive: %w", w, h, errdefs.ErrInvalid)
	}
	return p.Resize(e.nsCtx(ctx), w, h)
}

// ResizeContainer sets a container's TTY size. For a TTY container that
// is not running (created, or stopped) the size is kept for its next
// start, which applies it before the process runs (pouch start -a).
func (e *Engine) ResizeContainer(ctx context.Context, ref string, w, h uint32) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	if w == 0 || h == 0 {
		return fmt.Errorf("resize %dx%d: width and height must be positive: %w", w, h, errdefs.ErrInvalid)
	}
	c.mu.Lock()
	run, tty := c.run, c.Config.Tty
	if run == nil && tty {
		c.ttySize = &[2]uint32{w, h}
	}
	c.mu.Unlock()
	if run == nil {
		if tty {
			return nil
		}
		return fmt.Errorf("container %s is not running: %w", short(c.ID), ErrConflict)
	}
	return run.task.Resize(e.nsCtx(ctx), w, h)
}

// forgetExecs drops the execs of a removed container.
func (e *Engine) forgetExecs(c *container) {
	e.mu.Lock()
	for id, x := range e.execs {
		if x.c == c {
			delete(e.execs, id)
		}
	}
	e.mu.Unlock()
}

// mergeEnv returns base with add's KEY=VALUE entries replacing or
// appended.
func mergeEnv(base, add []string) []string {
	out := append([]string{}, base...)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// resolveUser reads "user[:group]" (names or numbers) against the
// container's /etc/passwd and /etc/group (through /proc/PID/root).
func resolveUser(pid int, s string) (specs.User, error) {
	user, group, hasGroup := strings.Cut(s, ":")
	root := fmt.Sprintf("/proc/%d/root", pid)
	var u specs.User
	if n, err := strconv.ParseUint(user, 10, 32); err == nil {
		u.UID, u.GID = uint32(n), uint32(n)
		if ent, ok := lookupFile(root+"/etc/passwd", func(f []string) bool { return len(f) > 3 && f[2] == user }); ok {
			g, _ := strconv.ParseUint(ent[3], 10, 32)
			u.GID = uint32(g)
		}
	} else {
		ent, ok := lookupFile(root+"/etc/passwd", func(f []string) bool { return len(f) > 3 && f[0] == user })
		if !ok {
			return u, fmt.Errorf("unable to find user %s: no matching entries in passwd file: %w", user, errdefs.ErrInvalid)
		}
		uid, _ := strconv.ParseUint(ent[2], 10, 32)
		gid, _ := strconv.ParseUint(ent[3], 10, 32)
		u.UID, u.GID = uint32(uid), uint32(gid)
	}
	if hasGroup {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			ent, ok := lookupFile(root+"/etc/group", func(f []string) bool { return len(f) > 2 && f[0] == group })
			if !ok {
				return u, fmt.Errorf("unable to find group %s: %w", group, errdefs.ErrInvalid)
			}
			gid, _ := strconv.ParseUint(ent[2], 10, 32)
			u.GID = uint32(gid)
		}
	}
	return u, nil
}

func lookupFile(path string, match func([]string) bool) ([]string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if match(fields) {
			return fields, true
		}
	}
	return nil, false
}
