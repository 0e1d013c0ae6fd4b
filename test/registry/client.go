package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Credentials are a registry user name and password; the zero value is
// anonymous.
type Credentials struct {
	Username, Password string
}

// ManifestAccept is the Accept header Client sends for manifests: OCI and
// Docker schema 2 images and indexes.
var ManifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageIndex,
	ocispec.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// Client is a small OCI distribution API client for tests: it answers
// Bearer challenges through the token server (with its credentials, if
// any) and Basic challenges with them, caching tokens per scope. It is safe
// for concurrent use.
type Client struct {
	base  *url.URL
	http  *http.Client
	creds Credentials

	mu     sync.Mutex
	tokens map[string]string // repository name → last bearer token
}

// NewClient returns a client for the registry at baseURL (scheme://host,
// no /v2/). httpClient nil means http.DefaultClient.
func NewClient(baseURL string, creds Credentials, httpClient *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("registry client: bad base URL %q: %w", baseURL, errdefs.ErrInvalid)
	}
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: u, http: httpClient, creds: creds, tokens: map[string]string{}}, nil
}

// StatusError is a registry answer other than the one expected. It
// matches errdefs.ErrNotFound (404), ErrForbidden (401, 403), ErrInvalid
// (other 4xx) or ErrUnavailable (5xx) with errors.Is.
type StatusError struct {
	Method, URL string
	StatusCode  int
	// Challenge is the WWW-Authenticate header, if any.
	Challenge string
	// Body is the start of the response body.
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.URL, e.StatusCode, strings.TrimSpace(e.Body))
}

// Is maps the status to the shared error classes.
func (e *StatusError) Is(target error) bool {
	switch {
	case e.StatusCode == http.StatusNotFound:
		return target == errdefs.ErrNotFound
	case e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden:
		return target == errdefs.ErrForbidden
	case e.StatusCode >= 500:
		return target == errdefs.ErrUnavailable
	case e.StatusCode >= 400:
		return target == errdefs.ErrInvalid
	}
	return false
}

func statusError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return &StatusError{
		Method:     resp.Request.Method,
		URL:        resp.Request.URL.Redacted(),
		StatusCode: resp.StatusCode,
		Challenge:  resp.Header.Get("WWW-Authenticate"),
		Body:       string(body),
	}
}

// Do sends method to path (or an absolute URL, e.g. an upload Location)
// with body, authenticating as the registry asks. repo names the
// repository the request is about ("" for /v2/ itself); it keys the token
// cache. The caller closes the response body. Responses are returned
// whatever their status, except that a 401 is retried once with fresh
// credentials.
func (c *Client) Do(ctx context.Context, repo, method, path string, header http.Header, body []byte) (*http.Response, error) {
	u, err := c.base.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("registry client: %q: %w", path, errdefs.ErrInvalid)
	}
	send := func(authz string) (*http.Response, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, fmt.Errorf("registry client: %s %s: %w: %w", method, u.Redacted(), errdefs.ErrUnavailable, err)
		}
		return resp, nil
	}
	c.mu.Lock()
	tok := c.tokens[repo]
	c.mu.Unlock()
	authz := ""
	if tok != "" {
		authz = "Bearer " + tok
	}
	resp, err := send(authz)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	scheme, params := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	switch strings.ToLower(scheme) {
	case "bearer":
		tok, terr := c.fetchToken(ctx, params)
		if terr != nil {
			_ = resp.Body.Close()
			return nil, terr
		}
		_ = resp.Body.Close()
		c.mu.Lock()
		c.tokens[repo] = tok
		c.mu.Unlock()
		return send("Bearer " + tok)
	case "basic":
		if c.creds.Username == "" {
			return resp, nil
		}
		_ = resp.Body.Close()
		req := &http.Request{Header: http.Header{}}
		req.SetBasicAuth(c.creds.Username, c.creds.Password)
		return send(req.Header.Get("Authorization"))
	}
	return resp, nil
}

// fetchToken asks the challenge's realm for a token (GET, basic auth with
// the client's credentials when it has some).
func (c *Client) fetchToken(ctx context.Context, params map[string]string) (string, error) {
	realm, err := url.Parse(params["realm"])
	if err != nil || realm.Host == "" {
		return "", fmt.Errorf("registry client: bad token realm %q: %w", params["realm"], errdefs.ErrInvalid)
	}
	q := realm.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	for _, sc := range strings.Fields(params["scope"]) {
		q.Add("scope", sc)
	}
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return "", err
	}
	if c.creds.Username != "" {
		req.SetBasicAuth(c.creds.Username, c.creds.Password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("registry client: token: %w: %w", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("registry client: token: %w", statusError(resp))
	}
	var tr tokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return "", fmt.Errorf("registry client: token: %w", err)
	}
	if tr.Token == "" {
		tr.Token = tr.AccessToken
	}
	if tr.Token == "" {
		return "", fmt.Errorf("registry client: token server sent no token: %w", errdefs.ErrUnavailable)
	}
	return tr.Token, nil
}

