// Package httpapi is the supernode's HTTP API beside /metrics: preheat
// jobs, the registry webhook, the dashboard's state and its event stream
// (SSE), and the dashboard page itself.
//
// Routes (JSON; errors are {"error": "..."} with 400 bad request, 401
// missing/wrong token, 403 read-only, 404 unknown job or route, 409 job
// already finished, 413 body too large, 415 not JSON, 503 busy):
//
//	GET    /                          dashboard (when api.dashboard)
//	GET    /api/v1/state              dashboard state (dashboard.State)
//	GET    /api/v1/events             the same, pushed as SSE "state" events
//	GET    /api/v1/preheats           jobs, newest first (summaries)
//	GET    /api/v1/preheats/{id}      one job with per-host, per-blob progress
//	POST   /api/v1/preheats           admin: start a job (preheat.Request) → 202
//	DELETE /api/v1/preheats/{id}      admin: cancel a job
//	POST   /api/v1/webhooks/registry  admin: registry notifications (when enabled)
//	DELETE /api/v1/quarantine/{host}  admin: lift a host's quarantine (404 when it has none)
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/supernode/dashboard"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// Snapshotter is what the API reads of the scheduler.
type Snapshotter interface {
	Snapshot() scheduler.Snapshot
}

// Releaser lifts quarantines (scheduler.Scheduler.Release); a Snapshotter
// that is one also serves DELETE /api/v1/quarantine/{host}.
type Releaser interface {
	Release(hostID string) bool
}

// WebhookSecretHeader carries the webhook's shared secret.
const WebhookSecretHeader = "X-Pouchfly-Webhook-Secret"

// Options are a Server's optional dependencies.
type Options struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Gatherer is the supernode's metrics registry, read for the
	// dashboard's byte totals (nil: zero totals).
	Gatherer prometheus.Gatherer
	// SupernodeID names the supernode on the page.
	SupernodeID string
}

// Server serves the API. Create it with New, Register its routes, then
// Run its event loop.
type Server struct {
	cfg     Config
	sched   Snapshotter
	mgr     *preheat.Manager
	opts    Options
	log     *slog.Logger
	token   []byte
	secret  []byte
	metrics *Metrics
	hub     *hub
}

// New builds a server over the scheduler and the preheat manager. It
// reads the token and webhook secret files.
func New(cfg Config, sched Snapshotter, mgr *preheat.Manager, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sched == nil || mgr == nil {
		return nil, fmt.Errorf("httpapi: scheduler and preheat manager are required: %w", errdefs.ErrInvalid)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, sched: sched, mgr: mgr, opts: opts, log: opts.Logger.With("component", "api")}
	s.token = []byte(cfg.Token)
	if cfg.TokenFile != "" {
		b, err := readSecret(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("api token_file: %w", err)
		}
		if len(b) < 16 {
			return nil, fmt.Errorf("api token_file %s: token shorter than 16 characters: %w", cfg.TokenFile, errdefs.ErrInvalid)
		}
		s.token = b
	}
	if cfg.Webhook.Enabled && cfg.Webhook.SecretFile != "" {
		b, err := readSecret(cfg.Webhook.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("api webhook secret_file: %w", err)
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("api webhook secret_file %s is empty: %w", cfg.Webhook.SecretFile, errdefs.ErrInvalid)
		}
		s.secret = b
	}
	s.metrics = newMetrics(sched)
	s.metrics.init()
	s.hub = newHub(s)
	return s, nil
}

func readSecret(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if len(b) > 4096 {
		return nil, fmt.Errorf("%s larger than 4 KiB: %w", file, errdefs.ErrInvalid)
	}
	return []byte(strings.TrimSpace(string(b))), nil
}

// AuthRequired reports whether admin routes need the bearer token.
func (s *Server) AuthRequired() bool { return len(s.token) > 0 }

// Collectors returns the API's metrics and the preheat manager's.
func (s *Server) Collectors() []prometheus.Collector {
	return append(s.metrics.collectors(), s.mgr.Metrics().Collectors()...)
}

// Run pushes dashboard states to the event streams until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if !s.AuthRequired() && !s.cfg.ReadOnly {
		s.log.Warn("admin API open: set api.token or api.token_file (or api.read_only)")
	}
	s.hub.run(ctx)
	return nil
}

// Register adds the routes to mux (which may already serve /metrics).
func (s *Server) Register(mux *http.ServeMux) {
	route := func(pattern, name string, h http.HandlerFunc) {
		mux.Handle(pattern, s.instrument(name, h))
	}
	if s.cfg.Dashboard {
		d := dashboard.Handler()
		route("GET /{$}", "dashboard", d.ServeHTTP)
		route("GET /assets/", "dashboard", d.ServeHTTP)
	}
	route("GET /api/v1/state", "state", s.handleState)
	route("GET /api/v1/events", "events", s.hub.serve)
	route("GET /api/v1/preheats", "preheats", s.handleList)
	route("GET /api/v1/preheats/{id}", "preheat", s.handleGet)
	route("POST /api/v1/preheats", "preheat_create", s.admin(s.handleCreate))
	route("DELETE /api/v1/preheats/{id}", "preheat_cancel", s.admin(s.handleCancel))
	route("POST /api/v1/webhooks/registry", "webhook", s.handleWebhook)
	if _, ok := s.sched.(Releaser); ok {
		route("DELETE /api/v1/quarantine/{host}", "quarantine_release", s.admin(s.handleRelease))
	}
	route("/api/", "other", s.handleUnknown)
}

