package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// Client calls a supernode's API (the `supernode preheat` command, tests).
type Client struct {
	// Base is the supernode's HTTP address, http://host:8080.
	Base string
	// Token is the API bearer token ("" sends none).
	Token string
	// HTTP defaults to a client with a 30 s timeout.
	HTTP *http.Client
}

// Error is an API error answer; it matches the errdefs class of its
// status with errors.Is.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("supernode API: HTTP %d: %s", e.Status, e.Message) }

// Is maps the status to errdefs classes.
func (e *Error) Is(target error) bool {
	switch e.Status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusConflict:
		return target == errdefs.ErrInvalid
	case http.StatusNotFound:
		return target == errdefs.ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return target == errdefs.ErrForbidden
	case http.StatusServiceUnavailable:
		return target == errdefs.ErrUnavailable
	}
	return false
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.Base, "/")+path, body)
	if err != nil {
		return fmt.Errorf("supernode API: %v: %w", err, errdefs.ErrInvalid)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("supernode API: %w: %w", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("supernode API: %w: %w", errdefs.ErrUnavailable, err)
	}
	if resp.StatusCode >= 300 {
		var eb errorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(b[:min(len(b), 200)]))
		}
		return &Error{Status: resp.StatusCode, Message: eb.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("supernode API: bad answer: %v: %w", err, errdefs.ErrUnavailable)
		}
	}
	return nil
}

// Create starts a preheat job.
func (c *Client) Create(ctx context.Context, req preheat.Request) (preheat.Job, error) {
	var j preheat.Job
	err := c.do(ctx, http.MethodPost, "/api/v1/preheats", req, &j)
	return j, err
}

// Get returns a job with its progress.
func (c *Client) Get(ctx context.Context, id string) (preheat.Job, error) {
	var j preheat.Job
	err := c.do(ctx, http.MethodGet, "/api/v1/preheats/"+url.PathEscape(id), nil, &j)
	return j, err
}

// List returns the jobs, newest first.
func (c *Client) List(ctx context.Context) ([]preheat.Job, error) {
	var out struct {
		Jobs []preheat.Job `json:"jobs"`
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/preheats", nil, &out)
	return out.Jobs, err
}

// Cancel cancels a job.
func (c *Client) Cancel(ctx context.Context, id string) (preheat.Job, error) {
	var j preheat.Job
	err := c.do(ctx, http.MethodDelete, "/api/v1/preheats/"+url.PathEscape(id), nil, &j)
	return j, err
}

// Finished reports whether a job state is final.
func Finished(state string) bool {
	return state == preheat.StateSucceeded || state == preheat.StateFailed || state == preheat.StateCancelled
}

// Wait polls a job every interval until it ends (or ctx does), calling
// progress with each view; it returns the final view.
func (c *Client) Wait(ctx context.Context, id string, interval time.Duration, progress func(preheat.Job)) (preheat.Job, error) {
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		j, err := c.Get(ctx, id)
		if err != nil {
			return j, err
		}
		if progress != nil {
			progress(j)
		}
		if Finished(j.State) {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-tk.C:
		}
	}
}