// parseChallenge splits a WWW-Authenticate value into its scheme and
// parameters (quoted values may contain commas and spaces).
func parseChallenge(h string) (string, map[string]string) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	params := map[string]string{}
	for rest = strings.TrimSpace(rest); rest != ""; {
		eq := strings.IndexByte(rest, '=')
		if eq < 0 {
			break
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = rest[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				b.WriteByte(rest[i])
			}
			val, rest = b.String(), rest[min(i+1, len(rest)):]
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			val, rest = strings.TrimSpace(rest[:end]), rest[end:]
		}
		params[key] = val
		rest = strings.TrimLeft(rest, ", ")
	}
	return scheme, params
}

// Ping checks GET /v2/ answers 200 (after authenticating).
func (c *Client) Ping(ctx context.Context) error {
	resp, err := c.Do(ctx, "", http.MethodGet, "/v2/", nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(resp)
	}
	return nil
}

// GetManifest fetches repo's manifest or index by tag or digest and
// returns its bytes, media type and digest (verified when ref is one).
func (c *Client) GetManifest(ctx context.Context, repo, ref string) ([]byte, string, digest.Digest, error) {
	resp, err := c.Do(ctx, repo, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, http.Header{"Accept": {ManifestAccept}}, nil)
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", "", statusError(resp)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", "", fmt.Errorf("registry client: manifest %s:%s: %w", repo, ref, err)
	}
	d := digest.FromBytes(data)
	if want, err := digest.Parse(ref); err == nil && want != d {
		return nil, "", "", fmt.Errorf("registry client: manifest %s@%s is %s: %w", repo, ref, d, errdefs.ErrDigestMismatch)
	}
	return data, resp.Header.Get("Content-Type"), d, nil
}

// GetBlob fetches a whole blob and checks its digest.
func (c *Client) GetBlob(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	resp, err := c.Do(ctx, repo, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("registry client: blob %s: %w", d, err)
	}
	if got := digest.FromBytes(data); got != d {
		return nil, fmt.Errorf("registry client: blob %s is %s: %w", d, got, errdefs.ErrDigestMismatch)
	}
	return data, nil
}

// BlobExists tells whether repo has blob d (HEAD).
func (c *Client) BlobExists(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	resp, err := c.Do(ctx, repo, http.MethodHead, "/v2/"+repo+"/blobs/"+d.String(), nil, nil)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, statusError(resp)
}

// PushBlob uploads data as blob d to repo in one request (POST to start
// the upload, PUT with the digest), unless the registry has it already.
func (c *Client) PushBlob(ctx context.Context, repo string, d digest.Digest, data []byte) error {
	if ok, err := c.BlobExists(ctx, repo, d); err != nil {
		return err
	} else if ok {
		return nil
	}
	resp, err := c.Do(ctx, repo, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if err != nil {
		return err
	}
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		defer resp.Body.Close()
		return statusError(resp)
	}
	_ = resp.Body.Close()
	u, err := c.base.Parse(loc)
	if err != nil {
		return fmt.Errorf("registry client: bad upload location %q: %w", loc, errdefs.ErrInvalid)
	}
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	resp, err = c.Do(ctx, repo, http.MethodPut, u.String(),
		http.Header{"Content-Type": {"application/octet-stream"}}, data)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return statusError(resp)
	}
	return nil
}

// PutManifest uploads a manifest or index under ref (tag or digest).
func (c *Client) PutManifest(ctx context.Context, repo, ref, mediaType string, data []byte) error {
	resp, err := c.Do(ctx, repo, http.MethodPut, "/v2/"+repo+"/manifests/"+ref,
		http.Header{"Content-Type": {mediaType}}, data)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return statusError(resp)
	}
	return nil
}

// Push uploads img to repo: every blob, each platform manifest by digest,
// then the index under tag (tag "" pushes the index by digest only).
func (c *Client) Push(ctx context.Context, repo, tag string, img *Image) error {
	for _, b := range img.Blobs {
		if err := c.PushBlob(ctx, repo, b.Descriptor.Digest, b.Data); err != nil {
			return fmt.Errorf("push %s blob %s: %w", repo, b.Descriptor.Digest, err)
		}
	}
	for _, p := range img.Platforms {
		if err := c.PutManifest(ctx, repo, p.Descriptor.Digest.String(), p.Descriptor.MediaType, p.ManifestBytes); err != nil {
			return fmt.Errorf("push %s manifest: %w", repo, err)
		}
	}
	ref := tag
	if ref == "" {
		ref = img.IndexDescriptor.Digest.String()
	}
	if err := c.PutManifest(ctx, repo, ref, img.IndexDescriptor.MediaType, img.IndexBytes); err != nil {
		return fmt.Errorf("push %s index: %w", repo, err)
	}
	return nil
}

// Push uploads img to registryURL as repo:tag with creds (see
// Client.Push), using http.DefaultClient.
func Push(ctx context.Context, registryURL, repo, tag string, img *Image, creds Credentials) error {
	c, err := NewClient(registryURL, creds, nil)
	if err != nil {
		return err
	}
	return c.Push(ctx, repo, tag, img)
}
