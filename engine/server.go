package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Handler returns pouchd's HTTP API (Docker v1.24 style; paths may carry
// a /v1.NN prefix).
func (e *Engine) Handler() http.Handler {
	mux := http.NewServeMux()
	h := &handlers{e: e}
	mux.HandleFunc("GET /_ping", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "OK") })
	mux.HandleFunc("GET /version", h.version)
	mux.HandleFunc("GET /info", h.info)
	mux.HandleFunc("POST /auth", h.auth)
	mux.HandleFunc("POST /images/create", h.imagePull)
	mux.HandleFunc("GET /images/json", h.imageList)
	mux.HandleFunc("/images/", h.imageByName)
	mux.HandleFunc("POST /containers/create", h.containerCreate)
	mux.HandleFunc("GET /containers/json", h.containerList)
	mux.HandleFunc("GET /containers/{id}/json", h.containerInspect)
	mux.HandleFunc("POST /containers/{id}/start", h.containerStart)
	mux.HandleFunc("POST /containers/{id}/stop", h.containerStop)
	mux.HandleFunc("POST /containers/{id}/restart", h.containerRestart)
	mux.HandleFunc("POST /containers/{id}/kill", h.containerKill)
	mux.HandleFunc("POST /containers/{id}/wait", h.containerWait)
	mux.HandleFunc("POST /containers/{id}/attach", h.containerAttach)
	mux.HandleFunc("POST /containers/{id}/resize", h.containerResize)
	mux.HandleFunc("GET /containers/{id}/logs", h.containerLogs)
	mux.HandleFunc("DELETE /containers/{id}", h.containerRemove)
	mux.HandleFunc("POST /containers/{id}/exec", h.execCreate)
	mux.HandleFunc("POST /exec/{id}/start", h.execStart)
	mux.HandleFunc("POST /exec/{id}/resize", h.execResize)
	mux.HandleFunc("GET /exec/{id}/json", h.execInspect)
	mux.HandleFunc("POST /volumes/create", h.volumeCreate)
	mux.HandleFunc("GET /volumes", h.volumeList)
	mux.HandleFunc("GET /volumes/{name}", h.volumeInspect)
	mux.HandleFunc("DELETE /volumes/{name}", h.volumeRemove)
	return stripVersion(logRequests(e.log, mux))
}

var versionPrefix = regexp.MustCompile(`^/v[0-9]+\.[0-9]+/`)

func stripVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if loc := versionPrefix.FindStringIndex(r.URL.Path); loc != nil {
			r.URL.Path = r.URL.Path[loc[1]-1:]
			r.URL.RawPath = ""
		}
		next.ServeHTTP(w, r)
	})
}

func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Debug("api", "method", r.Method, "path", r.URL.Path)
		next.ServeHTTP(w, r)
	})
}

// Serve serves the API on the configured listen address until ctx ends.
// A unix socket is created mode 0660 (removing a stale one).
func (e *Engine) Serve(ctx context.Context) error {
	network, addr, err := ParseListen(e.cfg.Listen)
	if err != nil {
		return err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return err
		}
		_ = os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", e.cfg.Listen, err)
	}
	if network == "unix" {
		_ = os.Chmod(addr, 0o660)
	}
	return e.ServeListener(ctx, ln)
}

// ServeListener serves the API on ln until ctx ends.
func (e *Engine) ServeListener(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
	}()
	err := srv.Serve(ln)
	close(done)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type handlers struct{ e *Engine }

// statusOf maps an error class to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errNotModified):
		return http.StatusNotModified
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrNotFound), cerrdefs.IsNotFound(err):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrInvalid), cerrdefs.IsInvalidArgument(err):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrForbidden), cerrdefs.IsPermissionDenied(err):
		return http.StatusForbidden
	case errors.Is(err, errdefs.ErrUnavailable), cerrdefs.IsUnavailable(err):
		return http.StatusServiceUnavailable
	case cerrdefs.IsAlreadyExists(err), cerrdefs.IsConflict(err), cerrdefs.IsFailedPrecondition(err):
		return http.StatusConflict
	case errors.Is(err, context.Canceled):
		return 499
	}
	return http.StatusInternalServerError
}

