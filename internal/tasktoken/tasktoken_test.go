package tasktoken

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestSignVerify(t *testing.T) {
	s, err := NewSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewSigner(nil)
	now := time.Unix(1_800_000_000, 0)
	tok := s.Sign("task1", "hostA", now.Add(time.Minute))
	if h, err := Verify(s.Public(), tok, "task1", now); err != nil || h != "hostA" {
		t.Fatalf("Verify = %q, %v", h, err)
	}
	tampered := []byte(tok)
	tampered[3] ^= 1
	for name, c := range map[string]struct {
		tok, task string
		now       time.Time
		key       []byte
	}{
		"expired":        {tok, "task1", now.Add(2 * time.Minute), s.Public()},
		"other task":     {tok, "task2", now, s.Public()},
		"other key":      {tok, "task1", now, other.Public()},
		"tampered":       {string(tampered), "task1", now, s.Public()},
		"empty":          {"", "task1", now, s.Public()},
		"no dot":         {"abc", "task1", now, s.Public()},
		"oversized":      {strings.Repeat("a", MaxLen+1), "task1", now, s.Public()},
		"no key":         {tok, "task1", now, nil},
		"garbage base64": {"!!!.???", "task1", now, s.Public()},
	} {
		if _, err := Verify(c.key, c.tok, c.task, c.now); !errors.Is(err, errdefs.ErrForbidden) {
			t.Errorf("%s: err = %v, want ErrForbidden", name, err)
		}
	}
	if _, err := NewSigner([]byte("short")); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("short key: %v", err)
	}
}

// A Cache gives Verify's answers: a cached token is still refused for
// another task, after its expiry, under another key; tampered and
// malformed tokens never pass; the cache stays bounded.
func TestCacheVerify(t *testing.T) {
	s, _ := NewSigner(nil)
	other, _ := NewSigner(nil)
	now := time.Unix(1_800_000_000, 0)
	tok := s.Sign("task1", "hostA", now.Add(time.Minute))
	var c Cache
	for i := 0; i < 2; i++ { // cold, then cached
		if h, err := c.Verify(s.Public(), tok, "task1", now); err != nil || h != "hostA" {
			t.Fatalf("round %d: Verify = %q, %v", i, h, err)
		}
	}
	if len(c.m) != 1 {
		t.Fatalf("cache holds %d tokens, want 1", len(c.m))
	}
	tampered := []byte(tok)
	tampered[len(tampered)-3] ^= 1
	for name, tc := range map[string]struct {
		tok, task string
		now       time.Time
		key       []byte
	}{
		"expired":    {tok, "task1", now.Add(2 * time.Minute), s.Public()},
		"other task": {tok, "task2", now, s.Public()},
		"other key":  {tok, "task1", now, other.Public()},
		"tampered":   {string(tampered), "task1", now, s.Public()},
		"no key":     {tok, "task1", now, nil},
		"empty":      {"", "task1", now, s.Public()},
	} {
		if _, err := c.Verify(tc.key, tc.tok, tc.task, tc.now); !errors.Is(err, errdefs.ErrForbidden) {
			t.Errorf("%s: err = %v, want ErrForbidden", name, err)
		}
	}
	for i := 0; i < cacheSize+10; i++ {
		tk := s.Sign("task1", "hostA", now.Add(time.Duration(i+1)*time.Second+time.Minute))
		if _, err := c.Verify(s.Public(), tk, "task1", now); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.m) > cacheSize {
		t.Fatalf("cache grew to %d tokens", len(c.m))
	}
}
