package piece

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/ratelimit"
)

// PiecePath is the data-plane route every upload server (peer or CDN)
// serves: GET /tasks/{task}/pieces/{n}.
const PiecePath = "/tasks/{task}/pieces/{n}"

// TokenHeader carries the supernode-signed task token on piece GETs.
const TokenHeader = "X-Pouchfly-Token"

// ServerOptions tunes the piece handler. The zero value serves everyone,
// without limits.
type ServerOptions struct {
	// Authorize decides whether r may fetch pieces of task; it returns the
	// requesting host's ID or an error wrapping errdefs.ErrForbidden.
	Authorize func(r *http.Request, task string) (host string, err error)
	// MaxConcurrent caps uploads in flight; beyond it requests get 503.
	MaxConcurrent int
	// Limiter, if set, caps the upload rate (bytes/s); its burst must be at
	// least ChunkSize.
	Limiter *rate.Limiter
	// OnServed is called after each piece sent in full.
	OnServed func(task string, n int, bytes int64, host string)
	// Clients, if set, rate-limits requests per client (by remote IP),
	// before anything else is done for them; a request beyond its
	// client's rate gets 429 with Retry-After.
	Clients *ratelimit.Keyed
	// MaxPerClient caps one client's uploads in flight (0: no cap; needs
	// Clients); beyond it requests get 429, so one host cannot take every
	// slot of MaxConcurrent.
	MaxPerClient int
}

// ChunkSize is the unit of rate-limited sends (each chunk still goes out
// with sendfile).
const ChunkSize = 256 << 10

// Handler serves pieces from a Store.
type Handler struct {
	store Store
	opts  ServerOptions
	slots chan struct{}
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns the piece server over store.
func NewHandler(store Store, opts ServerOptions) *Handler {
	h := &Handler{store: store, opts: opts}
	if opts.MaxConcurrent > 0 {
		h.slots = make(chan struct{}, opts.MaxConcurrent)
	}
	return h
}

// Active returns the number of uploads in flight (0 without MaxConcurrent).
func (h *Handler) Active() int { return len(h.slots) }

// Register adds the piece route to mux.
func (h *Handler) Register(mux *http.ServeMux) { mux.Handle("GET "+PiecePath, h) }

// ServeHTTP implements http.Handler for GET /tasks/{task}/pieces/{n}.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	client, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		client = r.RemoteAddr
	}
	if h.opts.Clients != nil {
		if ok, wait := h.opts.Clients.Allow(client); !ok {
			tooMany(w, wait, "too many requests from "+client)
			return
		}
	}
	if r.ContentLength != 0 {
		// Piece GETs have no body; one is only a way to hold the
		// connection (the server would wait to drain it).
		w.Header().Set("Connection", "close")
		http.Error(w, "request bodies are not accepted", http.StatusRequestEntityTooLarge)
		return
	}
	task := r.PathValue("task")
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 || n >= MaxCount || ValidTaskID(task) != nil {
		http.Error(w, "bad task or piece number", http.StatusBadRequest)
		return
	}
	host := ""
	if h.opts.Authorize != nil {
		if host, err = h.opts.Authorize(r, task); err != nil {
			http.Error(w, "task token rejected", http.StatusForbidden)
			return
		}
	}
	if h.opts.Clients != nil && h.opts.MaxPerClient > 0 {
		release, ok := h.opts.Clients.Acquire(client, h.opts.MaxPerClient)
		if !ok {
			tooMany(w, time.Second, "too many uploads in flight to "+client)
			return
		}
		defer release()
	}
	if h.slots != nil {
		select {
		case h.slots <- struct{}{}:
			defer func() { <-h.slots }()
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many uploads", http.StatusServiceUnavailable)
			return
		}
	}
	rd, err := h.store.ReadPiece(r.Context(), task, n)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			http.Error(w, "piece not held", http.StatusNotFound)
		} else {
			http.Error(w, "store error", http.StatusInternalServerError)
		}
		return
	}
	defer rd.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(rd.Size, 10))
	w.WriteHeader(http.StatusOK)
	sent, err := h.copy(r.Context(), w, rd)
	if err == nil && sent == rd.Size && h.opts.OnServed != nil {
		h.opts.OnServed(task, n, sent, host)
	}
}

