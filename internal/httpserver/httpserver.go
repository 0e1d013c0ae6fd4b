// Package httpserver holds the limits every Pouchfly HTTP server applies,
// so that slow or oversized requests cost bounded resources: a deadline
// for the request headers (slowloris), an idle timeout for keep-alive
// connections, a cap on the header block, and bounded request bodies.
package httpserver

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// Limits bound what one connection may hold of a server. Response
// writing has no deadline (a big blob to a slow client is fine); write
// progress is the handlers' business.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's header block, from the
	// first byte of the request (or of the TLS handshake) on; a client
	// that trickles headers is disconnected after it.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds a request's header block (431 beyond).
	MaxHeaderBytes units.Bytes `yaml:"max_header_bytes"`
}

// DefaultLimits returns 10 s for headers, 2 min idle, 16 KiB of headers.
func DefaultLimits() Limits {
	return Limits{ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
}

// Validate reports an unusable value; errors wrap errdefs.ErrInvalid.
func (l Limits) Validate() error {
	switch {
	case l.ReadHeaderTimeout <= 0 || l.IdleTimeout <= 0:
		return fmt.Errorf("read_header_timeout and idle_timeout must be positive: %w", errdefs.ErrInvalid)
	case l.MaxHeaderBytes < 1<<10 || l.MaxHeaderBytes > 1<<20:
		return fmt.Errorf("max_header_bytes %s: want 1KiB..1MiB: %w", l.MaxHeaderBytes, errdefs.ErrInvalid)
	}
	return nil
}

// Server returns an http.Server for h with the limits applied. log, if
// not nil, receives the server's own errors (TLS handshakes, bad
// requests) at debug level.
func (l Limits) Server(h http.Handler, log *slog.Logger) *http.Server {
	s := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    int(l.MaxHeaderBytes),
	}
	if log != nil {
		s.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	return s
}

// NoBody refuses requests that carry a body (413, and the connection is
// closed, so the server does not wait to drain it): for servers whose
// routes are all GETs, a body is only a way to hold a connection.
func NoBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			w.Header().Set("Connection", "close")
			http.Error(w, "request bodies are not accepted", http.StatusRequestEntityTooLarge)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// BoundBody gives a request with a body at most timeout to send it and at
// most max bytes (reading beyond fails; handlers answer 413). GET and
// HEAD with a body are refused as NoBody does. Requests without a body
// pass untouched, so long responses (event streams) keep no deadline.
func BoundBody(h http.Handler, max int64, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength == 0 {
			h.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			w.Header().Set("Connection", "close")
			http.Error(w, "request bodies are not accepted on "+r.Method, http.StatusRequestEntityTooLarge)
			return
		}
		if r.ContentLength > max {
			w.Header().Set("Connection", "close")
			http.Error(w, fmt.Sprintf("request body larger than %d bytes", max), http.StatusRequestEntityTooLarge)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(timeout))
		r.Body = &deadlineBody{ReadCloser: http.MaxBytesReader(w, r.Body, max), rc: rc, w: w}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the body's read deadline once the whole body has
// been read: the server reads the connection in the background after that
// to notice a client going away, and a deadline expiring there would
// cancel a long response (a download stream). A body that failed (too
// slow, too big) keeps its deadline and closes the connection after the
// answer, so that the server does not wait to drain it.
type deadlineBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	w      http.ResponseWriter
	lifted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF && !b.lifted:
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case err != nil && err != io.EOF:
		b.w.Header().Set("Connection", "close")
	}
	return n, err
}
