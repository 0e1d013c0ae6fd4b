package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/supernode/dashboard"
)

// hub builds dashboard states and fans them out to the event streams:
// one state per interval, built once whatever the number of clients,
// and only while someone listens. A slow client skips states (it keeps
// only the newest); one that cannot take a state within writeTimeout is
// dropped.
type hub struct {
	s *Server

	mu      sync.Mutex // guards builder, last*, clients
	builder dashboard.Builder
	last    []byte
	lastAt  time.Time
	clients map[chan []byte]struct{}
	closed  bool
}

const writeTimeout = 10 * time.Second

func newHub(s *Server) *hub {
	return &hub{s: s, builder: dashboard.Builder{MaxTasks: s.cfg.MaxTasks, MaxPeers: s.cfg.MaxPeers},
		clients: map[chan []byte]struct{}{}}
}

// build makes a fresh state; h.mu held.
func (h *hub) buildLocked(now time.Time) ([]byte, error) {
	var totals dashboard.Totals
	if g := h.s.opts.Gatherer; g != nil {
		t, err := dashboard.TotalsFrom(g)
		if err != nil {
			h.s.log.Warn("reading byte counters", "err", err)
		}
		totals = t
	}
	st := h.builder.Build(h.s.sched.Snapshot(), h.s.mgr.List(), totals, dashboard.Info{
		Supernode: h.s.opts.SupernodeID, ReadOnly: h.s.cfg.ReadOnly, AuthRequired: h.s.AuthRequired(),
		Webhook: h.s.cfg.Webhook.Enabled,
	})
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("dashboard state: %v: %w", err, errdefs.ErrUnavailable)
	}
	h.last, h.lastAt = b, now
	return b, nil
}

// current returns a state at most half an interval old.
func (h *hub) current(now time.Time) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last != nil && now.Sub(h.lastAt) < h.s.cfg.EventsInterval/2 {
		return h.last, nil
	}
	return h.buildLocked(now)
}

func (h *hub) run(ctx context.Context) {
	tk := time.NewTicker(h.s.cfg.EventsInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			h.mu.Lock()
			h.closed = true
			for c := range h.clients {
				close(c)
				delete(h.clients, c)
			}
			h.s.metrics.streams.Set(0)
			h.mu.Unlock()
			return
		case now := <-tk.C:
			h.mu.Lock()
			if len(h.clients) > 0 {
				if b, err := h.buildLocked(now); err == nil {
					for c := range h.clients {
						select {
						case <-c: // drop the unsent older state
						default:
						}
						c <- b
					}
				}
			}
			h.mu.Unlock()
		}
	}
}

func (h *hub) add() (chan []byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || len(h.clients) >= h.s.cfg.EventsMaxClients {
		return nil, false
	}
	c := make(chan []byte, 1)
	h.clients[c] = struct{}{}
	h.s.metrics.streams.Set(float64(len(h.clients)))
	return c, true
}

func (h *hub) remove(c chan []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		h.s.metrics.streams.Set(float64(len(h.clients)))
	}
}

// serve is GET /api/v1/events: "state" events, the first at once.
func (h *hub) serve(w http.ResponseWriter, r *http.Request) {
	c, ok := h.add()
	if !ok {
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many event streams (api.events_max_clients=%d)", h.s.cfg.EventsMaxClients))
		return
	}
	defer h.remove(c)
	first, err := h.current(time.Now())
	if err != nil {
		writeErr(w, err)
		return
	}
	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(b []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := fmt.Fprintf(w, "event: state\ndata: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	fmt.Fprintf(w, "retry: %d\n\n", (2 * h.s.cfg.EventsInterval).Milliseconds())
	if !send(first) {
		return
	}
	end := time.NewTimer(h.s.cfg.EventsMaxAge)
	defer end.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-end.C:
			return
		case b, ok := <-c:
			if !ok || !send(b) {
				return
			}
		}
	}
}
