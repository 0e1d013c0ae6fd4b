package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DefaultHost is pouchd's default listen address.
const DefaultHost = "unix:///var/run/pouchd.sock"

// ErrConflict classifies a 409 answer (a name in use, a running container
// that must be stopped first, an image in use).
var ErrConflict = errors.New("conflict")

// Error is a non-2xx answer of pouchd. errors.Is matches it against the
// errdefs class of its status (404 → ErrNotFound, 400 → ErrInvalid,
// 409 → ErrConflict, 503 → ErrUnavailable, 403 → ErrForbidden).
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is maps the status to an error class.
func (e *Error) Is(target error) bool {
	switch e.Status {
	case http.StatusNotFound:
		return target == errdefs.ErrNotFound
	case http.StatusBadRequest:
		return target == errdefs.ErrInvalid
	case http.StatusConflict:
		return target == ErrConflict
	case http.StatusServiceUnavailable:
		return target == errdefs.ErrUnavailable
	case http.StatusForbidden:
		return target == errdefs.ErrForbidden
	}
	return false
}

// Client talks to pouchd. Safe for concurrent use.
type Client struct {
	network, addr string
	base          string
	http          *http.Client
}

// NewClient returns a client for host: "unix:///path.sock" (or a bare
// path) or "tcp://host:port".
func NewClient(host string) (*Client, error) {
	if host == "" {
		host = DefaultHost
	}
	c := &Client{}
	switch {
	case strings.HasPrefix(host, "unix://"):
		c.network, c.addr = "unix", strings.TrimPrefix(host, "unix://")
	case strings.HasPrefix(host, "/"):
		c.network, c.addr = "unix", host
	case strings.HasPrefix(host, "tcp://"):
		c.network, c.addr = "tcp", strings.TrimPrefix(host, "tcp://")
	default:
		return nil, fmt.Errorf("host %q: want unix:///path or tcp://host:port: %w", host, errdefs.ErrInvalid)
	}
	c.base = "http://pouchd"
	if c.network == "tcp" {
		c.base = "http://" + c.addr
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, c.network, c.addr)
		},
		MaxIdleConns:    8,
		IdleConnTimeout: 30 * time.Second,
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	return c.doHeader(ctx, method, path, q, body, nil)
}

func (c *Client) doHeader(ctx context.Context, method, path string, q url.Values, body any, hdr http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach pouchd at %s://%s (is it running?): %v: %w", c.network, c.addr, err, errdefs.ErrUnavailable)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var er ErrorResponse
	if json.Unmarshal(b, &er) != nil || er.Message == "" {
		er.Message = strings.TrimSpace(string(b))
		if er.Message == "" {
			er.Message = resp.Status
		}
	}
	return &Error{Status: resp.StatusCode, Message: er.Message}
}

func (c *Client) getJSON(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.do(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Version returns GET /version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	return v, c.getJSON(ctx, http.MethodGet, "/version", nil, nil, &v)
}

// Info returns GET /info.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var v Info
	return v, c.getJSON(ctx, http.MethodGet, "/info", nil, nil, &v)
}

// Login checks credentials with the registry (POST /auth) through pouchd,
// which stores nothing. Wrong credentials are an *Error matching
// errdefs.ErrForbidden.
func (c *Client) Login(ctx context.Context, a AuthConfig) (AuthResponse, error) {
	var v AuthResponse
	return v, c.getJSON(ctx, http.MethodPost, "/auth", nil, a, &v)
}

// ImagePull starts an anonymous pull (see ImagePullAuth).
func (c *Client) ImagePull(ctx context.Context, ref string) (io.ReadCloser, error) {
	return c.ImagePullAuth(ctx, ref, nil)
}

