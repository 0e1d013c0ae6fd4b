package preheat

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Media types the resolver understands.
const (
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerForeign  = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// manifestAccept is the Accept header of manifest requests.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest, mediaDockerList, mediaDockerManifest,
}, ", ")

const (
	maxManifestBytes = 4 << 20
	maxTokenBytes    = 1 << 20
	maxIndexDepth    = 2
)

// Credentials authenticate to the upstream: a user name and password
// (Basic, or exchanged for a bearer token at the registry's token
// service), or a bearer token used as is. They are never logged,
// marshalled or kept after the job's orders are sent.
type Credentials struct {
	Username string `json:"username,omitempty" yaml:"username"`
	Password string `json:"password,omitempty" yaml:"password"`
	Token    string `json:"token,omitempty" yaml:"token"`
}

// LogValue keeps credentials out of logs.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.Bool("user", c.Username != ""), slog.Bool("token", c.Token != ""))
}

// String keeps credentials out of fmt output.
func (c Credentials) String() string { return "[credentials redacted]" }

// GoString keeps credentials out of %#v.
func (c Credentials) GoString() string { return c.String() }

func (c Credentials) empty() bool { return c.Username == "" && c.Password == "" && c.Token == "" }

// Blob is one config or layer of a resolved image.
type Blob struct {
	Digest    string   `json:"digest"`
	MediaType string   `json:"media_type,omitempty"`
	Size      int64    `json:"size"`
	Platforms []string `json:"platforms,omitempty"`
}

// Image is a resolved image reference.
type Image struct {
	// Reference as given, normalized ("docker.io/library/alpine:3").
	Reference string
	// BaseURL of the registry (scheme://host[:port]).
	BaseURL string
	// Repository path ("library/alpine").
	Repository string
	// Digest and MediaType of what the reference points at.
	Digest, MediaType string
	// Platforms whose manifests were taken ("" entries for a plain
	// manifest without platform).
	Platforms []string
	// Blobs, distinct by digest: configs and layers.
	Blobs []Blob
	// authorization is the header value that read the manifests; blob
	// fetches use it too. Never logged or marshalled.
	authorization string
}

// BlobURL returns the registry URL of blob d.
func (img *Image) BlobURL(d string) string {
	return img.BaseURL + "/v2/" + img.Repository + "/blobs/" + d
}

// resolver reads manifests from registries.
type resolver struct {
	client     *http.Client
	registries map[string]string
	maxBlobs   int
}

func newResolver(client *http.Client, cfg Config) *resolver {
	r := &resolver{client: client, registries: map[string]string{"docker.io": "https://registry-1.docker.io"}, maxBlobs: cfg.MaxBlobs}
	for _, reg := range cfg.Registries {
		r.registries[reg.Host] = strings.TrimSuffix(reg.URL, "/")
	}
	return r
}

// ParseReference normalizes an image reference ("alpine" →
// "docker.io/library/alpine:latest"). Errors wrap errdefs.ErrInvalid.
func ParseReference(s string) (reference.Named, error) {
	if len(s) > 1024 {
		return nil, fmt.Errorf("image reference longer than 1024: %w", errdefs.ErrInvalid)
	}
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", s, err, errdefs.ErrInvalid)
	}
	return reference.TagNameOnly(named), nil
}