// known paths, for 405 rather than 404 on a wrong method.
var knownPaths = map[string]string{
	"/api/v1/state": "GET", "/api/v1/events": "GET", "/api/v1/preheats": "GET, POST",
	"/api/v1/webhooks/registry": "POST",
}

func (s *Server) handleUnknown(w http.ResponseWriter, r *http.Request) {
	allow := knownPaths[r.URL.Path]
	if allow == "" && strings.HasPrefix(r.URL.Path, "/api/v1/preheats/") && !strings.Contains(strings.TrimPrefix(r.URL.Path, "/api/v1/preheats/"), "/") {
		allow = "GET, DELETE"
	}
	if allow != "" {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, allow))
		return
	}
	writeError(w, http.StatusNotFound, "no such route: "+r.URL.Path)
}

func (s *Server) instrument(name string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &httpserver.StatusRecorder{ResponseWriter: w}
		h(sw, r)
		s.metrics.requests.WithLabelValues(name, strconv.Itoa(sw.Status())).Inc()
	})
}

// admin guards a route: read-only refuses it, a configured token must be
// presented as a bearer token.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.authorize(w, r) {
			return
		}
		h(w, r)
	}
}

func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.ReadOnly {
		writeError(w, http.StatusForbidden, "this supernode's API is read-only (api.read_only)")
		return false
	}
	if len(s.token) == 0 {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), s.token) != 1 {
		s.metrics.authFailures.Inc()
		s.log.Info("admin request refused: missing or wrong token", "route", r.URL.Path, "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="pouchfly-supernode"`)
		msg := "missing bearer token"
		if ok {
			msg = "wrong bearer token"
		}
		writeError(w, http.StatusUnauthorized, msg)
		return false
	}
	return true
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// writeErr maps an error class to its status.
func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, preheat.ErrFinished):
		code = http.StatusConflict
	case errors.Is(err, errdefs.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, errdefs.ErrForbidden):
		code = http.StatusForbidden
	case errors.Is(err, errdefs.ErrUnavailable):
		code = http.StatusServiceUnavailable
	}
	writeError(w, code, err.Error())
}

// decode reads a bounded JSON body into v, refusing unknown fields;
// false when it answered an error. A JSON Content-Type is required, so
// that a cross-site form cannot post (browsers preflight JSON).
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	return s.decodeJSON(w, r, v, true)
}

// decodeLoose is decode accepting unknown fields.
func (s *Server) decodeLoose(w http.ResponseWriter, r *http.Request, v any) bool {
	return s.decodeJSON(w, r, v, false)
}

func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any, strict bool) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		writeError(w, http.StatusUnsupportedMediaType, "send JSON (Content-Type: application/json)")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxBodyBytes)))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes (api.max_body_bytes)", mbe.Limit))
			return false
		}
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad JSON body: more than one value")
		return false
	}
	return true
}

func (s *Server) handleState(w http.ResponseWriter, r *http.Request) {
	b, err := s.hub.current(time.Now())
	if err != nil {
		writeErr(w, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.Write(b)
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"jobs": s.mgr.List()})
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	j, err := s.mgr.Get(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req preheat.Request
	if !s.decode(w, r, &req) {
		return
	}
	j, err := s.mgr.Create(req, preheat.SourceAPI)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/preheats/"+j.ID)
	writeJSON(w, http.StatusAccepted, j)
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	j, err := s.mgr.Cancel(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("host")
	if id == "" || len(id) > 256 {
		writeError(w, http.StatusBadRequest, "want a host ID")
		return
	}
	if !s.sched.(Releaser).Release(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("host %q is not quarantined", id))
		return
	}
	s.log.Warn("quarantine lifted by an operator", "peer", id, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]string{"released": id})
}

func (s *Server) handleWebhook(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.Webhook.Enabled {
		writeError(w, http.StatusNotFound, "registry webhook disabled (api.webhook.enabled)")
		return
	}
	if !s.authorize(w, r) {
		return
	}
	if len(s.secret) > 0 && subtle.ConstantTimeCompare([]byte(r.Header.Get(WebhookSecretHeader)), s.secret) != 1 {
		s.metrics.authFailures.Inc()
		writeError(w, http.StatusUnauthorized, "missing or wrong "+WebhookSecretHeader)
		return
	}
	// Distribution's envelope has many more fields than a preheat needs:
	// unknown fields are fine here.
	var env preheat.Envelope
	if !s.decodeLoose(w, r, &env) {
		return
	}
	res, err := s.mgr.Notify(env, s.cfg.Webhook)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
