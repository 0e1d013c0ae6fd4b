// Package origin is a test and demo origin: an HTTP file server over
// generated content that counts the bytes it sends, honours Range, and can
// require credentials or inject faults (faults.go: 5xx, resets
// mid-body, stalls), and logs the requests it served.
package origin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/pouchfly/pouchfly/internal/httpserver"
)

// File is one served file.
type File struct {
	Data   []byte
	Digest string
}

// Server serves files at /files/<name>. Safe for concurrent use.
type Server struct {
	mu    sync.Mutex
	files map[string]*File
	// User and Password, when set, are required (basic auth).
	User, Password string

	egress   atomic.Int64
	requests atomic.Int64
	// FailNext makes the next N requests answer 503.
	FailNext atomic.Int32
	// Delay, if set, is slept before each response body (a slow origin).
	Delay time.Duration
	// Rate, if positive, caps the send rate of each response (bytes/s).
	Rate int64

	faults faults // injected faults, request log, total rate (faults.go)

	srv *http.Server
	ln  net.Listener
}

// New returns a server with no files.
func New() *Server { return &Server{files: map[string]*File{}} }

// Random returns n random bytes from a seeded generator (cheap, repeatable).
func Random(n int64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Add serves data at /files/name and returns its digest.
func (s *Server) Add(name string, data []byte) string {
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	s.mu.Lock()
	s.files[name] = &File{Data: data, Digest: d}
	s.mu.Unlock()
	return d
}

// Egress returns the body bytes sent so far.
func (s *Server) Egress() int64 { return s.egress.Load() }

// Requests returns the number of requests served.
func (s *Server) Requests() int64 { return s.requests.Load() }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if s.FailNext.Load() > 0 && s.FailNext.Add(-1) >= 0 {
		http.Error(w, "injected failure", http.StatusServiceUnavailable)
		return
	}
	if s.User != "" {
		u, p, ok := r.BasicAuth()
		if !ok || u != s.User || p != s.Password {
			w.Header().Set("WWW-Authenticate", `Basic realm="origin"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/files/")
	s.mu.Lock()
	f := s.files[name]
	s.mu.Unlock()
	if !ok || f == nil {
		http.NotFound(w, r)
		return
	}
	arrived := time.Now()
	rec := &httpserver.StatusRecorder{ResponseWriter: w}
	fault := s.takeFault(r)
	cw := &countingWriter{w: rec, n: &s.egress, rate: s.Rate, lim: s.totalLimiter(), ctx: r.Context()}
	defer func() {
		s.record(Record{Time: arrived, Path: r.URL.Path, Range: r.Header.Get("Range"), UserAgent: r.UserAgent(),
			Remote: r.RemoteAddr, Status: rec.Sent(), Bytes: cw.sent, Fault: fault.Mode})
	}()
	if fault.Mode == Fault5xx {
		http.Error(rec, "injected failure", http.StatusServiceUnavailable)
		return
	}
	if s.Delay > 0 {
		time.Sleep(s.Delay)
	}
	var body io.Writer = cw
	if fault.Mode != FaultNone {
		body = &faultWriter{w: cw, rw: rec, ctx: r.Context(), f: fault, left: fault.After}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(responseWriter{ResponseWriter: rec, body: body}, r, name, time.Time{}, bytes.NewReader(f.Data))
}

// responseWriter routes body writes through the counter.
type responseWriter struct {
	http.ResponseWriter
	body io.Writer
}

func (rw responseWriter) Write(b []byte) (int, error) { return rw.body.Write(b) }

type countingWriter struct {
	w    io.Writer
	n    *atomic.Int64
	rate int64
	// lim caps all responses together (SetTotalRate); ctx ends its waits.
	lim  *rate.Limiter
	ctx  context.Context
	sent int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.rate <= 0 && c.lim == nil {
		n, err := c.w.Write(b)
		c.n.Add(int64(n))
		c.sent += int64(n)
		return n, err
	}
	written := 0
	for len(b) > 0 {
		chunk := min(len(b), 32<<10)
		if c.lim != nil {
			if err := c.lim.WaitN(c.ctx, chunk); err != nil {
				return written, err
			}
		}
		n, err := c.w.Write(b[:chunk])
		c.n.Add(int64(n))
		c.sent += int64(n)
		written += n
		if err != nil {
			return written, err
		}
		if c.rate > 0 {
			time.Sleep(time.Duration(float64(n) / float64(c.rate) * float64(time.Second)))
		}
		b = b[chunk:]
	}
	return written, nil
}

// Start listens on addr (e.g. "127.0.0.1:0") and serves in the background.
func (s *Server) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return nil
}

// URL returns the URL of file name.
func (s *Server) URL(name string) string {
	return "http://" + s.ln.Addr().String() + "/files/" + name
}

// Addr returns the listen address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// Itoa names generated files ("0", "1", …).
func Itoa(n int) string { return strconv.Itoa(n) }
