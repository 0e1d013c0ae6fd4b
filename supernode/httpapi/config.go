package httpapi

import (
	"fmt"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// Config is the `api` section of supernode.yaml: the admin API, the
// dashboard and its event stream, served on http_listen beside /metrics.
type Config struct {
	// Token is the bearer token the admin routes (preheat create/cancel,
	// webhook) require: `Authorization: Bearer <token>`. With neither
	// token nor token_file the admin API is open to whoever reaches
	// http_listen. Prefer token_file.
	Token string `yaml:"token"`
	// TokenFile holds the token (surrounding white space ignored); read
	// at start. It wins over token.
	TokenFile string `yaml:"token_file"`
	// ReadOnly refuses every admin route (403) and hides admin actions in
	// the dashboard.
	ReadOnly bool `yaml:"read_only"`
	// Dashboard serves the web page at / (the JSON API stays on).
	Dashboard bool `yaml:"dashboard"`
	// MaxBodyBytes bounds request bodies (413 beyond).
	MaxBodyBytes units.Bytes `yaml:"max_body_bytes"`
	// EventsInterval is the period of the dashboard's event stream.
	EventsInterval time.Duration `yaml:"events_interval"`
	// EventsMaxClients bounds concurrent event streams (503 beyond).
	EventsMaxClients int `yaml:"events_max_clients"`
	// EventsMaxAge ends a stream after this long; browsers reconnect by
	// themselves.
	EventsMaxAge time.Duration `yaml:"events_max_age"`
	// MaxTasks and MaxPeers bound the tasks, and the hosts per task, a
	// dashboard state lists.
	MaxTasks int `yaml:"max_tasks"`
	MaxPeers int `yaml:"max_peers"`
	// Preheat tunes preheat jobs.
	Preheat preheat.Config `yaml:"preheat"`
	// Webhook tunes the registry notification endpoint.
	Webhook preheat.WebhookConfig `yaml:"webhook"`
}

// DefaultConfig returns the defaults: dashboard on, admin API open
// (set token or token_file in production), webhook off.
func DefaultConfig() Config {
	return Config{
		Dashboard:        true,
		MaxBodyBytes:     1 << 20,
		EventsInterval:   time.Second,
		EventsMaxClients: 32,
		EventsMaxAge:     10 * time.Minute,
		MaxTasks:         200,
		MaxPeers:         100,
		Preheat:          preheat.DefaultConfig(),
		Webhook:          preheat.DefaultWebhookConfig(),
	}
}

// Validate reports the first invalid field (errdefs.ErrInvalid).
func (c Config) Validate() error {
	bad := func(f string, args ...any) error {
		return fmt.Errorf("api config: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	switch {
	case c.MaxBodyBytes < 1<<10 || c.MaxBodyBytes > 64<<20:
		return bad("max_body_bytes %v not in 1KiB..64MiB", c.MaxBodyBytes)
	case c.EventsInterval < 100*time.Millisecond || c.EventsInterval > time.Minute:
		return bad("events_interval %v not in 100ms..1m", c.EventsInterval)
	case c.EventsMaxClients < 1 || c.EventsMaxClients > 10000:
		return bad("events_max_clients %d not in 1..10000", c.EventsMaxClients)
	case c.EventsMaxAge < time.Second:
		return bad("events_max_age %v < 1s", c.EventsMaxAge)
	case c.MaxTasks < 1 || c.MaxPeers < 1:
		return bad("max_tasks and max_peers must be ≥ 1")
	case len(c.Token) > 0 && len(c.Token) < 16:
		return bad("token shorter than 16 characters")
	}
	if err := c.Preheat.Validate(); err != nil {
		return err
	}
	return c.Webhook.Validate()
}
