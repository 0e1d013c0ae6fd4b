package supernode

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/cdn"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/scheduler"
)

// Admitter receives authorization answers (*scheduler.Scheduler).
type Admitter interface {
	Admit(taskID, hostID string, e *schedulerv1.TaskError)
}

// AuthConfig tunes the origin check that admits a host to a protected task.
type AuthConfig struct {
	// PositiveTTL caches an accepted (URL, credentials) pair.
	PositiveTTL time.Duration `yaml:"positive_ttl"`
	// NegativeTTL caches a refused pair.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// Timeout bounds one origin check.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConcurrent bounds origin checks in flight.
	MaxConcurrent int `yaml:"max_concurrent"`
	// MaxEntries bounds the cache.
	MaxEntries int `yaml:"max_entries"`
}

// DefaultAuthConfig returns the defaults.
func DefaultAuthConfig() AuthConfig {
	return AuthConfig{PositiveTTL: time.Minute, NegativeTTL: 5 * time.Second, Timeout: 15 * time.Second, MaxConcurrent: 32, MaxEntries: 100000}
}

// AuthSeeder is the supernode's scheduler.Seeder: it seeds through the CDN
// and implements scheduler.Authorizer by asking the origin, with the
// joining host's own credentials, whether it may read the content (HEAD,
// or a one-byte GET when HEAD is not allowed). So a host never gets a task
// (token, digests, parents) of protected content the origin would refuse
// it, even when other hosts already hold every piece. Answers are cached
// briefly per (URL, credentials hash); credentials are never logged or
// kept in clear.
type AuthSeeder struct {
	CDNSeeder
	cfg    AuthConfig
	client *http.Client
	clk    clock.Clock
	log    *slog.Logger
	admit  Admitter
	sem    chan struct{}

	mu    sync.Mutex
	cache map[string]authEntry
}

type authEntry struct {
	err     *schedulerv1.TaskError // nil: admitted
	expires time.Time
}

var (
	_ scheduler.Seeder     = (*AuthSeeder)(nil)
	_ scheduler.Authorizer = (*AuthSeeder)(nil)
)

// NewAuthSeeder returns a seeder over c that checks joins with client.
// Set the Admitter with SetAdmitter before the first Authorize.
func NewAuthSeeder(c *cdn.CDN, client *http.Client, cfg AuthConfig, clk clock.Clock, log *slog.Logger) *AuthSeeder {
	if clk == nil {
		clk = clock.Real{}
	}
	return &AuthSeeder{CDNSeeder: CDNSeeder{CDN: c}, cfg: cfg, client: client, clk: clk, log: log,
		sem: make(chan struct{}, max(1, cfg.MaxConcurrent)), cache: map[string]authEntry{}}
}

// SetAdmitter sets where answers go.
func (a *AuthSeeder) SetAdmitter(ad Admitter) { a.admit = ad }

// authKey hashes the URL and every header (credentials included).
func authKey(req scheduler.SeedRequest) string {
	h := sha256.New()
	h.Write([]byte(req.URL))
	keys := make([]string, 0, len(req.Headers))
	for k := range req.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "\x00%s\x00%s", http.CanonicalHeaderKey(k), req.Headers[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Authorize checks req against the origin in the background and answers
// through the Admitter. It never blocks.
func (a *AuthSeeder) Authorize(ctx context.Context, req scheduler.SeedRequest) {
	key := authKey(req)
	now := a.clk.Now()
	a.mu.Lock()
	e, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(e.expires) {
		a.answer(req, e.err)
		return
	}
	go func() {
		select {
		case a.sem <- struct{}{}:
			defer func() { <-a.sem }()
		case <-ctx.Done():
			a.answer(req, &schedulerv1.TaskError{TaskId: req.TaskID, Code: schedulerv1.ErrorCode_ERROR_UNAVAILABLE, Message: "supernode shutting down"})
			return
		}
		terr := a.check(ctx, req)
		ttl := a.cfg.PositiveTTL
		if terr != nil {
			ttl = a.cfg.NegativeTTL
		}
		// Transient failures are not cached.
		if terr == nil || terr.Code != schedulerv1.ErrorCode_ERROR_UNAVAILABLE {
			a.mu.Lock()
			if len(a.cache) >= a.cfg.MaxEntries {
				a.sweepLocked(a.clk.Now())
			}
			if len(a.cache) < a.cfg.MaxEntries {
				a.cache[key] = authEntry{err: terr, expires: a.clk.Now().Add(ttl)}
			}
			a.mu.Unlock()
		}
		a.answer(req, terr)
	}()
}

func (a *AuthSeeder) sweepLocked(now time.Time) {
	for k, e := range a.cache {
		if !now.Before(e.expires) {
			delete(a.cache, k)
		}
	}
}

func (a *AuthSeeder) answer(req scheduler.SeedRequest, e *schedulerv1.TaskError) {
	if e != nil {
		e = &schedulerv1.TaskError{TaskId: req.TaskID, Code: e.Code, Message: e.Message, OriginStatus: e.OriginStatus, OriginHeaders: e.OriginHeaders}
		if a.log != nil {
			a.log.Info("host refused by the origin", "task", req.TaskID, "peer", req.HostID, "origin_status", e.OriginStatus)
		}
	}
	if a.admit != nil {
		a.admit.Admit(req.TaskID, req.HostID, e)
	}
}

// check asks the origin whether req's credentials may read req.URL.
func (a *AuthSeeder) check(ctx context.Context, req scheduler.SeedRequest) *schedulerv1.TaskError {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	resp, err := a.do(ctx, http.MethodHead, req)
	if err == nil && resp.StatusCode == http.StatusMethodNotAllowed {
		resp.Body.Close()
		resp, err = a.do(ctx, http.MethodGet, req)
	}
	if err != nil {
		return &schedulerv1.TaskError{TaskId: req.TaskID, Code: schedulerv1.ErrorCode_ERROR_UNAVAILABLE, Message: "origin check: " + cdn.RedactError(err)}
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	return TaskError(req.TaskID, &cdn.OriginError{Status: resp.StatusCode, Header: safeHeaders(resp.Header),
		Msg: fmt.Sprintf("origin refused the host: %s", resp.Status)})
}

func (a *AuthSeeder) do(ctx context.Context, method string, req scheduler.SeedRequest) (*http.Response, error) {
	r, err := http.NewRequestWithContext(ctx, method, req.URL, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range req.Headers {
		r.Header.Set(k, v)
	}
	if method == http.MethodGet {
		r.Header.Set("Range", "bytes=0-0")
	}
	return a.client.Do(r)
}

// safeHeaders keeps what a client needs to retry with credentials.
func safeHeaders(h http.Header) http.Header {
	out := http.Header{}
	if v := h.Get("WWW-Authenticate"); v != "" {
		out.Set("WWW-Authenticate", v)
	}
	return out
}