// resolve reads the manifest or index that ref names and lists the blobs
// of the wanted platforms (all when empty; "unknown/unknown" entries, such
// as attestations, are then skipped).
func (r *resolver) resolve(ctx context.Context, ref reference.Named, platforms []ocispec.Platform, creds Credentials) (*Image, error) {
	host := reference.Domain(ref)
	base := r.registries[host]
	if base == "" {
		base = "https://" + host
	}
	img := &Image{Reference: ref.String(), BaseURL: base, Repository: reference.Path(ref)}
	a := &auth{creds: creds, client: r.client}
	if creds.Token != "" {
		a.header = "Bearer " + creds.Token
	}
	var tagOrDigest string
	if c, ok := ref.(reference.Canonical); ok {
		tagOrDigest = c.Digest().String()
	} else if t, ok := ref.(reference.Tagged); ok {
		tagOrDigest = t.Tag()
	}
	body, mt, dgst, err := r.manifest(ctx, a, img, tagOrDigest)
	if err != nil {
		return nil, err
	}
	img.Digest, img.MediaType = dgst, mt
	seen := map[string]int{}
	addBlob := func(d ocispec.Descriptor, platform string) error {
		if d.MediaType == mediaDockerForeign || len(d.URLs) > 0 || strings.Contains(d.MediaType, "nondistributable") {
			return nil // foreign layers come from elsewhere
		}
		ds := d.Digest.String()
		if err := piece.ValidDigest(ds); err != nil {
			return fmt.Errorf("blob %q: only sha256 digests are supported: %w", ds, errdefs.ErrInvalid)
		}
		if d.Size < 0 {
			return fmt.Errorf("blob %s: negative size: %w", ds, errdefs.ErrInvalid)
		}
		if i, ok := seen[ds]; ok {
			if platform != "" && !slices.Contains(img.Blobs[i].Platforms, platform) {
				img.Blobs[i].Platforms = append(img.Blobs[i].Platforms, platform)
			}
			return nil
		}
		if len(img.Blobs) >= r.maxBlobs {
			return fmt.Errorf("image has more than %d blobs (max_blobs): %w", r.maxBlobs, errdefs.ErrInvalid)
		}
		b := Blob{Digest: ds, MediaType: d.MediaType, Size: d.Size}
		if platform != "" {
			b.Platforms = []string{platform}
		}
		seen[ds] = len(img.Blobs)
		img.Blobs = append(img.Blobs, b)
		return nil
	}
	var walk func(body []byte, mt string, platform string, depth int) error
	walk = func(body []byte, mt string, platform string, depth int) error {
		switch mt {
		case ocispec.MediaTypeImageManifest, mediaDockerManifest:
			var m ocispec.Manifest
			if err := json.Unmarshal(body, &m); err != nil {
				return fmt.Errorf("manifest: %v: %w", err, errdefs.ErrInvalid)
			}
			if !slices.Contains(img.Platforms, platform) {
				img.Platforms = append(img.Platforms, platform)
			}
			if err := addBlob(m.Config, platform); err != nil {
				return err
			}
			for _, l := range m.Layers {
				if err := addBlob(l, platform); err != nil {
					return err
				}
			}
			return nil
		case ocispec.MediaTypeImageIndex, mediaDockerList:
			if depth >= maxIndexDepth {
				return fmt.Errorf("index nested deeper than %d: %w", maxIndexDepth, errdefs.ErrInvalid)
			}
			var idx ocispec.Index
			if err := json.Unmarshal(body, &idx); err != nil {
				return fmt.Errorf("index: %v: %w", err, errdefs.ErrInvalid)
			}
			matched := 0
			for _, d := range idx.Manifests {
				if !wanted(platforms, d.Platform) {
					continue
				}
				matched++
				b, cmt, _, err := r.manifest(ctx, a, img, d.Digest.String())
				if err != nil {
					return err
				}
				if err := walk(b, cmt, FormatPlatform(d.Platform), depth+1); err != nil {
					return err
				}
			}
			if matched == 0 {
				return fmt.Errorf("no manifest in the index matches the platforms %v: %w", formatPlatforms(platforms), errdefs.ErrNotFound)
			}
			return nil
		default:
			return fmt.Errorf("unsupported manifest media type %q: %w", mt, errdefs.ErrInvalid)
		}
	}
	if err := walk(body, mt, "", 0); err != nil {
		return nil, err
	}
	img.authorization = a.header
	return img, nil
}

func formatPlatforms(ps []ocispec.Platform) []string {
	out := make([]string, len(ps))
	for i := range ps {
		out[i] = FormatPlatform(&ps[i])
	}
	return out
}

// wanted decides whether an index entry is preheated.
func wanted(platforms []ocispec.Platform, p *ocispec.Platform) bool {
	if len(platforms) == 0 {
		return p == nil || p.OS != "unknown"
	}
	for _, w := range platforms {
		if platformMatches(w, p) {
			return true
		}
	}
	return false
}

// manifest GETs /v2/<repo>/manifests/<ref> and returns its bytes, media
// type and digest (checked against ref when ref is a digest).
func (r *resolver) manifest(ctx context.Context, a *auth, img *Image, ref string) ([]byte, string, string, error) {
	u := img.BaseURL + "/v2/" + img.Repository + "/manifests/" + ref
	resp, err := a.do(ctx, u, func(req *http.Request) { req.Header.Set("Accept", manifestAccept) })
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", "", statusErr("manifest "+img.Repository+":"+ref, resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestBytes+1))
	if err != nil {
		return nil, "", "", fmt.Errorf("manifest %s: %v: %w", ref, err, errdefs.ErrUnavailable)
	}
	if len(body) > maxManifestBytes {
		return nil, "", "", fmt.Errorf("manifest %s larger than %d bytes: %w", ref, maxManifestBytes, errdefs.ErrInvalid)
	}
	sum := sha256.Sum256(body)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	if strings.Contains(ref, ":") && ref != dgst {
		return nil, "", "", fmt.Errorf("manifest %s: content has digest %s: %w", ref, dgst, errdefs.ErrDigestMismatch)
	}
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	mt = strings.TrimSpace(mt)
	if mt == "" || mt == "application/json" || mt == "text/plain" {
		var probe struct {
			MediaType string            `json:"mediaType"`
			Manifests []json.RawMessage `json:"manifests"`
		}
		_ = json.Unmarshal(body, &probe)
		mt = probe.MediaType
		if mt == "" {
			mt = ocispec.MediaTypeImageManifest
			if probe.Manifests != nil {
				mt = ocispec.MediaTypeImageIndex
			}
		}
	}
	return body, mt, dgst, nil
}

