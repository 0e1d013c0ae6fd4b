package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"

	"github.com/pouchfly/pouchfly/engine/api"
)

// subscriber is an attached client: it gets the output of the container's
// current (or next) run, and done is closed when that output ends.
type subscriber struct {
	stdout, stderr io.Writer // nil when that stream is not wanted
	done           chan struct{}
	once           sync.Once
}

func (s *subscriber) end() { s.once.Do(func() { close(s.done) }) }

type subscribers struct {
	mu   sync.Mutex
	list []*subscriber
}

func (ss *subscribers) add(s *subscriber) {
	ss.mu.Lock()
	ss.list = append(ss.list, s)
	ss.mu.Unlock()
}

func (ss *subscribers) remove(s *subscriber) {
	ss.mu.Lock()
	for i, x := range ss.list {
		if x == s {
			ss.list = append(ss.list[:i], ss.list[i+1:]...)
			break
		}
	}
	ss.mu.Unlock()
	s.end()
}

// write delivers p (of stream) to every subscriber; failing ones are
// dropped.
func (ss *subscribers) write(stream api.Stream, p []byte) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	kept := ss.list[:0]
	for _, s := range ss.list {
		w := s.stdout
		if stream == api.Stderr {
			w = s.stderr
		}
		if w != nil {
			if _, err := w.Write(p); err != nil {
				s.end()
				continue
			}
		}
		kept = append(kept, s)
	}
	for i := len(kept); i < len(ss.list); i++ {
		ss.list[i] = nil
	}
	ss.list = kept
}

// endAll ends every subscriber (the run's output is over).
func (ss *subscribers) endAll() {
	ss.mu.Lock()
	for _, s := range ss.list {
		s.end()
	}
	ss.list = nil
	ss.mu.Unlock()
}

// logRecord is one line of a container's json.log (Docker's json-file
// format).
type logRecord struct {
	Log    string    `json:"log"`
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
}

// logWriter appends records to the log file. Safe for concurrent use.
type logWriter struct {
	mu sync.Mutex
	f  *os.File
}

func openLog(path string) (*logWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &logWriter{f: f}, nil
}

// write records p as one or more lines of stream.
func (l *logWriter) write(stream string, p []byte) {
	now := time.Now().UTC()
	var buf []byte
	for len(p) > 0 {
		n := len(p)
		for i, b := range p {
			if b == '\n' {
				n = i + 1
				break
			}
		}
		rec, _ := json.Marshal(logRecord{Log: string(p[:n]), Stream: stream, Time: now})
		buf = append(append(buf, rec...), '\n')
		p = p[n:]
	}
	l.mu.Lock()
	_, _ = l.f.Write(buf)
	l.mu.Unlock()
}

func (l *logWriter) close() {
	l.mu.Lock()
	_ = l.f.Close()
	l.mu.Unlock()
}

// fifoSet returns the container's persistent stdio FIFOs (kept across
// pouchd restarts so a new pouchd re-attaches to a running container).
func (c *container) fifoSet() *cio.FIFOSet {
	cfg := cio.Config{Terminal: c.Config.Tty, Stdout: c.dir + "/stdout.fifo"}
	if c.Config.OpenStdin {
		cfg.Stdin = c.dir + "/stdin.fifo"
	}
	if !c.Config.Tty {
		cfg.Stderr = c.dir + "/stderr.fifo"
	}
	return cio.NewFIFOSet(cfg, nil)
}

// copyOutput copies the run's stdout/stderr FIFOs into the log and to the
// subscribers; it closes done when both ended (the process exited and
// its output drained).
func (c *container) copyOutput(dio *cio.DirectIO, lw *logWriter, done chan struct{}) {
	var wg sync.WaitGroup
	cp := func(r io.Reader, stream api.Stream, name string) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				lw.write(name, buf[:n])
				c.subs.write(stream, buf[:n])
			}
			if err != nil {
				return
			}
		}
	}
	if dio.Stdout != nil {
		wg.Add(1)
		go cp(dio.Stdout, api.Stdout, "stdout")
	}
	if dio.Stderr != nil {
		wg.Add(1)
		go cp(dio.Stderr, api.Stderr, "stderr")
	}
	go func() {
		wg.Wait()
		lw.close()
		c.subs.endAll()
		close(done)
	}()
}