// ImagePullAuth starts a pull with the registry credentials auth (nil:
// anonymous), sent in the X-Registry-Auth header; the caller reads the
// JSONMessage stream until EOF (a message with Error set means the pull
// failed) and closes it.
func (c *Client) ImagePullAuth(ctx context.Context, ref string, auth *AuthConfig) (io.ReadCloser, error) {
	var hdr http.Header
	if auth != nil {
		enc, err := EncodeAuth(*auth)
		if err != nil {
			return nil, err
		}
		hdr = http.Header{AuthHeader: {enc}}
	}
	resp, err := c.doHeader(ctx, http.MethodPost, "/images/create", url.Values{"fromImage": {ref}}, nil, hdr)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ImagePullWait pulls ref anonymously (see ImagePullWaitAuth).
func (c *Client) ImagePullWait(ctx context.Context, ref string, fn func(JSONMessage)) error {
	return c.ImagePullWaitAuth(ctx, ref, nil, fn)
}

// ImagePullWaitAuth pulls ref with auth (nil: anonymous) and returns the
// stream's final error, if any; each message goes to fn (may be nil).
func (c *Client) ImagePullWaitAuth(ctx context.Context, ref string, auth *AuthConfig, fn func(JSONMessage)) error {
	rc, err := c.ImagePullAuth(ctx, ref, auth)
	if err != nil {
		return err
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m JSONMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if fn != nil {
			fn(m)
		}
		if m.Error != nil {
			return &Error{Status: m.Error.Code, Message: m.Error.Message}
		}
	}
}

// ImageList returns GET /images/json.
func (c *Client) ImageList(ctx context.Context) ([]ImageSummary, error) {
	var v []ImageSummary
	return v, c.getJSON(ctx, http.MethodGet, "/images/json", nil, nil, &v)
}

// ImageInspect returns GET /images/{name}/json.
func (c *Client) ImageInspect(ctx context.Context, name string) (ImageInspect, error) {
	var v ImageInspect
	return v, c.getJSON(ctx, http.MethodGet, "/images/"+name+"/json", nil, nil, &v)
}

// ImageRemove removes an image (force: even if containers use it).
func (c *Client) ImageRemove(ctx context.Context, name string, force bool) error {
	return c.getJSON(ctx, http.MethodDelete, "/images/"+name, url.Values{"force": {strconv.FormatBool(force)}}, nil, nil)
}

// ContainerCreate creates a container (name may be "").
func (c *Client) ContainerCreate(ctx context.Context, req ContainerCreateRequest, name string) (ContainerCreateResponse, error) {
	var v ContainerCreateResponse
	q := url.Values{}
	if name != "" {
		q.Set("name", name)
	}
	return v, c.getJSON(ctx, http.MethodPost, "/containers/create", q, req, &v)
}

// ContainerStart starts a created or stopped container.
func (c *Client) ContainerStart(ctx context.Context, id string) error {
	return c.getJSON(ctx, http.MethodPost, "/containers/"+id+"/start", nil, nil, nil)
}

// ContainerStop stops a container (SIGTERM, then SIGKILL after timeout;
// nil timeout: the container's or pouchd's default).
func (c *Client) ContainerStop(ctx context.Context, id string, timeout *int) error {
	q := url.Values{}
	if timeout != nil {
		q.Set("t", strconv.Itoa(*timeout))
	}
	return c.getJSON(ctx, http.MethodPost, "/containers/"+id+"/stop", q, nil, nil)
}

// ContainerKill sends a signal ("" = SIGKILL) to a running container.
func (c *Client) ContainerKill(ctx context.Context, id, signal string) error {
	q := url.Values{}
	if signal != "" {
		q.Set("signal", signal)
	}
	return c.getJSON(ctx, http.MethodPost, "/containers/"+id+"/kill", q, nil, nil)
}

// ContainerRemove removes a container (force: kill it first if running).
func (c *Client) ContainerRemove(ctx context.Context, id string, force bool) error {
	return c.getJSON(ctx, http.MethodDelete, "/containers/"+id, url.Values{"force": {strconv.FormatBool(force)}}, nil, nil)
}

// ContainerList returns GET /containers/json (all: stopped ones too).
func (c *Client) ContainerList(ctx context.Context, all bool) ([]Container, error) {
	var v []Container
	q := url.Values{}
	if all {
		q.Set("all", "1")
	}
	return v, c.getJSON(ctx, http.MethodGet, "/containers/json", q, nil, &v)
}

// ContainerInspect returns GET /containers/{id}/json.
func (c *Client) ContainerInspect(ctx context.Context, id string) (ContainerJSON, error) {
	var v ContainerJSON
	return v, c.getJSON(ctx, http.MethodGet, "/containers/"+id+"/json", nil, nil, &v)
}

// LogsOptions selects what ContainerLogs returns.
type LogsOptions struct {
	Follow     bool
	Stdout     bool
	Stderr     bool
	Timestamps bool
	// Tail is "all" or a number of lines.
	Tail string
}

// ContainerLogs returns the container's log: a multiplexed stream (see
// Demux) unless the container has a TTY, then raw bytes. The caller
// closes it; with Follow it ends when the container stops.
func (c *Client) ContainerLogs(ctx context.Context, id string, o LogsOptions) (io.ReadCloser, error) {
	q := url.Values{"follow": {b2s(o.Follow)}, "stdout": {b2s(o.Stdout)}, "stderr": {b2s(o.Stderr)}, "timestamps": {b2s(o.Timestamps)}}
	if o.Tail != "" {
		q.Set("tail", o.Tail)
	}
	resp, err := c.do(ctx, http.MethodGet, "/containers/"+id+"/logs", q, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func b2s(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// ContainerWait blocks until the container reaches condition
// ("not-running", the default; "next-exit"; "removed") and returns its
// exit code.
func (c *Client) ContainerWait(ctx context.Context, id, condition string) (WaitResponse, error) {
	var v WaitResponse
	q := url.Values{}
	if condition != "" {
		q.Set("condition", condition)
	}
	err := c.getJSON(ctx, http.MethodPost, "/containers/"+id+"/wait", q, nil, &v)
	return v, err
}

// ContainerWaitStart sends a wait and returns once pouchd registered it
// (its headers arrived); the returned function blocks for the result.
// Registering before ContainerStart makes "next-exit" race-free.
func (c *Client) ContainerWaitStart(ctx context.Context, id, condition string) (func() (WaitResponse, error), error) {
	q := url.Values{}
	if condition != "" {
		q.Set("condition", condition)
	}
	resp, err := c.do(ctx, http.MethodPost, "/containers/"+id+"/wait", q, nil)
	if err != nil {
		return nil, err
	}
	return func() (WaitResponse, error) {
		defer resp.Body.Close()
		var v WaitResponse
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return v, fmt.Errorf("wait: %w", err)
		}
		if v.Error != nil && v.Error.Message != "" {
			return v, errors.New(v.Error.Message)
		}
		return v, nil
	}, nil
}

// HijackedConn is an attach or exec stream: read the container's output
// from it (multiplexed unless TTY), write its input, CloseWrite to send
// EOF to its stdin.
type HijackedConn struct {
	net.Conn
	r *bufio.Reader
}

// Read reads the output stream.
func (h *HijackedConn) Read(p []byte) (int, error) { return h.r.Read(p) }

// CloseWrite half-closes the connection: the process sees EOF on stdin.
func (h *HijackedConn) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *Client) hijack(ctx context.Context, path string, q url.Values, body any) (*HijackedConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		return nil, fmt.Errorf("cannot reach pouchd at %s://%s (is it running?): %v: %w", c.network, c.addr, err, errdefs.ErrUnavailable)
	}
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			conn.Close()
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(http.MethodPost, u, rd)
	if err != nil {
		conn.Close()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "tcp")
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer conn.Close()
		return nil, readError(resp)
	}
	// Cancelling ctx tears the stream down.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	_ = stop
	return &HijackedConn{Conn: conn, r: br}, nil
}

