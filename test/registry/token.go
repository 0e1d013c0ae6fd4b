package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenPath is where the token server answers, on the registry's own
// address: GET with optional HTTP basic auth (docker, skopeo, containerd
// without credentials) and POST with the OAuth2 password / refresh_token
// form (containerd with credentials).
const TokenPath = "/token"

// tokenServer issues registry bearer tokens signed by its own ES256 key,
// whose self-signed certificate the registry trusts (rootcertbundle).
//
// Policy: pull is granted on any repository that isPrivate says is public,
// to anyone, and on every repository to a user with a valid password; push,
// delete and "*" only to users; registry:catalog:* only to users. Wrong
// credentials are refused with 401; anonymous requests for a private
// repository get a token without that access (as Docker Hub does), so the
// registry answers 401 insufficient_scope.
type tokenServer struct {
	users     map[string]string
	isPrivate func(string) bool
	ttl       time.Duration
	signer    jose.Signer
	certPEM   []byte

	mu      sync.Mutex
	refresh map[string]string // refresh token → user
}

func newTokenServer(users map[string]string, isPrivate func(string) bool, ttl time.Duration) (*tokenServer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: Issuer},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("token server: cert: %w", err)
	}
	// The access controller trusts the keys of the bundle's certificates
	// by their JWK thumbprint, which must be the JWT's "kid".
	kid := token.GetJWKThumbprint(&key.PublicKey)
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("token server: signer: %w", err)
	}
	return &tokenServer{
		users:     users,
		isPrivate: isPrivate,
		ttl:       ttl,
		signer:    signer,
		certPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		refresh:   map[string]string{},
	}, nil
}

type tokenResponse struct {
	Token        string `json:"token"`
	AccessToken  string `json:"access_token"`
	ExpiresIn    int    `json:"expires_in"`
	IssuedAt     string `json:"issued_at"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

func (s *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var (
		user, refreshUser string
		authed            bool
		scopes            []string
		wantRefresh       bool
	)
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		for _, sc := range q["scope"] {
			scopes = append(scopes, strings.Fields(sc)...)
		}
		wantRefresh = q.Get("offline_token") == "true"
		if u, p, ok := r.BasicAuth(); ok {
			if !s.check(u, p) {
				s.deny(w, "invalid username or password")
				return
			}
			user, authed = u, true
		}
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			tokenError(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		scopes = strings.Fields(r.PostForm.Get("scope"))
		switch gt := r.PostForm.Get("grant_type"); gt {
		case "password":
			u, p := r.PostForm.Get("username"), r.PostForm.Get("password")
			if !s.check(u, p) {
				s.deny(w, "invalid username or password")
				return
			}
			user, authed, wantRefresh = u, true, true
		case "refresh_token":
			s.mu.Lock()
			u, ok := s.refresh[r.PostForm.Get("refresh_token")]
			s.mu.Unlock()
			if !ok {
				s.deny(w, "invalid refresh token")
				return
			}
			user, authed, refreshUser = u, true, u
		default:
			tokenError(w, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q", gt))
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		tokenError(w, http.StatusMethodNotAllowed, "invalid_request", "GET or POST")
		return
	}

	now := time.Now()
	var access []*token.ResourceActions
	for _, sc := range scopes {
		ra, ok := parseScope(sc)
		if !ok {
			tokenError(w, http.StatusBadRequest, "invalid_scope", fmt.Sprintf("malformed scope %q", sc))
			return
		}
		if granted := s.grant(authed, ra); len(granted) > 0 {
			ra.Actions = granted
			access = append(access, ra)
		}
	}
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	claims := token.ClaimSet{
		Issuer:     Issuer,
		Subject:    user,
		Audience:   token.AudienceList{Service},
		Expiration: now.Add(s.ttl).Unix(),
		NotBefore:  now.Add(-time.Second).Unix(),
		IssuedAt:   now.Unix(),
		JWTID:      hex.EncodeToString(jti),
		Access:     access,
	}
	raw, err := jwt.Signed(s.signer).Claims(claims).Serialize()
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	resp := tokenResponse{
		Token:       raw,
		AccessToken: raw,
		ExpiresIn:   int(s.ttl / time.Second),
		IssuedAt:    now.UTC().Format(time.RFC3339),
	}
	if wantRefresh && authed && refreshUser == "" {
		rt := make([]byte, 24)
		_, _ = rand.Read(rt)
		resp.RefreshToken = hex.EncodeToString(rt)
		s.mu.Lock()
		s.refresh[resp.RefreshToken] = user
		s.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(resp)
}

func (s *tokenServer) check(user, password string) bool {
	want, ok := s.users[user]
	return ok && subtle.ConstantTimeCompare([]byte(want), []byte(password)) == 1
}

func (s *tokenServer) deny(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", Service))
	tokenError(w, http.StatusUnauthorized, "invalid_grant", msg)
}

// grant returns the subset of ra.Actions the caller gets.
func (s *tokenServer) grant(authed bool, ra *token.ResourceActions) []string {
	var out []string
	for _, a := range ra.Actions {
		switch {
		case authed:
			out = append(out, a)
		case ra.Type == "repository" && a == "pull" && !s.isPrivate(ra.Name):
			out = append(out, a)
		}
	}
	return out
}

// parseScope parses "type[(class)]:name:action,action"; the name may hold
// colons (a registry host with a port).
func parseScope(sc string) (*token.ResourceActions, bool) {
	first := strings.IndexByte(sc, ':')
	last := strings.LastIndexByte(sc, ':')
	if first <= 0 || last <= first+1 || last == len(sc)-1 {
		return nil, false
	}
	typ, class := sc[:first], ""
	if i := strings.IndexByte(typ, '('); i > 0 && strings.HasSuffix(typ, ")") {
		typ, class = typ[:i], typ[i+1:len(typ)-1]
	}
	actions := strings.Split(sc[last+1:], ",")
	actions = slices.DeleteFunc(actions, func(a string) bool { return a == "" })
	slices.Sort(actions)
	actions = slices.Compact(actions)
	return &token.ResourceActions{Type: typ, Class: class, Name: sc[first+1 : last], Actions: actions}, true
}

func tokenError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": msg, "details": msg})
}
