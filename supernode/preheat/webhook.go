package preheat

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gopkg.in/yaml.v3"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Envelope is distribution's notification body
// (application/vnd.docker.distribution.events.v1+json); only the fields a
// preheat needs are decoded.
type Envelope struct {
	Events []Event `json:"events"`
}

// Event is one registry notification.
type Event struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Size       int64  `json:"size"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host string `json:"host"`
	} `json:"request"`
}

// WebhookResult says what a notification caused.
type WebhookResult struct {
	// Jobs lists the jobs started.
	Jobs []string `json:"jobs"`
	// Ignored counts events that are not manifest pushes (or untagged
	// ones, unless configured), Duplicates those seen within the dedupe
	// window.
	Ignored    int `json:"ignored"`
	Duplicates int `json:"duplicates"`
	// Errors lists events that could not be preheated.
	Errors []string `json:"errors,omitempty"`
}

// maxEvents bounds the events handled from one envelope.
const maxEvents = 256

func isManifestType(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, mediaDockerList, mediaDockerManifest:
		return true
	}
	return false
}

// Notify preheats what an envelope says was pushed: each "push" of a
// manifest or index with a tag (or any, with cfg.Untagged), by digest, as
// cfg says (scope, selector, platforms, credentials file). Events of one
// repository and digest within cfg.DedupeWindow are preheated once. A
// malformed envelope wraps errdefs.ErrInvalid; per-event failures are in
// the result.
func (m *Manager) Notify(env Envelope, cfg WebhookConfig) (WebhookResult, error) {
	res := WebhookResult{Jobs: []string{}}
	if len(env.Events) > maxEvents {
		return res, fmt.Errorf("webhook: more than %d events: %w", maxEvents, errdefs.ErrInvalid)
	}
	var creds *Credentials
	now := m.clk.Now()
	for _, ev := range env.Events {
		t := ev.Target
		if ev.Action != "push" || !isManifestType(t.MediaType) || (t.Tag == "" && !cfg.Untagged) {
			res.Ignored++
			m.metrics.Webhook.WithLabelValues("ignored").Inc()
			continue
		}
		host := cfg.RegistryHost
		if host == "" {
			host = ev.Request.Host
		}
		if host == "" || t.Repository == "" || piece.ValidDigest(t.Digest) != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("event %s: no registry host, repository or sha256 digest", trunc(ev.ID, 64)))
			continue
		}
		ref := host + "/" + t.Repository
		if t.Tag != "" {
			ref += ":" + t.Tag
		}
		ref += "@" + t.Digest
		key := host + "/" + t.Repository + "@" + t.Digest
		m.mu.Lock()
		for k, at := range m.dedupe {
			if now.Sub(at) >= cfg.DedupeWindow {
				delete(m.dedupe, k)
			}
		}
		_, dup := m.dedupe[key]
		if !dup && cfg.DedupeWindow > 0 && len(m.dedupe) < 10000 {
			m.dedupe[key] = now
		}
		m.mu.Unlock()
		if dup {
			res.Duplicates++
			m.metrics.Webhook.WithLabelValues("duplicate").Inc()
			continue
		}
		if creds == nil {
			c, err := ReadCredentialsFile(cfg.CredentialsFile)
			if err != nil {
				return res, err
			}
			creds = &c
		}
		j, err := m.Create(Request{Image: ref, Platforms: cfg.Platforms, Scope: cfg.Scope, Selector: cfg.Selector, Credentials: creds}, SourceWebhook)
		if err != nil {
			m.mu.Lock()
			delete(m.dedupe, key)
			m.mu.Unlock()
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", ref, err))
			continue
		}
		m.metrics.Webhook.WithLabelValues("preheated").Inc()
		res.Jobs = append(res.Jobs, j.ID)
	}
	return res, nil
}

// ReadCredentialsFile reads {username, password} or {token} (YAML or
// JSON) from file; "" is anonymous. Errors never quote the content.
func ReadCredentialsFile(file string) (Credentials, error) {
	var c Credentials
	if file == "" {
		return c, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return c, fmt.Errorf("credentials file: %w", err)
	}
	if len(b) > 64<<10 {
		return c, fmt.Errorf("credentials file %s larger than 64 KiB: %w", file, errdefs.ErrInvalid)
	}
	s := strings.TrimSpace(string(b))
	if strings.HasPrefix(s, "{") {
		err = json.Unmarshal([]byte(s), &c)
	} else {
		err = yaml.Unmarshal([]byte(s), &c)
	}
	if err != nil {
		return Credentials{}, fmt.Errorf("credentials file %s: not YAML/JSON {username, password} or {token}: %w", file, errdefs.ErrInvalid)
	}
	return c, nil
}