// tooMany answers 429 with Retry-After in whole seconds (at least 1).
func tooMany(w http.ResponseWriter, wait time.Duration, msg string) {
	secs := int64((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	http.Error(w, msg, http.StatusTooManyRequests)
}

// copy sends rd, through the limiter if any, keeping the sendfile path:
// each chunk is an *io.LimitedReader directly over the file.
func (h *Handler) copy(ctx context.Context, w io.Writer, rd *Reader) (int64, error) {
	if h.opts.Limiter == nil {
		return io.Copy(w, rd.R)
	}
	base, left := rd.R, rd.Size
	if lr, ok := rd.R.(*io.LimitedReader); ok {
		base, left = lr.R, lr.N
	}
	var sent int64
	for left > 0 {
		c := min(left, ChunkSize)
		if err := h.opts.Limiter.WaitN(ctx, int(c)); err != nil {
			return sent, err
		}
		n, err := io.Copy(w, &io.LimitedReader{R: base, N: c})
		sent += n
		left -= n
		if err != nil {
			return sent, err
		}
		if n < c {
			return sent, io.ErrUnexpectedEOF
		}
	}
	return sent, nil
}

// FetchPiece GETs piece n of task from the upload server at addr
// (host:port). The caller reads and closes the body. Errors wrap
// ErrNotFound (not held), ErrForbidden (token refused), ErrUnavailable
// (network, overload) or ErrInvalid.
func FetchPiece(ctx context.Context, c *http.Client, addr, task string, n int, token string) (io.ReadCloser, int64, error) {
	u := "http://" + addr + "/tasks/" + task + "/pieces/" + strconv.Itoa(n)
	if strings.Contains(addr, "://") {
		u = addr + "/tasks/" + task + "/pieces/" + strconv.Itoa(n)
	}
	var conn net.Conn
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { conn = i.Conn }})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("piece request: %v: %w", err, errdefs.ErrInvalid)
	}
	if token != "" {
		req.Header.Set(TokenHeader, token)
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			// Cancelled by the caller (an endgame loser, shutdown): not the
			// parent's fault.
			return nil, 0, fmt.Errorf("piece %d from %s: %w", n, addr, ctx.Err())
		}
		return nil, 0, fmt.Errorf("piece %d from %s: %v: %w", n, addr, err, errdefs.ErrUnavailable)
	}
	if resp.StatusCode == http.StatusOK {
		if tc, ok := conn.(*net.TCPConn); ok && resp.ContentLength > 0 {
			if rc, err := tc.SyscallConn(); err == nil {
				return &lowatBody{ReadCloser: resp.Body, rc: rc, left: resp.ContentLength, cur: 1}, resp.ContentLength, nil
			}
		}
		return resp.Body, resp.ContentLength, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	class := errdefs.ErrInvalid
	switch resp.StatusCode {
	case http.StatusNotFound:
		class = errdefs.ErrNotFound
	case http.StatusForbidden, http.StatusUnauthorized:
		class = errdefs.ErrForbidden
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		class = ErrBusy
	case http.StatusInternalServerError, http.StatusBadGateway:
		class = errdefs.ErrUnavailable
	}
	return nil, 0, fmt.Errorf("piece %d from %s: HTTP %d: %w", n, addr, resp.StatusCode, class)
}

// ErrBusy is what FetchPiece returns when the upload server is at its
// upload or per-client limit (503/429): the parent is healthy but busy,
// so callers should try it again later rather than count it as failed. It
// is of class errdefs.ErrUnavailable.
var ErrBusy = fmt.Errorf("upload server busy: %w", errdefs.ErrUnavailable)

// rcvLowat is the socket receive low-water mark while a piece body streams.
const rcvLowat = 128 << 10

// lowatBody raises the socket's receive low-water mark (SO_RCVLOWAT) while
// a piece body streams, so the reader wakes once per 128 KiB instead of
// once per packet — on capped links that halves an agent's CPU. It is
// safe because a piece response has a Content-Length and nothing follows
// it on the connection: once the transport's buffer is drained, the bytes
// left on the socket are exactly the bytes left of the body, and the mark
// never exceeds them. The mark goes back to 1 at the end, before the
// connection carries the next response's headers.
type lowatBody struct {
	io.ReadCloser
	rc   syscall.RawConn
	left int64
	cur  int
}

func (b *lowatBody) set(v int) {
	if v == b.cur {
		return
	}
	b.cur = v
	b.rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, v) })
}

// Read implements io.Reader.
func (b *lowatBody) Read(p []byte) (int, error) {
	b.set(int(max(1, min(rcvLowat, b.left))))
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if err != nil || b.left <= 0 {
		b.set(1)
	}
	return n, err
}

// Close resets the mark and closes the body.
func (b *lowatBody) Close() error {
	b.set(1)
	return b.ReadCloser.Close()
}