// statusErr maps a registry answer to an error class.
func statusErr(what string, resp *http.Response) error {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	class := errdefs.ErrInvalid
	switch {
	case resp.StatusCode == http.StatusNotFound:
		class = errdefs.ErrNotFound
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		class = errdefs.ErrForbidden
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		class = errdefs.ErrUnavailable
	}
	return fmt.Errorf("%s: registry answered %s: %w", what, resp.Status, class)
}

// auth holds one job's authorization against one registry repository.
type auth struct {
	creds  Credentials
	client *http.Client
	header string // current Authorization value
}

// do GETs u with the current authorization; on a 401 it answers the
// challenge once (token service for Bearer, the user's password for
// Basic) and retries.
func (a *auth) do(ctx context.Context, u string, prepare func(*http.Request)) (*http.Response, error) {
	send := func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, fmt.Errorf("registry url: %v: %w", err, errdefs.ErrInvalid)
		}
		prepare(req)
		if a.header != "" {
			req.Header.Set("Authorization", a.header)
		}
		resp, err := a.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("registry %s: %v: %w", redact(u), netErr(err), errdefs.ErrUnavailable)
		}
		return resp, nil
	}
	resp, err := send()
	if err != nil || resp.StatusCode != http.StatusUnauthorized || a.creds.Token != "" {
		return resp, err
	}
	scheme, params := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch scheme {
	case "bearer":
		tok, err := a.token(ctx, params)
		if err != nil {
			return nil, err
		}
		a.header = "Bearer " + tok
	case "basic":
		if a.creds.Username == "" {
			return nil, fmt.Errorf("registry %s wants a user name and password: %w", redact(u), errdefs.ErrForbidden)
		}
		a.header = "Basic " + base64.StdEncoding.EncodeToString([]byte(a.creds.Username+":"+a.creds.Password))
	default:
		return nil, fmt.Errorf("registry %s: 401 with an unsupported challenge %q: %w", redact(u), scheme, errdefs.ErrForbidden)
	}
	return send()
}

// token asks the challenge's realm for a bearer token, with the user's
// password when there is one.
func (a *auth) token(ctx context.Context, params map[string]string) (string, error) {
	realm, err := url.Parse(params["realm"])
	if err != nil || (realm.Scheme != "http" && realm.Scheme != "https") || realm.Host == "" {
		return "", fmt.Errorf("token realm %q: %w", params["realm"], errdefs.ErrUnavailable)
	}
	q := realm.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	for _, s := range strings.Fields(params["scope"]) {
		q.Add("scope", s)
	}
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return "", fmt.Errorf("token request: %v: %w", err, errdefs.ErrInvalid)
	}
	if a.creds.Username != "" {
		req.SetBasicAuth(a.creds.Username, a.creds.Password)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("token service %s: %v: %w", redact(realm.String()), netErr(err), errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", statusErr("token service", resp)
	}
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTokenBytes)).Decode(&tr); err != nil {
		return "", fmt.Errorf("token service answer: %v: %w", err, errdefs.ErrUnavailable)
	}
	if tr.Token == "" {
		tr.Token = tr.AccessToken
	}
	if tr.Token == "" || strings.ContainsAny(tr.Token, "\r\n") {
		return "", fmt.Errorf("token service returned no usable token: %w", errdefs.ErrUnavailable)
	}
	return tr.Token, nil
}

// parseChallenge splits `Bearer realm="…",service="…"` into the lower-case
// scheme and its parameters.
func parseChallenge(h string) (string, map[string]string) {
	h = strings.TrimSpace(h)
	scheme, rest, _ := strings.Cut(h, " ")
	params := map[string]string{}
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, after, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		after = strings.TrimSpace(after)
		var v string
		if strings.HasPrefix(after, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(after); i++ {
				c := after[i]
				if c == '\\' && i+1 < len(after) {
					i++
					b.WriteByte(after[i])
					continue
				}
				if c == '"' {
					break
				}
				b.WriteByte(c)
			}
			v = b.String()
			after = after[min(i+1, len(after)):]
		} else {
			v, after, _ = strings.Cut(after, ",")
			v = strings.TrimSpace(v)
			after = "," + after
		}
		params[k] = v
		after = strings.TrimSpace(after)
		rest = strings.TrimSpace(strings.TrimPrefix(after, ","))
	}
	return strings.ToLower(scheme), params
}

// redact drops user info and the query of a URL for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<bad url>"
	}
	u.User = nil
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}

// netErr drops the URL a *url.Error repeats (the caller names it redacted).
func netErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}
