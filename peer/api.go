package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
)

// The local API: HTTP over the agent's unix socket, used by dfget and the
// registry mirror. Only local users who can open the socket reach it.
//
//	POST /v1/download  DownloadRequest → 200 and the content (chunked),
//	                   X-Pouchfly-Length, X-Pouchfly-Task; an error met
//	                   mid-stream arrives in the X-Pouchfly-Error trailer.
//	GET  /v1/tasks     []TaskInfo
//	GET  /healthz      ok

// DownloadRequest is the body of POST /v1/download.
type DownloadRequest struct {
	URL          string              `json:"url"`
	Header       map[string][]string `json:"header,omitempty"`
	Digest       string              `json:"digest,omitempty"`
	Range        string              `json:"range,omitempty"`
	NoBackSource bool                `json:"no_back_source,omitempty"`
}

// APIError is the JSON body of a failed API call and the value of the
// X-Pouchfly-Error trailer.
type APIError struct {
	Message         string `json:"error"`
	Class           string `json:"class"`
	OriginStatus    int    `json:"origin_status,omitempty"`
	WWWAuthenticate string `json:"www_authenticate,omitempty"`
}

func (e *APIError) Error() string { return e.Message }

// Unwrap maps the class back to its errdefs sentinel.
func (e *APIError) Unwrap() error { return classes[e.Class] }

var classes = map[string]error{
	"not_found": errdefs.ErrNotFound, "invalid": errdefs.ErrInvalid, "unavailable": errdefs.ErrUnavailable,
	"forbidden": errdefs.ErrForbidden, "digest_mismatch": errdefs.ErrDigestMismatch, "no_space": errdefs.ErrNoSpace,
}

// ToAPIError classifies err for the wire.
func ToAPIError(err error) *APIError {
	e := &APIError{Message: err.Error(), Class: "unknown"}
	for name, c := range classes {
		if errors.Is(err, c) {
			e.Class = name
			break
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		e.Class = "unavailable"
	}
	var te *TaskError
	if errors.As(err, &te) {
		e.OriginStatus = te.OriginStatus
		e.WWWAuthenticate = te.OriginHeader.Get("WWW-Authenticate")
	}
	return e
}

func (e *APIError) status() int {
	switch e.Class {
	case "not_found":
		return http.StatusNotFound
	case "invalid":
		return http.StatusBadRequest
	case "forbidden":
		return http.StatusForbidden
	case "no_space":
		return http.StatusInsufficientStorage
	case "digest_mismatch":
		return http.StatusBadGateway
	}
	return http.StatusServiceUnavailable
}

func writeAPIError(w http.ResponseWriter, err error) {
	e := ToAPIError(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status())
	json.NewEncoder(w).Encode(e)
}

// APIHandler returns the local API.
func (p *Peer) APIHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		ts, err := p.Tasks(r.Context())
		if err != nil {
			writeAPIError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(ts)
	})
	mux.HandleFunc("POST /v1/download", p.serveDownload)
	return mux
}

func (p *Peer) serveDownload(w http.ResponseWriter, r *http.Request) {
	var req DownloadRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeAPIError(w, fmt.Errorf("download request: %v: %w", err, errdefs.ErrInvalid))
		return
	}
	s, err := p.Download(r.Context(), Request{URL: req.URL, Header: req.Header, Digest: req.Digest, Range: req.Range, NoBackSource: req.NoBackSource})
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer s.Close()
	meta, err := s.Meta(r.Context())
	if err != nil {
		writeAPIError(w, err)
		return
	}
	w.Header().Set("Trailer", "X-Pouchfly-Error, X-Pouchfly-Received")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Pouchfly-Task", s.TaskID())
	w.Header().Set("X-Pouchfly-Length", strconv.FormatInt(meta.ContentLength, 10))
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 1<<20)
	_, err = io.CopyBuffer(w, struct{ io.Reader }{s}, buf)
	if err != nil {
		b, _ := json.Marshal(ToAPIError(err))
		w.Header().Set("X-Pouchfly-Error", string(b))
	}
	b, _ := json.Marshal(s.Received())
	w.Header().Set("X-Pouchfly-Received", string(b))
}

// ServeAPI serves the local API on the unix socket path until ctx ends.
// A stale socket file is replaced; the socket is made 0660.
func (p *Peer) ServeAPI(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("api socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("api socket %s is in use by another agent: %w", path, errdefs.ErrInvalid)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	os.Chmod(path, 0o660)
	lim := httpserver.DefaultLimits()
	lim.MaxHeaderBytes = 64 << 10
	// Download requests are small JSON bodies, sent at once.
	srv := lim.Server(httpserver.BoundBody(p.APIHandler(), 1<<20, 30*time.Second), p.log.With("component", "api"))
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err = srv.Serve(ln)
	os.Remove(path)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Client talks to an agent's local API.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the agent on the unix socket path.
func NewClient(path string) *Client {
	return &Client{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
		ReadBufferSize:     1 << 20,
	}}}
}

// Ping reports whether the agent answers within the timeout.
func (c *Client) Ping(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/healthz", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent: %v: %w", err, errdefs.ErrUnavailable)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent health: %s: %w", resp.Status, errdefs.ErrUnavailable)
	}
	return nil
}

// Download is one download through the agent.
type Download struct {
	// Length is the content length.
	Length int64
	// TaskID is the task's ID.
	TaskID string
	body   io.ReadCloser
	resp   *http.Response
}

// Read reads content; an error the agent met mid-stream is returned in
// place of io.EOF.
func (d *Download) Read(b []byte) (int, error) {
	n, err := d.body.Read(b)
	if err == io.EOF {
		if v := d.resp.Trailer.Get("X-Pouchfly-Error"); v != "" {
			var e APIError
			if json.Unmarshal([]byte(v), &e) == nil {
				return n, &e
			}
			return n, fmt.Errorf("agent: %s: %w", v, errdefs.ErrUnavailable)
		}
	}
	return n, err
}

// Received returns the per-source byte counts the agent reported at the
// end of the stream (nil before).
func (d *Download) Received() map[string]int64 {
	var m map[string]int64
	json.Unmarshal([]byte(d.resp.Trailer.Get("X-Pouchfly-Received")), &m)
	return m
}

// Close releases the download.
func (d *Download) Close() error { return d.body.Close() }

// Download starts a download; read the content from the result.
func (c *Client) Download(ctx context.Context, r DownloadRequest) (*Download, error) {
	b, _ := json.Marshal(r)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/download", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent: %v: %w", err, errdefs.ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e APIError
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e); err != nil || e.Class == "" {
			return nil, fmt.Errorf("agent: %s: %w", resp.Status, errdefs.ErrUnavailable)
		}
		return nil, &e
	}
	n, _ := strconv.ParseInt(resp.Header.Get("X-Pouchfly-Length"), 10, 64)
	return &Download{Length: n, TaskID: resp.Header.Get("X-Pouchfly-Task"), body: resp.Body, resp: resp}, nil
}