// AttachOptions selects the streams of ContainerAttach.
type AttachOptions struct {
	Stdin, Stdout, Stderr bool
	// Logs replays the log before the live stream.
	Logs bool
}

// ContainerAttach attaches to a container's streams (before or after it
// starts). The stream ends when the container's output ends.
func (c *Client) ContainerAttach(ctx context.Context, id string, o AttachOptions) (*HijackedConn, error) {
	q := url.Values{"stream": {"1"}, "stdin": {b2s(o.Stdin)}, "stdout": {b2s(o.Stdout)}, "stderr": {b2s(o.Stderr)}, "logs": {b2s(o.Logs)}}
	return c.hijack(ctx, "/containers/"+id+"/attach", q, nil)
}

// ExecCreate prepares a command to run in a running container.
func (c *Client) ExecCreate(ctx context.Context, id string, cfg ExecConfig) (string, error) {
	var v IDResponse
	err := c.getJSON(ctx, http.MethodPost, "/containers/"+id+"/exec", nil, cfg, &v)
	return v.ID, err
}

// ExecStart starts an exec and returns its stream (ends when the process
// exits; its exit code is in ExecInspect). With Detach it returns nil.
func (c *Client) ExecStart(ctx context.Context, execID string, cfg ExecStartConfig) (*HijackedConn, error) {
	if cfg.Detach {
		return nil, c.getJSON(ctx, http.MethodPost, "/exec/"+execID+"/start", nil, cfg, nil)
	}
	return c.hijack(ctx, "/exec/"+execID+"/start", nil, cfg)
}

// ExecInspect returns GET /exec/{id}/json.
func (c *Client) ExecInspect(ctx context.Context, execID string) (ExecInspect, error) {
	var v ExecInspect
	return v, c.getJSON(ctx, http.MethodGet, "/exec/"+execID+"/json", nil, nil, &v)
}

// ExecResize and ContainerResize set a TTY's size.
func (c *Client) ExecResize(ctx context.Context, execID string, h, w uint) error {
	return c.getJSON(ctx, http.MethodPost, "/exec/"+execID+"/resize", url.Values{"h": {strconv.Itoa(int(h))}, "w": {strconv.Itoa(int(w))}}, nil, nil)
}

// ContainerResize sets the size of a container's TTY.
func (c *Client) ContainerResize(ctx context.Context, id string, h, w uint) error {
	return c.getJSON(ctx, http.MethodPost, "/containers/"+id+"/resize", url.Values{"h": {strconv.Itoa(int(h))}, "w": {strconv.Itoa(int(w))}}, nil, nil)
}

// VolumeCreate creates a named volume.
func (c *Client) VolumeCreate(ctx context.Context, req VolumeCreateRequest) (Volume, error) {
	var v Volume
	return v, c.getJSON(ctx, http.MethodPost, "/volumes/create", nil, req, &v)
}

// VolumeList lists volumes.
func (c *Client) VolumeList(ctx context.Context) (VolumeList, error) {
	var v VolumeList
	return v, c.getJSON(ctx, http.MethodGet, "/volumes", nil, nil, &v)
}

// VolumeInspect returns one volume.
func (c *Client) VolumeInspect(ctx context.Context, name string) (Volume, error) {
	var v Volume
	return v, c.getJSON(ctx, http.MethodGet, "/volumes/"+name, nil, nil, &v)
}

// VolumeRemove removes a volume (force: even if the volume is missing).
func (c *Client) VolumeRemove(ctx context.Context, name string, force bool) error {
	return c.getJSON(ctx, http.MethodDelete, "/volumes/"+name, url.Values{"force": {strconv.FormatBool(force)}}, nil, nil)
}
