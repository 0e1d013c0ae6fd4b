package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestKeyedPerClient(t *testing.T) {
	now := time.Unix(1000, 0)
	k := New(10, 5, 100, func() time.Time { return now })
	for i := 0; i < 5; i++ {
		if ok, _ := k.Allow("bad"); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, retry := k.Allow("bad")
	if ok || retry <= 0 || retry > 200*time.Millisecond {
		t.Fatalf("beyond the burst: ok=%v retry=%v, want refused with ~100ms", ok, retry)
	}
	// Another client is untouched.
	if ok, _ := k.Allow("good"); !ok {
		t.Fatal("a second client was refused")
	}
	// Refusals do not consume tokens: after 100 ms one request passes.
	now = now.Add(100 * time.Millisecond)
	if ok, _ := k.Allow("bad"); !ok {
		t.Fatal("the bucket did not refill")
	}
}

func TestKeyedBoundedMemory(t *testing.T) {
	k := New(1, 1, 10, nil)
	rel, ok := k.Acquire("busy", 1)
	if !ok {
		t.Fatal("acquire")
	}
	for i := 0; i < 1000; i++ {
		k.Allow(fmt.Sprint(i))
	}
	if n := k.Len(); n > 10 {
		t.Fatalf("%d clients remembered, max 10", n)
	}
	// The client with a request in flight was kept.
	if _, ok := k.Acquire("busy", 1); ok {
		t.Fatal("the in-flight client was forgotten")
	}
	rel()
	rel() // idempotent
	r2, ok := k.Acquire("busy", 1)
	if !ok {
		t.Fatal("release did not free the slot")
	}
	r2()
}
