package registryproxy

import (
	"net"
	"net/http"
	"regexp"
	"strings"
)

// The distribution spec's grammar for what a request names.
var (
	// A repository is path components joined by '/', each
	// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*, 255 characters in all at most.
	nameRe = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	// A tag is [\w][\w.-]{0,127}.
	tagRe = regexp.MustCompile(`^\w[\w.-]{0,127}$`)
	// The only digest the mirror (and the peer's task identity) accepts.
	digestRe = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	// A registry host[:port] (domain name, IPv4 or bracketed IPv6).
	hostRe = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:.]+\])(?::[0-9]{1,5})?$`)
)

const maxNameLen = 255

func validName(s string) bool   { return len(s) <= maxNameLen && nameRe.MatchString(s) }
func validTag(s string) bool    { return tagRe.MatchString(s) }
func validDigest(s string) bool { return digestRe.MatchString(s) }
func validHost(s string) bool {
	if len(s) > 255 || !hostRe.MatchString(s) {
		return false
	}
	if ip, ok := strings.CutPrefix(s, "["); ok {
		// The grammar admits any of [0-9a-f:.] in brackets; only an IPv6
		// address makes a URL host.
		ip, _, _ = strings.Cut(ip, "]")
		if a := net.ParseIP(ip); a == nil || a.To4() != nil && !strings.Contains(ip, ":") {
			return false
		}
	}
	return true
}

// canonicalRegistry lower-cases a registry host and folds Docker Hub's
// aliases into docker.io.
func canonicalRegistry(h string) string {
	h = strings.ToLower(h)
	switch h {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return h
}

// builtinUpstream is where a registry not listed in Mirrors is reached.
func builtinUpstream(registry string) string {
	if registry == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return "https://" + registry
}

// Route kinds, also the `kind` label of the request metrics.
const (
	kindPing      = "ping"
	kindManifest  = "manifest"
	kindBlob      = "blob"
	kindTags      = "tags"
	kindReferrers = "referrers"
	kindUpload    = "upload"
	kindCatalog   = "catalog"
	kindOther     = "other"
)

// route is what a request path names.
type route struct {
	kind string
	name string // repository
	ref  string // tag or digest (manifests), digest (blobs, referrers)
}

// parseRoute splits a /v2/ request path. It refuses, with a 400 OCI
// error, any percent-encoding other than %3A (':'), backslashes, empty,
// "." or ".." segments, and ".." anywhere (legal inside a tag, but no
// client uses that). Names and references are checked here too, except
// for the endpoints the mirror does not serve at all.
func parseRoute(r *http.Request) (route, *ociError) {
	p := r.URL.EscapedPath()
	p = strings.NewReplacer("%3A", ":", "%3a", ":").Replace(p)
	if strings.ContainsAny(p, `%\`) || strings.Contains(p, "..") || strings.Contains(r.URL.RawQuery, "..") {
		return route{}, newError(http.StatusBadRequest, codeNameInvalid, "path holds encoded characters or '..'")
	}
	if p == "/v2" || p == "/v2/" {
		return route{kind: kindPing}, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{kind: kindOther}, newError(http.StatusNotFound, codeUnsupported, "not an OCI distribution endpoint")
	}
	if rest == "_catalog" {
		return route{kind: kindCatalog}, nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	// Uploads first: /v2/<name>/blobs/uploads/ and /v2/<name>/blobs/uploads/<id>.
	for i := 1; i+1 < n; i++ {
		if segs[i] == "blobs" && segs[i+1] == "uploads" && i+3 >= n {
			return route{kind: kindUpload}, nil
		}
	}
	if n >= 2 && segs[n-2] == "blobs" && segs[n-1] == "uploads" {
		return route{kind: kindUpload}, nil
	}
	for _, s := range segs {
		if s == "" || s == "." {
			return route{}, newError(http.StatusBadRequest, codeNameInvalid, "empty or '.' path segment")
		}
	}
	if n < 3 {
		return route{kind: kindOther}, newError(http.StatusNotFound, codeUnsupported, "not an OCI distribution endpoint")
	}
	rt := route{name: strings.Join(segs[:n-2], "/"), ref: segs[n-1]}
	switch segs[n-2] {
	case "manifests":
		rt.kind = kindManifest
	case "blobs":
		rt.kind = kindBlob
	case "referrers":
		rt.kind = kindReferrers
	case "tags":
		if segs[n-1] != "list" {
			return route{kind: kindOther}, newError(http.StatusNotFound, codeUnsupported, "not an OCI distribution endpoint")
		}
		rt.kind, rt.ref = kindTags, ""
	default:
		return route{kind: kindOther}, newError(http.StatusNotFound, codeUnsupported, "not an OCI distribution endpoint")
	}
	return rt, nil
}

// validate checks the route's repository name and reference.
func (rt route) validate() *ociError {
	if !validName(rt.name) {
		return newError(http.StatusBadRequest, codeNameInvalid, "invalid repository name")
	}
	switch rt.kind {
	case kindBlob, kindReferrers:
		if !validDigest(rt.ref) {
			return newError(http.StatusBadRequest, codeDigestInvalid, "invalid digest: want sha256:<64 hex>")
		}
	case kindManifest:
		if strings.Contains(rt.ref, ":") {
			if !validDigest(rt.ref) {
				return newError(http.StatusBadRequest, codeDigestInvalid, "invalid digest: want sha256:<64 hex>")
			}
		} else if !validTag(rt.ref) {
			return newError(http.StatusBadRequest, codeTagInvalid, "invalid tag")
		}
	}
	return nil
}

// isDigest reports whether a manifest reference is a digest.
func (rt route) isDigest() bool { return strings.HasPrefix(rt.ref, "sha256:") }
