package preheat

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Config tunes preheat jobs (the `api.preheat` section of supernode.yaml).
type Config struct {
	// Registries maps the registry host of an image reference
	// ("registry:5000", "docker.io") to the base URL the supernode reaches
	// it at ("http://10.0.0.5:5000"). A host not listed is reached at
	// https://<host> (docker.io at https://registry-1.docker.io).
	Registries []Registry `yaml:"registries"`
	// MaxJobs bounds the jobs kept in memory; the oldest finished job is
	// forgotten first. Jobs do not survive a restart.
	MaxJobs int `yaml:"max_jobs"`
	// MaxActiveJobs bounds the jobs resolving or running at once; beyond,
	// creating one is refused (unavailable).
	MaxActiveJobs int `yaml:"max_active_jobs"`
	// MaxBlobs bounds the blobs (configs and layers) of one job.
	MaxBlobs int `yaml:"max_blobs"`
	// ResolveTimeout bounds resolving the manifest or index (token dance
	// included).
	ResolveTimeout time.Duration `yaml:"resolve_timeout"`
	// JobTimeout: a job not complete after this long fails.
	JobTimeout time.Duration `yaml:"job_timeout"`
	// FailureGrace: a job whose every unfinished host has left its tasks
	// or the cluster for this long fails without waiting for JobTimeout.
	FailureGrace time.Duration `yaml:"failure_grace"`
	// PollInterval is how often running jobs' progress is read from the
	// scheduler.
	PollInterval time.Duration `yaml:"poll_interval"`
	// FilterQuery lists URL query keys left out of the task identity of a
	// plain-URL preheat; keep it equal to the agents' peer.filter_query so
	// they join the same task.
	FilterQuery []string `yaml:"filter_query"`
}

// Registry maps a reference's registry host to a base URL.
type Registry struct {
	// Host as written in image references, host[:port].
	Host string `yaml:"host"`
	// URL is scheme://host[:port] (no /v2/).
	URL string `yaml:"url"`
}

// WebhookConfig tunes the registry notification endpoint
// (`api.webhook`).
type WebhookConfig struct {
	// Enabled turns POST /api/v1/webhooks/registry on (off: 404).
	Enabled bool `yaml:"enabled"`
	// SecretFile holds a shared secret the registry must send in the
	// X-Pouchfly-Webhook-Secret header (in addition to the API bearer token
	// when one is configured); "" checks no secret.
	SecretFile string `yaml:"secret_file"`
	// RegistryHost names the registry in the preheated references; ""
	// takes each event's request.host (the host the image was pushed to).
	RegistryHost string `yaml:"registry_host"`
	// Scope of webhook preheats: "all" or "cdn".
	Scope string `yaml:"scope"`
	// Selector limits webhook preheats to matching hosts (k=v,k2=v2).
	Selector string `yaml:"selector"`
	// Platforms to preheat from a pushed index (empty: all).
	Platforms []string `yaml:"platforms"`
	// CredentialsFile holds the upstream credentials for webhook
	// preheats, YAML or JSON: {username, password} or {token}; read at
	// each event, never logged. "" pulls anonymously.
	CredentialsFile string `yaml:"credentials_file"`
	// Untagged also preheats manifests pushed by digest only (the
	// per-platform manifests of an index are pushed that way before it).
	Untagged bool `yaml:"untagged"`
	// DedupeWindow ignores a push of the same repository and digest seen
	// within this window (registries resend events on retries).
	DedupeWindow time.Duration `yaml:"dedupe_window"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Registries:     []Registry{},
		MaxJobs:        200,
		MaxActiveJobs:  16,
		MaxBlobs:       1000,
		ResolveTimeout: time.Minute,
		JobTimeout:     time.Hour,
		FailureGrace:   time.Minute,
		PollInterval:   time.Second,
		FilterQuery:    []string{"Signature", "Expires", "X-Amz-Signature", "X-Amz-Date", "X-Amz-Credential", "X-Amz-Security-Token"},
	}
}

// DefaultWebhookConfig returns the defaults (disabled).
func DefaultWebhookConfig() WebhookConfig {
	return WebhookConfig{Scope: ScopeAll, Platforms: []string{}, DedupeWindow: time.Minute}
}

// Validate reports the first invalid field (errdefs.ErrInvalid).
func (c Config) Validate() error {
	bad := func(f string, args ...any) error {
		return fmt.Errorf("preheat config: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	for _, r := range c.Registries {
		if r.Host == "" || strings.ContainsAny(r.Host, "/ ") {
			return bad("registries: host %q", r.Host)
		}
		u, err := url.Parse(r.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil {
			return bad("registries: url %q for %s: want scheme://host[:port]", r.URL, r.Host)
		}
	}
	switch {
	case c.MaxJobs < 1:
		return bad("max_jobs %d < 1", c.MaxJobs)
	case c.MaxActiveJobs < 1 || c.MaxActiveJobs > c.MaxJobs:
		return bad("max_active_jobs %d not in 1..max_jobs", c.MaxActiveJobs)
	case c.MaxBlobs < 1:
		return bad("max_blobs %d < 1", c.MaxBlobs)
	case c.ResolveTimeout <= 0 || c.JobTimeout <= 0 || c.FailureGrace <= 0:
		return bad("resolve_timeout, job_timeout and failure_grace must be > 0")
	case c.PollInterval <= 0 || c.PollInterval > time.Minute:
		return bad("poll_interval %v not in (0,1m]", c.PollInterval)
	}
	return nil
}

// Validate reports the first invalid field (errdefs.ErrInvalid).
func (c WebhookConfig) Validate() error {
	bad := func(f string, args ...any) error {
		return fmt.Errorf("webhook config: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	if c.Scope != ScopeAll && c.Scope != ScopeCDN {
		return bad("scope %q: want %s or %s", c.Scope, ScopeAll, ScopeCDN)
	}
	if _, err := ParseSelector(c.Selector); err != nil {
		return bad("selector: %v", err)
	}
	if c.Scope == ScopeCDN && c.Selector != "" {
		return bad("a selector needs scope %s", ScopeAll)
	}
	for _, p := range c.Platforms {
		if _, err := ParsePlatform(p); err != nil {
			return bad("platforms: %v", err)
		}
	}
	if c.RegistryHost != "" && strings.ContainsAny(c.RegistryHost, "/ ") {
		return bad("registry_host %q", c.RegistryHost)
	}
	if c.DedupeWindow < 0 {
		return bad("dedupe_window %v < 0", c.DedupeWindow)
	}
	return nil
}
