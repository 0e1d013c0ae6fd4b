// Package tasktoken signs and verifies the short-lived tokens that let a
// host fetch a task's pieces from upload servers. The supernode signs with
// an ed25519 private key; every upload server verifies with the public key
// it got in Welcome, so no upload server can mint tokens.
//
// Format: base64url(payload) "." base64url(signature), payload =
// "v1|<task>|<host>|<expiry unix seconds>".
package tasktoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// MaxLen bounds a token presented by a client.
const MaxLen = 512

// Signer mints tokens. It is safe for concurrent use.
type Signer struct{ key ed25519.PrivateKey }

// NewSigner returns a signer with a fresh key (nil key) or the given one.
func NewSigner(key ed25519.PrivateKey) (*Signer, error) {
	if key == nil {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		key = k
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("token key: %w", errdefs.ErrInvalid)
	}
	return &Signer{key: key}, nil
}

// Public returns the verification key.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Sign returns a token for host to fetch task until expiry.
func (s *Signer) Sign(task, host string, expiry time.Time) string {
	payload := "v1|" + task + "|" + host + "|" + strconv.FormatInt(expiry.Unix(), 10)
	sig := ed25519.Sign(s.key, []byte(payload))
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// Verify checks tok for task at time now with public key pub and returns the
// host it was issued to. Any failure wraps errdefs.ErrForbidden.
func Verify(pub ed25519.PublicKey, tok, task string, now time.Time) (host string, err error) {
	host, _, err = verify(pub, tok, task, now)
	return host, err
}

// verify is Verify, also returning the token's expiry (unix seconds).
func verify(pub ed25519.PublicKey, tok, task string, now time.Time) (host string, exp int64, err error) {
	if len(pub) != ed25519.PublicKeySize {
		return "", 0, fmt.Errorf("no token key: %w", errdefs.ErrForbidden)
	}
	if tok == "" || len(tok) > MaxLen {
		return "", 0, fmt.Errorf("missing or oversized task token: %w", errdefs.ErrForbidden)
	}
	p64, s64, ok := strings.Cut(tok, ".")
	if !ok {
		return "", 0, fmt.Errorf("malformed task token: %w", errdefs.ErrForbidden)
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	sig, err2 := base64.RawURLEncoding.DecodeString(s64)
	if err1 != nil || err2 != nil || !ed25519.Verify(pub, payload, sig) {
		return "", 0, fmt.Errorf("bad task token signature: %w", errdefs.ErrForbidden)
	}
	parts := strings.Split(string(payload), "|")
	if len(parts) != 4 || parts[0] != "v1" {
		return "", 0, fmt.Errorf("malformed task token: %w", errdefs.ErrForbidden)
	}
	if parts[1] != task {
		return "", 0, fmt.Errorf("task token is for another task: %w", errdefs.ErrForbidden)
	}
	exp, err = strconv.ParseInt(parts[3], 10, 64)
	if err != nil || now.Unix() > exp {
		return "", 0, fmt.Errorf("task token expired: %w", errdefs.ErrForbidden)
	}
	return parts[2], exp, nil
}

// Cache remembers tokens that verified, so an upload server checks each
// token's signature once rather than on every piece request (a host uses
// one token for all of a task's pieces; the ed25519 check was ~5% of an
// agent's CPU in a 32-host swarm). A cached token is still checked for
// its task and expiry on every use. The zero value is ready; it holds at
// most cacheSize tokens.
type Cache struct {
	mu sync.Mutex
	m  map[string]cached
}

type cached struct {
	task, host string
	exp        int64
}

const cacheSize = 4096

// Verify is the package's Verify, with the signature check cached.
func (c *Cache) Verify(pub ed25519.PublicKey, tok, task string, now time.Time) (string, error) {
	key := string(pub) + tok // only tokens that verified are cached
	c.mu.Lock()
	e, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		switch {
		case e.task != task:
			return "", fmt.Errorf("task token is for another task: %w", errdefs.ErrForbidden)
		case now.Unix() > e.exp:
			return "", fmt.Errorf("task token expired: %w", errdefs.ErrForbidden)
		}
		return e.host, nil
	}
	host, exp, err := verify(pub, tok, task, now)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= cacheSize {
		c.m = make(map[string]cached) // crude but bounded: tokens are short-lived
	}
	c.m[key] = cached{task: task, host: host, exp: exp}
	c.mu.Unlock()
	return host, nil
}