// errorMessage strips the class suffix errors carry (": not found").
func errorMessage(err error) string {
	msg := err.Error()
	for _, class := range []error{errdefs.ErrNotFound, errdefs.ErrInvalid, errdefs.ErrUnavailable, errdefs.ErrForbidden, ErrConflict} {
		msg = strings.TrimSuffix(msg, ": "+class.Error())
	}
	return msg
}

func writeError(w http.ResponseWriter, err error) {
	st := statusOf(err)
	if st == http.StatusNotModified {
		w.WriteHeader(st)
		return
	}
	writeJSON(w, st, api.ErrorResponse{Message: errorMessage(err)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decodeBody(r *http.Request, v any) error {
	if r.Body == nil || r.ContentLength == 0 {
		return nil
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("bad JSON body: %v: %w", err, errdefs.ErrInvalid)
	}
	return nil
}

func boolParam(r *http.Request, k string) bool {
	switch strings.ToLower(r.URL.Query().Get(k)) {
	case "1", "true", "yes":
		return true
	}
	return false
}

func (h *handlers) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.e.Version(r.Context()))
}

// auth checks credentials with a registry (docker login); the body is
// never logged.
func (h *handlers) auth(w http.ResponseWriter, r *http.Request) {
	var a api.AuthConfig
	if err := decodeBody(r, &a); err != nil {
		writeError(w, fmt.Errorf("bad login request: %w", errdefs.ErrInvalid))
		return
	}
	resp, err := h.e.Login(r.Context(), a)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *handlers) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.e.Info(r.Context()))
}

// flushWriter flushes after every write (streams).
type flushWriter struct {
	mu sync.Mutex
	w  io.Writer
	f  http.Flusher
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.w.Write(p)
	if f.f != nil {
		f.f.Flush()
	}
	return n, err
}

func newFlushWriter(w http.ResponseWriter) *flushWriter {
	fl, _ := w.(http.Flusher)
	return &flushWriter{w: w, f: fl}
}

