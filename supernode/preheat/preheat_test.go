package preheat

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/test/registry"
)

func TestParseSelector(t *testing.T) {
	host := scheduler.HostSnapshot{ID: "h", Zone: "z1", Labels: map[string]string{"rack": "r1", "tier": "web"}}
	for _, tc := range []struct {
		in    string
		canon string
		match bool
		bad   bool
	}{
		{"", "", true, false},
		{"rack=r1", "rack=r1", true, false},
		{" rack = r1 , tier=web", "rack=r1,tier=web", true, false},
		{"zone=z1", "zone=z1", true, false},
		{"zone=z2", "zone=z2", false, false},
		{"tier!=db", "tier!=db", true, false},
		{"tier!=web", "tier!=web", false, false},
		{"gpu=", "gpu=", true, false},
		{"rack", "", false, true},
		{"a=b=c", "", false, true},
		{"=v", "", false, true},
		{"k=v v", "", false, true},
	} {
		sel, err := ParseSelector(tc.in)
		if tc.bad {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%q: err %v, want invalid", tc.in, err)
			}
			continue
		}
		if err != nil || sel.String() != tc.canon || sel.Matches(host) != tc.match {
			t.Errorf("%q: %q match=%v err=%v; want %q match=%v", tc.in, sel.String(), sel.Matches(host), err, tc.canon, tc.match)
		}
	}
}

func TestParsePlatformAndMatch(t *testing.T) {
	p, err := ParsePlatform("linux/arm64/v8")
	if err != nil || p.OS != "linux" || p.Architecture != "arm64" || p.Variant != "v8" {
		t.Fatalf("%+v %v", p, err)
	}
	for _, s := range []string{"linux", "a/b/c/d", "linux/", "lin ux/amd64"} {
		if _, err := ParsePlatform(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
	amd := ocispec.Platform{OS: "linux", Architecture: "amd64"}
	armNoVariant := &ocispec.Platform{OS: "linux", Architecture: "arm64"}
	if !platformMatches(p, armNoVariant) || platformMatches(amd, armNoVariant) || !platformMatches(ocispec.Platform{OS: "linux", Architecture: "arm64"}, &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}) {
		t.Error("platform matching")
	}
	if wanted(nil, &ocispec.Platform{OS: "unknown", Architecture: "unknown"}) || !wanted(nil, &amd) {
		t.Error("default platforms must skip unknown/unknown (attestations)")
	}
}

func TestParseChallenge(t *testing.T) {
	scheme, p := parseChallenge(`Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"`)
	if scheme != "bearer" || p["realm"] != "https://auth.example.com/token" || p["service"] != "registry.example.com" || p["scope"] != "repository:a/b:pull,push" {
		t.Errorf("%s %v", scheme, p)
	}
	scheme, p = parseChallenge(`Basic realm="x \"y\"", charset=UTF-8`)
	if scheme != "basic" || p["realm"] != `x "y"` || p["charset"] != "UTF-8" {
		t.Errorf("%s %v", scheme, p)
	}
	if scheme, _ = parseChallenge(""); scheme != "" {
		t.Errorf("empty: %q", scheme)
	}
}

func TestCredentialsNeverPrinted(t *testing.T) {
	c := Credentials{Username: "u", Password: "hunter2-secret", Token: "tok-secret"}
	for _, s := range []string{c.String(), c.GoString(), c.LogValue().String(), Request{Credentials: &c}.LogValue().String()} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "tok-secret") {
			t.Errorf("credentials printed: %s", s)
		}
	}
}

