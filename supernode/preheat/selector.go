package preheat

import (
	"fmt"
	"regexp"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/scheduler"
)

// Scopes of a preheat job.
const (
	// ScopeAll sends the image to every active host (or those matching the
	// job's selector).
	ScopeAll = "all"
	// ScopeCDN only seeds the supernode's CDN.
	ScopeCDN = "cdn"
)

// Selector is a conjunction of label requirements: "zone=a,tier!=db".
// The key "zone" matches a host's zone when its labels have no "zone".
type Selector []Requirement

// Requirement is one k=v (or k!=v) term.
type Requirement struct {
	Key, Value string
	Not        bool
}

var labelRe = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

// ParseSelector parses comma-separated k=v or k!=v terms; "" selects
// every host. Errors wrap errdefs.ErrInvalid.
func ParseSelector(s string) (Selector, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if len(s) > 1024 {
		return nil, fmt.Errorf("selector longer than 1024: %w", errdefs.ErrInvalid)
	}
	var sel Selector
	for _, term := range strings.Split(s, ",") {
		term = strings.TrimSpace(term)
		var r Requirement
		k, v, ok := strings.Cut(term, "!=")
		if ok {
			r.Not = true
		} else if k, v, ok = strings.Cut(term, "="); !ok {
			return nil, fmt.Errorf("selector term %q: want key=value or key!=value: %w", term, errdefs.ErrInvalid)
		}
		r.Key, r.Value = strings.TrimSpace(k), strings.TrimSpace(v)
		if !labelRe.MatchString(r.Key) || (r.Value != "" && !labelRe.MatchString(r.Value)) {
			return nil, fmt.Errorf("selector term %q: keys and values are 1-63 of [A-Za-z0-9._/-]: %w", term, errdefs.ErrInvalid)
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// String renders the selector canonically.
func (s Selector) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		op := "="
		if r.Not {
			op = "!="
		}
		parts[i] = r.Key + op + r.Value
	}
	return strings.Join(parts, ",")
}

// Matches reports whether host h satisfies every requirement.
func (s Selector) Matches(h scheduler.HostSnapshot) bool {
	for _, r := range s {
		v, ok := h.Labels[r.Key]
		if !ok && r.Key == "zone" {
			v = h.Zone
		}
		if (v == r.Value) == r.Not {
			return false
		}
	}
	return true
}

// ParsePlatform parses os/arch[/variant] ("linux/arm64/v8").
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	if len(parts) < 2 || len(parts) > 3 {
		return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]: %w", s, errdefs.ErrInvalid)
	}
	for _, p := range parts {
		if !labelRe.MatchString(p) {
			return ocispec.Platform{}, fmt.Errorf("platform %q: %w", s, errdefs.ErrInvalid)
		}
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// FormatPlatform renders p as os/arch[/variant].
func FormatPlatform(p *ocispec.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// platformMatches: a wanted platform without a variant matches every
// variant; arm64's default variant v8 matches an unspecified one.
func platformMatches(want ocispec.Platform, have *ocispec.Platform) bool {
	if have == nil || want.OS != have.OS || want.Architecture != have.Architecture {
		return false
	}
	if want.Variant == "" || want.Variant == have.Variant {
		return true
	}
	return want.Architecture == "arm64" && want.Variant == "v8" && have.Variant == ""
}
