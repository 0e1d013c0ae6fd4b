package cdn

import (
	"fmt"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Config tunes the seeder. The supernode's config nests it under `cdn:`.
type Config struct {
	// MaxBytes is the size the store may reach before the least recently
	// used complete tasks are evicted.
	MaxBytes int64 `yaml:"max_bytes"`
	// GCInterval is how often the store's size is checked (it is also
	// checked after every completed seed).
	GCInterval time.Duration `yaml:"gc_interval"`
	// OriginTimeout bounds each origin attempt from dialing until the
	// response headers arrive.
	OriginTimeout time.Duration `yaml:"origin_timeout"`
	// StallTimeout aborts an attempt (and resumes it) when the origin sends
	// no body bytes for this long.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// Retries is how many more attempts a task gets after a failure without
	// progress (5xx, network error, broken or stalled body). An attempt that
	// stores at least one piece resets the count.
	Retries int `yaml:"retries"`
	// BackoffBase is the wait before the first retry; it doubles on each
	// further retry (with jitter) up to BackoffMax.
	BackoffBase time.Duration `yaml:"backoff_base"`
	// BackoffMax caps the wait between retries.
	BackoffMax time.Duration `yaml:"backoff_max"`
	// MaxConcurrent bounds the origin fetches running at once; further
	// tasks wait for a slot (Seed still returns at once).
	MaxConcurrent int `yaml:"max_concurrent"`
	// MaxContentLength refuses content larger than this.
	MaxContentLength int64 `yaml:"max_content_length"`
}

// DefaultConfig returns the defaults: a 10 GiB cache, 30s origin and stall
// timeouts, 5 retries backing off from 200ms to 10s, 16 concurrent origin
// fetches, content up to 64 GiB.
func DefaultConfig() Config {
	return Config{
		MaxBytes:         10 << 30,
		GCInterval:       time.Minute,
		OriginTimeout:    30 * time.Second,
		StallTimeout:     30 * time.Second,
		Retries:          5,
		BackoffBase:      200 * time.Millisecond,
		BackoffMax:       10 * time.Second,
		MaxConcurrent:    16,
		MaxContentLength: 64 << 30,
	}
}

// Validate reports the first invalid field, wrapping errdefs.ErrInvalid.
func (c Config) Validate() error {
	bad := func(field string, v any, want string) error {
		return fmt.Errorf("cdn config: %s = %v: %s: %w", field, v, want, errdefs.ErrInvalid)
	}
	switch {
	case c.MaxBytes <= 0:
		return bad("max_bytes", c.MaxBytes, "must be positive")
	case c.GCInterval <= 0:
		return bad("gc_interval", c.GCInterval, "must be positive")
	case c.OriginTimeout <= 0:
		return bad("origin_timeout", c.OriginTimeout, "must be positive")
	case c.StallTimeout <= 0:
		return bad("stall_timeout", c.StallTimeout, "must be positive")
	case c.Retries < 0:
		return bad("retries", c.Retries, "must not be negative")
	case c.BackoffBase <= 0:
		return bad("backoff_base", c.BackoffBase, "must be positive")
	case c.BackoffMax < c.BackoffBase:
		return bad("backoff_max", c.BackoffMax, "must be at least backoff_base")
	case c.MaxConcurrent < 1:
		return bad("max_concurrent", c.MaxConcurrent, "must be at least 1")
	case c.MaxContentLength <= 0:
		return bad("max_content_length", c.MaxContentLength, "must be positive")
	case c.MaxContentLength > int64(piece.MaxCount)*piece.MinSize:
		return bad("max_content_length", c.MaxContentLength, fmt.Sprintf("must be at most %d", int64(piece.MaxCount)*piece.MinSize))
	}
	return nil
}