// testRegistry starts a token-auth registry with a 3-platform image in
// private/app:v1 and public/app:v1.
func testRegistry(t *testing.T) (*registry.Registry, *registry.Image) {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.Start(ctx, registry.Options{Auth: registry.AuthToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	img, err := registry.GenerateImage(registry.ImageOptions{Layers: 3, UniqueLayers: 1, MinLayerSize: 4 << 10, MaxLayerSize: 16 << 10, Seed: 4,
		Platforms: []ocispec.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}, {OS: "windows", Architecture: "amd64"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"private/app", "public/app"} {
		if err := reg.Push(ctx, repo, "v1", img); err != nil {
			t.Fatal(err)
		}
	}
	return reg, img
}

func TestResolve(t *testing.T) {
	reg, img := testRegistry(t)
	r := newResolver(http.DefaultClient, Config{MaxBlobs: 100, Registries: []Registry{{Host: reg.Host(), URL: reg.URL()}}})
	ctx := context.Background()
	admin := reg.AdminCredentials()
	creds := Credentials{Username: admin.Username, Password: admin.Password}
	ref, err := ParseReference(reg.Host() + "/private/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	// Private without credentials: forbidden; wrong password: forbidden.
	if _, err := r.resolve(ctx, ref, nil, Credentials{}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Errorf("anonymous: %v", err)
	}
	if _, err := r.resolve(ctx, ref, nil, Credentials{Username: admin.Username, Password: "wrong"}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Errorf("wrong password: %v", err)
	}
	got, err := r.resolve(ctx, ref, nil, creds)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != img.IndexDescriptor.Digest.String() || got.MediaType != ocispec.MediaTypeImageIndex || len(got.Platforms) != 3 {
		t.Errorf("resolved %s %s %v", got.Digest, got.MediaType, got.Platforms)
	}
	if len(got.Blobs) != len(img.Blobs) || !strings.HasPrefix(got.authorization, "Bearer ") {
		t.Errorf("%d blobs (want %d), authorization %.7q", len(got.Blobs), len(img.Blobs), got.authorization)
	}
	for _, b := range got.Blobs {
		data, ok := img.Blob(digest.Digest(b.Digest))
		if !ok || int64(len(data)) != b.Size {
			t.Errorf("blob %s: size %d", b.Digest, b.Size)
		}
	}
	// The blob URL answers with the token the resolution earned.
	req, _ := http.NewRequest(http.MethodHead, got.BlobURL(got.Blobs[0].Digest), nil)
	req.Header.Set("Authorization", got.authorization)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD blob with the job's token: %v %v", err, resp)
	}
	// One platform (arm64 without variant matches v8), by digest too.
	plat, _ := ParsePlatform("linux/arm64")
	got, err = r.resolve(ctx, ref, []ocispec.Platform{plat}, creds)
	if err != nil {
		t.Fatal(err)
	}
	arm := img.Platform("linux", "arm64")
	if len(got.Blobs) != 1+len(arm.Manifest.Layers) || !slices.Equal(got.Platforms, []string{"linux/arm64/v8"}) {
		t.Errorf("arm64: %d blobs, platforms %v", len(got.Blobs), got.Platforms)
	}
	byDigest, _ := ParseReference(reg.Host() + "/public/app@" + arm.Descriptor.Digest.String())
	got, err = r.resolve(ctx, byDigest, nil, Credentials{})
	if err != nil || got.MediaType != ocispec.MediaTypeImageManifest || len(got.Blobs) != 1+len(arm.Manifest.Layers) {
		t.Fatalf("manifest by digest: %v %+v", err, got)
	}
	// No platform matches; unknown tag.
	none, _ := ParsePlatform("linux/s390x")
	if _, err := r.resolve(ctx, ref, []ocispec.Platform{none}, creds); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no match: %v", err)
	}
	missing, _ := ParseReference(reg.Host() + "/public/app:nope")
	if _, err := r.resolve(ctx, missing, nil, Credentials{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing tag: %v", err)
	}
	// max_blobs.
	small := newResolver(http.DefaultClient, Config{MaxBlobs: 2, Registries: []Registry{{Host: reg.Host(), URL: reg.URL()}}})
	if _, err := small.resolve(ctx, ref, nil, creds); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("max_blobs: %v", err)
	}
}

// fakeSched records seeds and orders and serves a scripted snapshot.
type fakeSched struct {
	mu     sync.Mutex
	snap   scheduler.Snapshot
	seeds  []scheduler.SeedRequest
	orders map[string]*schedulerv1.Prefetch
}

func (f *fakeSched) Snapshot() scheduler.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap
	s.Tasks = slices.Clone(s.Tasks)
	for i := range s.Tasks {
		s.Tasks[i].Peers = slices.Clone(s.Tasks[i].Peers)
	}
	return s
}

func (f *fakeSched) Preseed(req scheduler.SeedRequest) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seeds = append(f.seeds, req)
	return true, nil
}

func (f *fakeSched) Prefetch(host string, p *schedulerv1.Prefetch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.snap.Hosts {
		if h.ID == host && !h.CDN {
			f.orders[host] = p
			return nil
		}
	}
	return errdefs.ErrNotFound
}

// progress sets host's progress on task (pieces of count).
func (f *fakeSched) progress(task, host string, pieces, count int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.snap.Tasks {
		ts := &f.snap.Tasks[i]
		if ts.ID != task {
			continue
		}
		ts.PieceCount = count
		for j := range ts.Peers {
			if ts.Peers[j].HostID == host {
				ts.Peers[j].Pieces, ts.Peers[j].Done = pieces, pieces == count
				return
			}
		}
		ts.Peers = append(ts.Peers, scheduler.PeerSnapshot{HostID: host, Pieces: pieces, Done: pieces == count})
		sort.Slice(ts.Peers, func(a, b int) bool { return ts.Peers[a].HostID < ts.Peers[b].HostID })
		return
	}
	f.snap.Tasks = append(f.snap.Tasks, scheduler.TaskSnapshot{ID: task, PieceCount: count,
		Peers: []scheduler.PeerSnapshot{{HostID: host, Pieces: pieces, Done: pieces == count}}})
}

