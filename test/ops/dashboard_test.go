package ops

import (
	"context"
	"fmt"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/supernode/preheat"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/registry"
)

// chromium returns Debian's chromium. Outside CI a missing browser skips
// the test (saying why); under CI=true it fails: `make test` installs it
// (test/deps.sh chromium:chromium).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Require(t, false, "chromium is not installed (make test installs it with test/deps.sh; or apt-get install chromium)")
	return ""
}

// browser starts a headless chromium with no network of its own (no
// sandbox: tests run as root) and a fresh profile.
func browser(t *testing.T) (context.Context, context.CancelFunc) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1366, 900),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	ctx, tcancel := context.WithTimeout(ctx, 90*time.Second)
	return ctx, func() { tcancel(); cancel(); acancel() }
}

// artifactDir is where screenshots go (gitignored); POUCHFLY_ARTIFACTS
// overrides it.
func artifactDir(t *testing.T) string {
	dir := os.Getenv("POUCHFLY_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	return abs
}

// The dashboard in a real browser: after a blob went to every agent and
// an image was preheated to zone a, the page lists the hosts, shows the
// blob's task at 100% and the savings figure, updates live (a second blob
// appears without a reload) and loads nothing from elsewhere.
func TestDashboardInBrowser(t *testing.T) {
	chromium(t)
	e := startEnv(t, envOptions{
		peers: 4,
		labels: func(i int) map[string]string {
			return map[string]string{"zone": string(rune('a' + i%2))}
		},
		image: registry.ImageOptions{Layers: 3, MinLayerSize: 1 << 20, MaxLayerSize: 2 << 20, Seed: 11},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const size = 24 << 20
	digest := e.c.Origin.Add("blob", origin.Random(size, 5))
	for _, r := range e.c.FetchAll(ctx, peer.Request{URL: e.c.Origin.URL("blob"), Digest: digest}) {
		if r.Err != nil || r.Digest != digest {
			t.Fatalf("%s: %v (%s)", r.Host, r.Err, r.Digest)
		}
	}
	creds := e.reg.AdminCredentials()
	j, err := e.api.Create(ctx, preheat.Request{Image: e.reg.Host() + "/private/app:v1", Selector: "zone=a", Platforms: []string{"linux/amd64"},
		Credentials: &preheat.Credentials{Username: creds.Username, Password: creds.Password}})
	if err != nil {
		t.Fatal(err)
	}
	if j, err = e.api.Wait(ctx, j.ID, 100*time.Millisecond, nil); err != nil || j.State != preheat.StateSucceeded {
		t.Fatalf("preheat: %v %+v", err, j)
	}
	// Every agent reported its last pieces: the task is at 100%.
	waitFor(t, 10*time.Second, "every host done in the scheduler", func() bool {
		for _, ts := range e.c.Node.Scheduler().Snapshot().Tasks {
			if ts.ID == digest {
				done := 0
				for _, p := range ts.Peers {
					if p.Done && !p.CDN {
						done++
					}
				}
				return done == 4
			}
		}
		return false
	})

	bctx, bcancel := browser(t)
	defer bcancel()
	task := fmt.Sprintf(`[data-task=%q][data-percent="100"]`, digest)
	// One snapshot of the page, read in a single script: the live view
	// re-renders its tables on every update, so nodes queried one call at
	// a time may be replaced (and read empty) in between.
	var page struct {
		HostRows                               int
		HostsText, Saved, Pct, FromOrigin, P2P string
	}
	err = chromedp.Run(bctx,
		chromedp.Navigate(e.base+"/"),
		chromedp.WaitVisible(task, chromedp.ByQuery),
		chromedp.WaitVisible(`#live:not(.off)`, chromedp.ByQuery),
		chromedp.WaitVisible(fmt.Sprintf(`[data-job=%q]`, j.ID), chromedp.ByQuery),
		chromedp.Evaluate(fmt.Sprintf(`(() => {
			window.__pouchflyMarker = 42;
			const text = (sel) => { const n = document.querySelector(sel); return n ? n.textContent.trim() : "<missing>"; };
			return {
				HostRows: document.querySelectorAll("#hosts-table tbody tr").length,
				HostsText: text("#hosts-table tbody"),
				Saved: text("#saved-percent"),
				Pct: text(%q),
				FromOrigin: text("#origin-bytes"),
				P2P: text("#p2p-bytes"),
			};
		})()`, task+" .pct"), &page),
	)
	if err != nil {
		t.Fatal(err)
	}
	hostRows, hostsText, saved, pct, fromOrigin, p2p := page.HostRows, page.HostsText, page.Saved, page.Pct, page.FromOrigin, page.P2P
	t.Logf("page: %d host rows, saved %s, task %s, from origin %s, between peers %s", hostRows, saved, pct, fromOrigin, p2p)
	if hostRows != 5 {
		t.Errorf("hosts table has %d rows, want 4 agents + the CDN", hostRows)
	}
	for _, p := range e.c.Peers {
		if !strings.Contains(hostsText, p.HostID()) {
			t.Errorf("hosts table lacks %s: %q", p.HostID(), hostsText)
		}
	}
	if pct != "100%" {
		t.Errorf("task shows %q, want 100%%", pct)
	}
	if !regexp.MustCompile(`^\d+(\.\d)?%$`).MatchString(saved) || saved == "0%" {
		t.Errorf("savings figure %q", saved)
	}
	shot := func(name string, w, h int64) {
		var buf []byte
		if err := chromedp.Run(bctx, chromedp.EmulateViewport(w, h), chromedp.Sleep(700*time.Millisecond), chromedp.FullScreenshot(&buf, 100)); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(artifactDir(t), name)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(buf))
	}
	shot("dashboard-desktop.png", 1366, 900)
	shot("dashboard-phone.png", 390, 844)

	// Live: a second blob shows up without a reload.
	digest2 := e.c.Origin.Add("blob2", origin.Random(4<<20, 6))
	if r := e.c.Peers[1].Fetch(ctx, peer.Request{URL: e.c.Origin.URL("blob2"), Digest: digest2}); r.Err != nil {
		t.Fatal(r.Err)
	}
	var marker int
	var foreign []string
	err = chromedp.Run(bctx,
		chromedp.WaitVisible(fmt.Sprintf(`[data-task=%q]`, digest2), chromedp.ByQuery),
		chromedp.Evaluate(`window.__pouchflyMarker || 0`, &marker),
		chromedp.Evaluate(fmt.Sprintf(`performance.getEntriesByType("resource").map(r => r.name).filter(u => !u.startsWith(%q))`, e.base), &foreign),
	)
	if err != nil {
		t.Fatal(err)
	}
	if marker != 42 {
		t.Errorf("the page reloaded (marker %d)", marker)
	}
	if len(foreign) > 0 {
		t.Errorf("the page fetched from elsewhere: %v", foreign)
	}
}
