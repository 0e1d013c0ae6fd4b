package tasktoken

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// fuzzKey is a fixed key so that committed seeds stay meaningful.
var fuzzKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

// FuzzVerify presents arbitrary tokens to an upload server: only tokens
// the supernode signed for this task, unexpired, pass; everything else is
// ErrForbidden; nothing panics.
func FuzzVerify(f *testing.F) {
	s, _ := NewSigner(fuzzKey)
	pub := s.Public()
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, tok, task string, signTask, signHost string, ttl int64) {
		if ttl%2 == 0 && len(signTask) < 128 && len(signHost) < 128 {
			// Half the time the token is a real one, maybe for another task.
			tok = s.Sign(signTask, signHost, now.Add(time.Duration(ttl%3600)*time.Second))
		}
		host, err := Verify(pub, tok, task, now)
		if err != nil {
			if !errors.Is(err, errdefs.ErrForbidden) {
				t.Fatalf("Verify: %v is not ErrForbidden", err)
			}
			return
		}
		if len(tok) > MaxLen {
			t.Fatalf("accepted a %d-byte token", len(tok))
		}
		// Only a token this signer made for this task passes.
		if _, err := Verify(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)), tok, task, now); err == nil {
			t.Fatal("a token verified under a zero key")
		}
		if ttl%2 == 0 && (signTask != task || signHost != host) {
			t.Fatalf("token for (%q, %q) accepted for %q as %q", signTask, signHost, task, host)
		}
	})
}