func newFake() *fakeSched {
	return &fakeSched{orders: map[string]*schedulerv1.Prefetch{}, snap: scheduler.Snapshot{Hosts: []scheduler.HostSnapshot{
		{ID: "cdn", CDN: true, State: "active"},
		{ID: "h1", State: "active", Labels: map[string]string{"zone": "a"}},
		{ID: "h2", State: "active", Zone: "a"},
		{ID: "h3", State: "active", Labels: map[string]string{"zone": "b"}},
		{ID: "h4", State: "quarantined", Labels: map[string]string{"zone": "a"}},
	}}}
}

func startManager(t *testing.T, cfg Config, f *fakeSched, cdn bool) *Manager {
	t.Helper()
	opts := Options{}
	if cdn {
		opts.CDNStat = func(ctx context.Context, id string) (piece.Stat, error) { return piece.Stat{}, errdefs.ErrNotFound }
	}
	m, err := New(cfg, f, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.ctx != nil })
	return m
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestManagerJob(t *testing.T) {
	reg, img := testRegistry(t)
	cfg := DefaultConfig()
	cfg.PollInterval = 10 * time.Millisecond
	cfg.Registries = []Registry{{Host: reg.Host(), URL: reg.URL()}}
	f := newFake()
	m := startManager(t, cfg, f, true)
	admin := reg.AdminCredentials()
	j, err := m.Create(Request{Image: reg.Host() + "/private/app:v1", Selector: "zone=a", Platforms: []string{"linux/amd64"},
		Credentials: &Credentials{Username: admin.Username, Password: admin.Password}}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { v, _ := m.Get(j.ID); return v.State != StateResolving })
	waitUntil(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.orders) == 2 })
	amd := img.Platform("linux", "amd64")
	blobs := 1 + len(amd.Manifest.Layers)
	f.mu.Lock()
	if len(f.seeds) != blobs || f.orders["h1"] == nil || f.orders["h2"] == nil || len(f.orders["h1"].Tasks) != blobs {
		t.Fatalf("%d seeds, orders %v", len(f.seeds), f.orders)
	}
	for _, s := range f.seeds {
		if !strings.HasPrefix(s.Headers["Authorization"], "Bearer ") || s.TaskID != s.Digest || !strings.HasSuffix(s.URL, "/v2/private/app/blobs/"+s.Digest) {
			t.Errorf("seed %+v", s.LogValue())
		}
	}
	tasks := f.orders["h1"].Tasks
	f.mu.Unlock()
	v, _ := m.Get(j.ID)
	if v.State != StateRunning || v.HostCount != 2 || v.Percent != 0 || len(v.Hosts) != 2 || v.Hosts[0].State != HostPending {
		t.Fatalf("running job %+v", v)
	}
	// Half of everything on h1, nothing on h2.
	for _, rt := range tasks {
		f.progress(rt.TaskId, "h1", 2, 4)
	}
	waitUntil(t, func() bool { v, _ := m.Get(j.ID); return v.Percent == 25 })
	v, _ = m.Get(j.ID)
	if v.Hosts[0].State != HostRunning || v.Hosts[0].Percent != 50 || v.Hosts[1].State != HostPending {
		t.Errorf("hosts %+v", v.Hosts)
	}
	for _, rt := range tasks {
		f.progress(rt.TaskId, "h1", 4, 4)
		f.progress(rt.TaskId, "h2", 4, 4)
	}
	waitUntil(t, func() bool { v, _ := m.Get(j.ID); return v.State == StateSucceeded })
	v, _ = m.Get(j.ID)
	if v.Percent != 100 || v.HostsDone != 2 || v.Finished == nil || v.Bytes != amd.BlobBytes() || v.Digest != img.IndexDescriptor.Digest.String() {
		t.Errorf("finished job %+v", v)
	}
	if _, err := m.Cancel(j.ID); !errors.Is(err, ErrFinished) {
		t.Errorf("cancel finished: %v", err)
	}
	if _, err := m.Get("ph-nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown: %v", err)
	}
}

