package origin

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"
)

func get(t *testing.T, ctx context.Context, url, rng string) (int, int64, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, n, err
}

func TestFaults(t *testing.T) {
	s := New()
	s.Add("f", Random(1<<20, 1))
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// 5xx for two requests, then healthy.
	if err := s.SetFault(Fault{Mode: Fault5xx, Count: 2}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{503, 503, 200} {
		if code, _, err := get(t, ctx, s.URL("f"), ""); code != want || err != nil {
			t.Fatalf("request %d: %d %v, want %d", i, code, err, want)
		}
	}

	// A reset after 100 KiB: the client sees a broken body.
	s.SetFault(Fault{Mode: FaultReset, Count: 1, After: 100 << 10})
	code, n, err := get(t, ctx, s.URL("f"), "bytes=4096-")
	if code != http.StatusPartialContent || err == nil || n != 100<<10 {
		t.Fatalf("reset: status %d, %d bytes, err %v; want 206, 102400 bytes and an error", code, n, err)
	}

	// A stall of 300 ms after 10 bytes, then the rest.
	s.SetFault(Fault{Mode: FaultStall, Count: 1, After: 10, Stall: 300 * time.Millisecond})
	start := time.Now()
	if code, n, err := get(t, ctx, s.URL("f"), ""); code != 200 || n != 1<<20 || err != nil {
		t.Fatalf("stall: %d %d %v", code, n, err)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("stalled response took %v, less than the stall", el)
	}

	// A stall without end ends when the client leaves.
	s.SetFault(Fault{Mode: FaultStall, Count: -1, After: 10})
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, n, err = get(t, sctx, s.URL("f"), "")
	scancel()
	if err == nil || n != 10 {
		t.Fatalf("endless stall: %d bytes, err %v", n, err)
	}
	s.SetFault(Fault{})

	// The stalled handler notices the client left and logs it.
	log := s.Log()
	for deadline := time.Now().Add(5 * time.Second); len(log) < 6 && time.Now().Before(deadline); log = s.Log() {
		time.Sleep(10 * time.Millisecond)
	}
	if len(log) != 6 {
		t.Fatalf("log has %d records, want 6: %+v", len(log), log)
	}
	if log[3].Range != "bytes=4096-" || log[3].Fault != FaultReset || log[3].Status != 206 || log[3].Bytes != 100<<10 {
		t.Errorf("reset record %+v", log[3])
	}
	if log[0].Status != 503 || log[0].Fault != Fault5xx || log[2].Fault != "" {
		t.Errorf("5xx records %+v %+v", log[0], log[2])
	}
	for i := 1; i < len(log); i++ {
		if log[i].Time.Before(log[i-1].Time) {
			t.Errorf("log not in arrival order")
		}
	}
	if err := s.SetFault(Fault{Mode: "boom"}); err == nil {
		t.Error("unknown mode accepted")
	}
}

func TestTotalRate(t *testing.T) {
	s := New()
	s.Add("f", Random(512<<10, 2))
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetTotalRate(2 << 20) // 2 MiB/s over all responses
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 2)
	for range 2 {
		go func() { _, _, err := get(t, ctx, s.URL("f"), ""); done <- err }()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// 1 MiB at 2 MiB/s (a 64 KiB burst): at least ~0.45 s.
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Errorf("1 MiB under a 2 MiB/s total cap took %v", el)
	}
}