func (h *handlers) imagePull(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ref := q.Get("fromImage")
	if t := q.Get("tag"); t != "" && ref != "" {
		if strings.HasPrefix(t, "sha256:") {
			ref += "@" + t
		} else {
			ref += ":" + t
		}
	}
	if ref == "" {
		writeError(w, fmt.Errorf("fromImage is required: %w", errdefs.ErrInvalid))
		return
	}
	// Headers wait for the first layer event: a pull that fails at
	// resolution gets a proper status (404, 503...).
	var (
		mu        sync.Mutex
		committed bool
		pending   []api.JSONMessage
	)
	fw := newFlushWriter(w)
	enc := json.NewEncoder(fw)
	commit := func() {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		committed = true
		for _, m := range pending {
			_ = enc.Encode(m)
		}
		pending = nil
	}
	auth, err := api.DecodeAuth(r.Header.Get(api.AuthHeader))
	if err != nil {
		writeError(w, err)
		return
	}
	err = h.e.Pull(r.Context(), ref, auth, func(m api.JSONMessage) {
		mu.Lock()
		defer mu.Unlock()
		if !committed {
			pending = append(pending, m)
			if m.ID != "" && !strings.HasPrefix(m.Status, "Pulling from") {
				commit()
			}
			return
		}
		_ = enc.Encode(m)
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		if !committed {
			writeError(w, err)
			return
		}
		_ = enc.Encode(api.JSONMessage{Error: &api.JSONError{Code: statusOf(err), Message: errorMessage(err)}, ErrorMessage: errorMessage(err)})
		return
	}
	if !committed {
		commit()
	}
}

func (h *handlers) imageList(w http.ResponseWriter, r *http.Request) {
	imgs, err := h.e.Images(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, imgs)
}

// imageByName serves /images/{name}/json and DELETE /images/{name}
// (names contain slashes).
func (h *handlers) imageByName(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/images/")
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(rest, "/json"):
		out, err := h.e.ImageInspect(r.Context(), strings.TrimSuffix(rest, "/json"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	case r.Method == http.MethodDelete && rest != "":
		if err := h.e.RemoveImage(r.Context(), rest, boolParam(r, "force")); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, []map[string]string{{"Untagged": rest}})
	default:
		writeError(w, fmt.Errorf("no route for %s %s: %w", r.Method, r.URL.Path, errdefs.ErrNotFound))
	}
}

func (h *handlers) containerCreate(w http.ResponseWriter, r *http.Request) {
	var req api.ContainerCreateRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	resp, err := h.e.Create(r.Context(), r.URL.Query().Get("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, resp)
}

func (h *handlers) containerList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.e.List(r.Context(), boolParam(r, "all")))
}

func (h *handlers) containerInspect(w http.ResponseWriter, r *http.Request) {
	out, err := h.e.Inspect(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handlers) containerStart(w http.ResponseWriter, r *http.Request) {
	if err := h.e.StartContainer(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func stopTimeout(r *http.Request) (*time.Duration, error) {
	t := r.URL.Query().Get("t")
	if t == "" {
		return nil, nil
	}
	n, err := strconv.Atoi(t)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("t=%q: want seconds: %w", t, errdefs.ErrInvalid)
	}
	d := time.Duration(n) * time.Second
	return &d, nil
}

func (h *handlers) containerStop(w http.ResponseWriter, r *http.Request) {
	t, err := stopTimeout(r)
	if err == nil {
		err = h.e.StopContainer(r.Context(), r.PathValue("id"), t)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handlers) containerRestart(w http.ResponseWriter, r *http.Request) {
	t, err := stopTimeout(r)
	if err == nil {
		err = h.e.StopContainer(r.Context(), r.PathValue("id"), t)
		if errors.Is(err, errNotModified) {
			err = nil
		}
	}
	if err == nil {
		err = h.e.StartContainer(r.Context(), r.PathValue("id"))
	}
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handlers) containerKill(w http.ResponseWriter, r *http.Request) {
	if err := h.e.KillContainer(r.Context(), r.PathValue("id"), r.URL.Query().Get("signal")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handlers) containerRemove(w http.ResponseWriter, r *http.Request) {
	if err := h.e.RemoveContainer(r.Context(), r.PathValue("id"), boolParam(r, "force")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// containerWait registers the wait, sends the headers at once (so a
// client may start the container only after its wait is in place), then
// blocks.
func (h *handlers) containerWait(w http.ResponseWriter, r *http.Request) {
	wait, err := h.e.WaitContainer(r.PathValue("id"), r.URL.Query().Get("condition"))
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	code, err := wait(r.Context())
	resp := api.WaitResponse{StatusCode: code}
	if err != nil {
		resp.Error = &api.JSONError{Message: err.Error()}
	}
	_ = json.NewEncoder(w).Encode(resp)
}

// hijack takes over the connection for a raw stream.
func hijack(w http.ResponseWriter, r *http.Request) (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	status := "HTTP/1.1 200 OK\r\n"
	if strings.EqualFold(r.Header.Get("Upgrade"), "tcp") {
		status = "HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
	}
	_, _ = fmt.Fprintf(rw, "%sContent-Type: %s\r\n\r\n", status, api.MediaTypeRawStream)
	if err := rw.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, rw, nil
}

func (h *handlers) containerAttach(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := h.e.get(id)
	if err != nil {
		writeError(w, err)
		return
	}
	c.mu.Lock()
	tty := c.Config.Tty
	c.mu.Unlock()
	conn, rw, err := hijack(w, r)
	if err != nil {
		return
	}
	defer conn.Close()
	var stdout, stderr io.Writer
	if tty {
		if boolParam(r, "stdout") || boolParam(r, "stderr") {
			stdout = conn
		}
	} else {
		o, e := api.NewMuxWriters(conn)
		if boolParam(r, "stdout") {
			stdout = o
		}
		if boolParam(r, "stderr") {
			stderr = e
		}
	}
	var in io.Reader
	if boolParam(r, "stdin") {
		in = rw.Reader
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if boolParam(r, "logs") {
		_ = h.e.Logs(ctx, id, LogsOptions{Stdout: stdout != nil, Stderr: stderr != nil, Tail: -1}, orDiscard(stdout), orDiscard(stderr))
	}
	_ = h.e.Attach(ctx, id, stdout, stderr, in)
	if in != nil {
		hangUp(conn, nil) // the stdin copier reads the connection
	} else {
		hangUp(conn, rw.Reader)
	}
}

// hangUp ends a hijacked stream: a half-close gives the client a clean
// EOF, then the client's hang-up (or 2 s) is awaited while its unread
// input is drained from r (nil when a stdin copier reads the connection:
// the deadline ends it): closing with unread input would reset the
// connection and the client would see an error instead of EOF.
func hangUp(conn net.Conn, r io.Reader) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if r != nil {
		_, _ = io.Copy(io.Discard, r)
		return
	}
	time.Sleep(2 * time.Second)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func (h *handlers) containerResize(w http.ResponseWriter, r *http.Request) {
	ww, hh := atoiParam(r, "w"), atoiParam(r, "h")
	if err := h.e.ResizeContainer(r.Context(), r.PathValue("id"), uint32(ww), uint32(hh)); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func atoiParam(r *http.Request, k string) int {
	n, _ := strconv.Atoi(r.URL.Query().Get(k))
	return max(n, 0)
}

func (h *handlers) containerLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := h.e.get(id)
	if err != nil {
		writeError(w, err)
		return
	}
	c.mu.Lock()
	tty := c.Config.Tty
	c.mu.Unlock()
	o := LogsOptions{Stdout: boolParam(r, "stdout"), Stderr: boolParam(r, "stderr"), Follow: boolParam(r, "follow"),
		Timestamps: boolParam(r, "timestamps"), Tail: parseTail(r.URL.Query().Get("tail"))}
	if !o.Stdout && !o.Stderr {
		writeError(w, fmt.Errorf("you must choose at least one stream (stdout, stderr): %w", errdefs.ErrInvalid))
		return
	}
	w.Header().Set("Content-Type", api.MediaTypeRawStream)
	w.WriteHeader(http.StatusOK)
	fw := newFlushWriter(w)
	fw.f.Flush()
	var stdout, stderr io.Writer = fw, fw
	if !tty {
		stdout, stderr = api.NewMuxWriters(fw)
	}
	_ = h.e.Logs(r.Context(), id, o, stdout, stderr)
}

func (h *handlers) execCreate(w http.ResponseWriter, r *http.Request) {
	var cfg api.ExecConfig
	if err := decodeBody(r, &cfg); err != nil {
		writeError(w, err)
		return
	}
	id, err := h.e.ExecCreate(r.Context(), r.PathValue("id"), cfg)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.IDResponse{ID: id})
}

func (h *handlers) execStart(w http.ResponseWriter, r *http.Request) {
	var sc api.ExecStartConfig
	if err := decodeBody(r, &sc); err != nil {
		writeError(w, err)
		return
	}
	id := r.PathValue("id")
	x, err := h.e.getExec(id)
	if err != nil {
		writeError(w, err)
		return
	}
	if sc.Detach {
		if err := h.e.ExecStart(r.Context(), id, true, nil, nil, nil); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	conn, rw, err := hijack(w, r)
	if err != nil {
		return
	}
	defer conn.Close()
	var stdout, stderr io.Writer = conn, conn
	if !x.cfg.Tty {
		stdout, stderr = api.NewMuxWriters(conn)
	}
	var in io.Reader
	if x.cfg.AttachStdin {
		in = rw.Reader
	}
	if err := h.e.ExecStart(context.Background(), id, false, in, stdout, stderr); err != nil {
		if mw, ok := stdout.(*api.MuxWriter); ok {
			_ = mw.WriteError(fmt.Errorf("%s", errorMessage(err)))
		} else {
			_, _ = fmt.Fprintf(conn, "pouchd: %s\r\n", errorMessage(err))
		}
	}
	if in != nil {
		hangUp(conn, nil)
	} else {
		hangUp(conn, rw.Reader)
	}
}

func (h *handlers) execResize(w http.ResponseWriter, r *http.Request) {
	if err := h.e.ExecResize(r.Context(), r.PathValue("id"), uint32(atoiParam(r, "w")), uint32(atoiParam(r, "h"))); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (h *handlers) execInspect(w http.ResponseWriter, r *http.Request) {
	out, err := h.e.ExecInspect(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handlers) volumeCreate(w http.ResponseWriter, r *http.Request) {
	var req api.VolumeCreateRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := h.e.VolumeCreate(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, v)
}

func (h *handlers) volumeList(w http.ResponseWriter, r *http.Request) {
	out, err := h.e.VolumeList(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handlers) volumeInspect(w http.ResponseWriter, r *http.Request) {
	v, err := h.e.VolumeInspect(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (h *handlers) volumeRemove(w http.ResponseWriter, r *http.Request) {
	if err := h.e.VolumeRemove(r.Context(), r.PathValue("name"), boolParam(r, "force")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