func TestManagerFailures(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PollInterval = 10 * time.Millisecond
	cfg.FailureGrace = 50 * time.Millisecond
	cfg.MaxActiveJobs, cfg.MaxJobs = 2, 3
	f := newFake()
	m := startManager(t, cfg, f, false)
	// No CDN: scope cdn is refused.
	if _, err := m.Create(Request{URL: "http://o/x", Scope: ScopeCDN}, SourceAPI); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("cdn scope without a CDN: %v", err)
	}
	// A selector nobody matches fails the job.
	j, err := m.Create(Request{URL: "http://o/x", Selector: "zone=nowhere"}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { v, _ := m.Get(j.ID); return v.State == StateFailed })
	// A URL job; the host leaves the task unfinished → failed after the grace.
	j, err = m.Create(Request{URL: "http://o/y?Signature=abc&k=v", Selector: "zone=b", Credentials: &Credentials{Token: "tok"}}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.orders["h3"] != nil })
	f.mu.Lock()
	rt := f.orders["h3"].Tasks[0]
	f.mu.Unlock()
	if rt.Headers["Authorization"] != "Bearer tok" || rt.Url != "http://o/y?Signature=abc&k=v" {
		t.Errorf("order %v %v", rt.Url, rt.Headers != nil)
	}
	want, _ := piece.TaskID("http://o/y?k=v", "", nil, "")
	if rt.TaskId != want {
		t.Errorf("task id %s, want %s (signature filtered)", rt.TaskId, want)
	}
	if v, _ := m.Get(j.ID); v.URL != "http://o/y" {
		t.Errorf("job URL %q shows the query", v.URL)
	}
	f.progress(rt.TaskId, "h3", 1, 4)
	waitUntil(t, func() bool { v, _ := m.Get(j.ID); return v.Hosts[0].State == HostRunning })
	f.mu.Lock()
	f.snap.Tasks = nil
	f.mu.Unlock()
	waitUntil(t, func() bool { v, _ := m.Get(j.ID); return v.State == StateFailed })
	if v, _ := m.Get(j.ID); !strings.Contains(v.Error, "1 of 1 hosts") || v.Hosts[0].State != HostFailed {
		t.Errorf("failed job %+v", v)
	}
	// Limits: 2 active, 3 kept (finished ones are dropped first).
	cfg.FailureGrace = time.Hour
	m = startManager(t, cfg, newFake(), false)
	if _, err := m.Create(Request{URL: "http://o/x", Selector: "zone=nowhere"}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return m.List()[0].State == StateFailed })
	a, _ := m.Create(Request{URL: "http://o/a"}, SourceAPI)
	if _, err := m.Create(Request{URL: "http://o/b"}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(Request{URL: "http://o/c"}, SourceAPI); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("third active job: %v", err)
	}
	if c, err := m.Cancel(a.ID); err != nil || c.State != StateCancelled {
		t.Errorf("cancel: %v %+v", err, c)
	}
	if n := len(m.List()); n != 3 {
		t.Errorf("%d jobs kept, want 3", n)
	}
}

func TestNotify(t *testing.T) {
	reg, _ := testRegistry(t)
	cfg := DefaultConfig()
	cfg.Registries = []Registry{{Host: reg.Host(), URL: reg.URL()}}
	m := startManager(t, cfg, newFake(), true)
	ev := func(action, mt, tag, digest string) Event {
		var e Event
		e.Action, e.Target.MediaType, e.Target.Tag, e.Target.Digest, e.Target.Repository = action, mt, tag, digest, "public/app"
		e.Request.Host = reg.Host()
		return e
	}
	d := "sha256:" + strings.Repeat("a", 64)
	env := Envelope{Events: []Event{
		ev("push", ocispec.MediaTypeImageLayerGzip, "", d),
		ev("pull", ocispec.MediaTypeImageIndex, "v1", d),
		ev("push", ocispec.MediaTypeImageManifest, "", d),
		ev("push", ocispec.MediaTypeImageIndex, "v1", d),
		ev("push", ocispec.MediaTypeImageIndex, "v1", d),
		ev("push", ocispec.MediaTypeImageIndex, "v1", "md5:x"),
	}}
	wcfg := DefaultWebhookConfig()
	res, err := m.Notify(env, wcfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 1 || res.Ignored != 3 || res.Duplicates != 1 || len(res.Errors) != 1 {
		t.Fatalf("result %+v", res)
	}
	j, _ := m.Get(res.Jobs[0])
	if j.Source != SourceWebhook || j.Image != reg.Host()+"/public/app:v1@"+d {
		t.Errorf("job %+v", j)
	}
	if _, err := m.Notify(Envelope{Events: make([]Event, maxEvents+1)}, wcfg); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("too many events: %v", err)
	}
}
