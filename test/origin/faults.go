package origin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Fault modes of SetFault.
const (
	// FaultNone serves normally.
	FaultNone = ""
	// Fault5xx answers 503 Service Unavailable instead of the file.
	Fault5xx = "5xx"
	// FaultReset sends Fault.After body bytes, then resets the connection
	// (TCP RST): a response broken mid-body.
	FaultReset = "reset"
	// FaultStall sends Fault.After body bytes, then nothing for
	// Fault.Stall (or until the client goes away), then the rest.
	FaultStall = "stall"
)

// maxStall bounds a stall whose length is 0 ("until the client leaves").
const maxStall = 10 * time.Minute

// maxLog bounds the request log (the oldest records are dropped).
const maxLog = 100000

// Fault is a failure the origin injects into file requests (not into
// control endpoints of the callers).
type Fault struct {
	// Mode is one of the Fault* constants.
	Mode string `json:"mode"`
	// Count is how many file requests the fault hits before the origin
	// serves normally again; negative: every request (it never recovers).
	Count int `json:"count"`
	// After is how many body bytes FaultReset and FaultStall send first.
	After int64 `json:"after"`
	// Stall is how long FaultStall pauses; 0: until the client goes away
	// (at most 10 minutes).
	Stall time.Duration `json:"stall"`
	// Only, when set, limits the fault to requests whose User-Agent is
	// this (e.g. "pouchfly-cdn"); others are served normally and do not
	// count.
	Only string `json:"only,omitempty"`
}

// Validate reports whether f is a known fault.
func (f Fault) Validate() error {
	switch f.Mode {
	case FaultNone, Fault5xx, FaultReset, FaultStall:
	default:
		return fmt.Errorf("unknown fault mode %q (5xx, reset, stall)", f.Mode)
	}
	if f.After < 0 || f.Stall < 0 || f.Stall > maxStall {
		return fmt.Errorf("fault: after and stall must not be negative, stall at most %v", maxStall)
	}
	return nil
}

// Record is one file request as the origin saw it.
type Record struct {
	// Time is when the request arrived.
	Time time.Time `json:"time"`
	// Path is the request path.
	Path string `json:"path"`
	// Range is the request's Range header ("" without one).
	Range string `json:"range,omitempty"`
	// UserAgent is the request's User-Agent ("pouchfly-cdn" for the CDN).
	UserAgent string `json:"user_agent,omitempty"`
	// Remote is the client's address.
	Remote string `json:"remote"`
	// Status is the status sent (0 if the client left before headers).
	Status int `json:"status"`
	// Bytes is the body bytes sent.
	Bytes int64 `json:"bytes"`
	// Fault is the fault injected into this request ("" none).
	Fault string `json:"fault,omitempty"`
}

// faults is the fault state and request log of a Server.
type faults struct {
	mu  sync.Mutex
	cur Fault
	log []Record
	lim *rate.Limiter
}

// SetFault makes the origin inject f from now on (Fault{} heals it).
func (s *Server) SetFault(f Fault) error {
	if err := f.Validate(); err != nil {
		return err
	}
	s.faults.mu.Lock()
	s.faults.cur = f
	s.faults.mu.Unlock()
	return nil
}

// CurrentFault returns the fault in force (its Count counts down).
func (s *Server) CurrentFault() Fault {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return s.faults.cur
}

// SetTotalRate caps the bytes per second the origin sends over all
// responses together (an origin's uplink); 0 removes the cap.
func (s *Server) SetTotalRate(bytesPerSec int64) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if bytesPerSec <= 0 {
		s.faults.lim = nil
		return
	}
	s.faults.lim = rate.NewLimiter(rate.Limit(bytesPerSec), 64<<10)
}

func (s *Server) totalLimiter() *rate.Limiter {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return s.faults.lim
}

// Log returns the file requests served so far, oldest first (at most the
// last 100000).
func (s *Server) Log() []Record {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	out := slices.Clone(s.faults.log)
	slices.SortStableFunc(out, func(a, b Record) int { return a.Time.Compare(b.Time) })
	return out
}

// ResetLog forgets the requests logged so far.
func (s *Server) ResetLog() {
	s.faults.mu.Lock()
	s.faults.log = nil
	s.faults.mu.Unlock()
}

// takeFault decides the fault of one request (consuming one of Count).
func (s *Server) takeFault(r *http.Request) Fault {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	f := s.faults.cur
	if f.Mode == FaultNone || f.Count == 0 || (f.Only != "" && r.UserAgent() != f.Only) {
		return Fault{}
	}
	if f.Count > 0 {
		s.faults.cur.Count--
	}
	return f
}

func (s *Server) record(rec Record) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if len(s.faults.log) >= maxLog {
		s.faults.log = s.faults.log[len(s.faults.log)-maxLog+1:]
	}
	s.faults.log = append(s.faults.log, rec)
}

// errInjected ends a response broken on purpose.
var errInjected = errors.New("injected fault")

// faultWriter applies FaultReset or FaultStall once After bytes went out.
type faultWriter struct {
	w    io.Writer
	rw   http.ResponseWriter
	ctx  context.Context
	f    Fault
	left int64
	done bool
}

func (fw *faultWriter) Write(b []byte) (int, error) {
	if fw.done || int64(len(b)) <= fw.left {
		n, err := fw.w.Write(b)
		fw.left -= int64(n)
		return n, err
	}
	n, err := fw.w.Write(b[:fw.left])
	fw.left -= int64(n)
	if err != nil {
		return n, err
	}
	fw.done = true
	rc := http.NewResponseController(fw.rw)
	rc.Flush()
	switch fw.f.Mode {
	case FaultReset:
		if conn, _, herr := rc.Hijack(); herr == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0) // RST, not FIN
			}
			conn.Close()
			return n, errInjected
		}
		panic(http.ErrAbortHandler)
	case FaultStall:
		d := fw.f.Stall
		if d <= 0 {
			d = maxStall
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-fw.ctx.Done():
			return n, fw.ctx.Err()
		}
	}
	m, err := fw.w.Write(b[n:])
	return n + m, err
}