// Attach attaches to a container's streams: out gets the output of its
// current run (or of the next one, if it is not running), in (may be nil)
// feeds its stdin when it was created with OpenStdin. It returns when the
// output ends or ctx is done.
func (e *Engine) Attach(ctx context.Context, ref string, stdout, stderr io.Writer, in io.Reader) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	tty, openStdin, once := c.Config.Tty, c.Config.OpenStdin, c.Config.StdinOnce
	c.mu.Unlock()
	if tty && stderr != nil && stdout == nil {
		stdout = stderr
	}
	sub := &subscriber{stdout: stdout, stderr: stderr, done: make(chan struct{})}
	c.subs.add(sub)
	defer c.subs.remove(sub)
	if in != nil && openStdin {
		go func() {
			run := c.waitRun(ctx, sub.done)
			if run == nil || run.stdin == nil {
				return
			}
			_, _ = io.Copy(run.stdin, in)
			if once {
				// The process sees EOF once every writer of the FIFO closed:
				// ours, and the shim's own (CloseIO).
				_ = run.stdin.Close()
				_ = run.task.CloseIO(e.nsCtx(context.Background()), client.WithStdinCloser)
			}
		}()
	}
	select {
	case <-sub.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitRun returns the current run, waiting for one to start; nil when
// done or ctx ends first.
func (c *container) waitRun(ctx context.Context, done chan struct{}) *runState {
	for {
		c.mu.Lock()
		r, running := c.run, c.running
		c.mu.Unlock()
		if r != nil {
			return r
		}
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return nil
		case <-running:
		}
	}
}

// LogsOptions selects log records.
type LogsOptions struct {
	Stdout, Stderr, Follow, Timestamps bool
	// Tail keeps the last Tail lines (<0: all).
	Tail int
}

// Logs writes the container's log to stdout/stderr (already framed by the
// caller if needed). With Follow it keeps going until the container stops
// or ctx ends.
func (e *Engine) Logs(ctx context.Context, ref string, o LogsOptions, stdout, stderr io.Writer) error {
	c, err := e.get(ref)
	if err != nil {
		return err
	}
	f, err := os.Open(c.logPath())
	if errors.Is(err, os.ErrNotExist) {
		if !o.Follow {
			return nil
		}
		for errors.Is(err, os.ErrNotExist) {
			if c.status() != "running" && c.status() != "restarting" {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			f, err = os.Open(c.logPath())
		}
	}
	if err != nil {
		return err
	}
	defer f.Close()
	emit := func(line []byte) error {
		var r logRecord
		if json.Unmarshal(line, &r) != nil {
			return nil
		}
		w := stdout
		if r.Stream == "stderr" {
			if !o.Stderr {
				return nil
			}
			w = stderr
		} else if !o.Stdout {
			return nil
		}
		s := r.Log
		if o.Timestamps {
			s = r.Time.Format(time.RFC3339Nano) + " " + s
		}
		_, err := io.WriteString(w, s)
		return err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	if o.Tail >= 0 {
		// Keep the last Tail records of what is there now.
		var ring [][]byte
		for {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 && line[len(line)-1] == '\n' {
				if o.Tail > 0 {
					ring = append(ring, line)
					if len(ring) > o.Tail {
						ring = ring[1:]
					}
				}
			} else if len(line) > 0 {
				// A partial record at the end: re-read it later.
				_, _ = f.Seek(-int64(len(line)), io.SeekCurrent)
				br.Reset(f)
				break
			}
			if err != nil {
				break
			}
		}
		for _, l := range ring {
			if err := emit(l); err != nil {
				return err
			}
		}
	}
	var partial []byte
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			partial = append(partial, line...)
			if partial[len(partial)-1] == '\n' {
				if werr := emit(partial); werr != nil {
					return werr
				}
				partial = nil
			}
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		if !o.Follow {
			return nil
		}
		st := c.status()
		if st != "running" && st != "restarting" && st != "created" {
			// Stopped: whatever the copier wrote is in the file.
			if line, _ := io.ReadAll(br); len(line) == 0 && len(partial) == 0 {
				return nil
			} else {
				partial = append(partial, line...)
				for len(partial) > 0 {
					i := 0
					for i < len(partial) && partial[i] != '\n' {
						i++
					}
					if i == len(partial) {
						break
					}
					if werr := emit(partial[:i+1]); werr != nil {
						return werr
					}
					partial = partial[i+1:]
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// parseTail reads the tail parameter ("all", "", or a count).
func parseTail(s string) int {
	if s == "" || s == "all" {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return -1
	}
	return n
}
