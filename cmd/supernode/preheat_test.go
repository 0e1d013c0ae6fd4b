package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// fakeAPI answers like a supernode: a created job runs 50% once, then
// ends in final.
type fakeAPI struct {
	mu    sync.Mutex
	got   preheat.Request
	auth  string
	polls int
	final string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auth = r.Header.Get("Authorization")
	w.Header().Set("Content-Type", "application/json")
	job := preheat.Job{ID: "ph-1", Image: "reg/app:v1", Scope: "all", HostCount: 2}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/preheats":
		json.NewDecoder(r.Body).Decode(&f.got)
		job.State = preheat.StateResolving
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodGet && r.URL.Path == "/api/v1/preheats/ph-1":
		f.polls++
		job.State, job.Percent, job.HostsDone = preheat.StateRunning, 50, 1
		if f.polls > 1 {
			job.State, job.Percent, job.HostsDone = f.final, 100, 2
			if f.final == preheat.StateFailed {
				job.Percent, job.Error = 50, "1 of 2 hosts failed or left"
			}
		}
	case r.Method == http.MethodGet && r.URL.Path == "/api/v1/preheats":
		json.NewEncoder(w).Encode(map[string]any{"jobs": []preheat.Job{job}})
		return
	case r.Method == http.MethodDelete && r.URL.Path == "/api/v1/preheats/ph-1":
		job.State = preheat.StateCancelled
	default:
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"no such job"}`))
		return
	}
	json.NewEncoder(w).Encode(job)
}

func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	c := rootCmd()
	var out, errb bytes.Buffer
	c.SetArgs(args)
	c.SetOut(&out)
	c.SetErr(&errb)
	c.SetIn(strings.NewReader(stdin))
	err := c.Execute()
	return out.String() + errb.String(), err
}

func TestPreheatCommand(t *testing.T) {
	f := &fakeAPI{final: preheat.StateSucceeded}
	srv := httptest.NewServer(f)
	defer srv.Close()
	out, err := run(t, "pass word\n", "preheat", "reg/app:v1", "--selector", "zone=a", "--platform", "linux/amd64", "--platform", "linux/arm64",
		"--wait", "--server", srv.URL, "--token", "tok-0123456789abcdef", "--username", "bob", "--password-stdin")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	g := f.got
	if g.Image != "reg/app:v1" || g.Selector != "zone=a" || len(g.Platforms) != 2 || g.Scope != "all" || g.Credentials == nil ||
		g.Credentials.Username != "bob" || g.Credentials.Password != "pass word" || f.auth != "Bearer tok-0123456789abcdef" {
		t.Errorf("request %+v creds %+v auth %q", g, g.Credentials, f.auth)
	}
	if !strings.Contains(out, "ph-1 running hosts 1/2 50.0%") || !strings.Contains(out, "ph-1  succeeded  100.0%") || strings.Contains(out, "pass word") {
		t.Errorf("output:\n%s", out)
	}
	// A failed job is an error; a URL with --cdn-only.
	f.final, f.polls = preheat.StateFailed, 0
	t.Setenv("POUCHFLY_API_TOKEN", "env-token-0123456789")
	out, err = run(t, "", "preheat", "https://files/x.bin", "--digest", "sha256:"+strings.Repeat("a", 64), "--cdn-only", "--wait", "--server", srv.URL)
	if err == nil || !strings.Contains(err.Error(), "failed") || f.got.URL != "https://files/x.bin" || f.got.Scope != "cdn" || f.auth != "Bearer env-token-0123456789" {
		t.Errorf("failed job: %v %+v %q\n%s", err, f.got, f.auth, out)
	}
	// list, status, cancel; unknown job.
	for _, args := range [][]string{{"preheat", "list"}, {"preheat", "status", "ph-1"}, {"preheat", "cancel", "ph-1"}} {
		out, err := run(t, "", append(args, "--server", srv.URL)...)
		if err != nil || !strings.Contains(out, "ph-1") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
	if _, err := run(t, "", "preheat", "status", "nope", "--server", srv.URL); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	// Usage errors.
	for _, args := range [][]string{
		{"preheat", "reg/app:v1", "--username", "u"},
		{"preheat", "reg/app:v1", "--digest", "sha256:x"},
		{"preheat", "reg/app:v1", "--password-stdin"},
	} {
		if _, err := run(t, "", append(args, "--server", srv.URL)...); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}
