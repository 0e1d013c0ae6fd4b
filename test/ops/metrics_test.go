package ops

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// scrape GETs a /metrics page and parses it with Prometheus' text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s does not parse: %v", url, err)
	}
	return mfs
}

// value sums the samples of family name whose labels include want
// (counter, gauge or untyped; a histogram gives its sample count).
func value(mfs map[string]*dto.MetricFamily, name string, want ...string) float64 {
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	var sum float64
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			ok = ok && labels[want[i]] == want[i+1]
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		default:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// agentMetrics serves an agent's metrics as `dfget daemon` does (Go and
// process collectors, the peer's and its mirror's) and returns the URL
// and the names its collectors describe.
func agentMetrics(t *testing.T, p *cluster.Peer) (string, []prometheus.Collector) {
	t.Helper()
	mcfg := registryproxy.DefaultConfig()
	mcfg.DefaultRegistry = "127.0.0.1:1"
	m, err := registryproxy.New(mcfg, p.Peer, registryproxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := append(p.Collectors(), m.Collectors()...)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(cs...)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics", cs
}

// described returns the metric names collectors describe (vectors with no
// sample yet are absent from /metrics until their first event).
func described(cs []prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc, 256)
	go func() {
		for _, c := range cs {
			c.Describe(ch)
		}
		close(ch)
	}()
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	var out []string
	for d := range ch {
		if m := re.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// After 5 agents fetched one blob, the byte counters of the agents and of
// the supernode add up exactly to what moved, and the latency histograms
// counted every piece.
func TestMetricsAddUp(t *testing.T) {
	const peers, size = 5, 24 << 20
	c := cluster.Start(t, cluster.Options{Peers: peers})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	digest := c.Origin.Add("blob", origin.Random(size, 77))
	var kept = map[string]int64{}
	for _, r := range c.FetchAll(ctx, peer.Request{URL: c.Origin.URL("blob"), Digest: digest}) {
		if r.Err != nil || r.Digest != digest || r.Bytes != size {
			t.Fatalf("%s: %v (%d bytes %s)", r.Host, r.Err, r.Bytes, r.Digest)
		}
		for src, n := range r.Received {
			kept[src] += n
		}
	}
	pieces := piece.Count(size, piece.SizeFor(size))
	node := "http://" + c.Node.HTTPAddr() + "/metrics"
	var urls []string
	var cs []prometheus.Collector
	for _, p := range c.Peers {
		u, pc := agentMetrics(t, p)
		urls = append(urls, u)
		cs = append(cs, pc...)
	}

	// Agents count a piece when it verified; the scheduler when its report
	// (batched every 100 ms) arrived: wait until the reports are in.
	var sn map[string]*dto.MetricFamily
	var agent = map[string]float64{}
	var uploads, histCount, active float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		clear(agent)
		uploads, histCount, active = 0, 0, 0
		for _, u := range urls {
			mfs := scrape(t, u)
			for _, src := range []string{"peer", "cdn", "origin"} {
				agent[src] += value(mfs, "pouchfly_peer_download_bytes_total", "source", src)
			}
			uploads += value(mfs, "pouchfly_peer_upload_bytes_total")
			histCount += value(mfs, "pouchfly_peer_piece_download_seconds")
			active += value(mfs, "pouchfly_peer_active_tasks")
		}
		sn = scrape(t, node)
		if value(sn, "pouchfly_scheduler_piece_bytes_total") == agent["peer"]+agent["cdn"]+agent["origin"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	p2p := value(sn, "pouchfly_scheduler_piece_bytes_total", "source", "p2p")
	cdn := value(sn, "pouchfly_scheduler_piece_bytes_total", "source", "cdn")
	orig := value(sn, "pouchfly_scheduler_piece_bytes_total", "source", "origin")
	served := value(sn, "pouchfly_cdn_upload_bytes_total")
	t.Logf("agents: peer %s, cdn %s, origin %s, uploaded %s; supernode: p2p %s, cdn %s, origin %s; cdn served %s, cdn origin %s",
		mib(int64(agent["peer"])), mib(int64(agent["cdn"])), mib(int64(agent["origin"])), mib(int64(uploads)),
		mib(int64(p2p)), mib(int64(cdn)), mib(int64(orig)), mib(int64(served)), mib(int64(value(sn, "pouchfly_cdn_origin_bytes_total"))))

	// What the agents delivered is exactly the blob, once per agent, and
	// equals what their streams reported.
	if got := agent["peer"] + agent["cdn"] + agent["origin"]; got != peers*size {
		t.Errorf("agents counted %v bytes downloaded, want %d × %d", got, peers, size)
	}
	for src, n := range kept {
		if agent[src] != float64(n) {
			t.Errorf("agents' %s bytes: metrics %v, streams %d", src, agent[src], n)
		}
	}
	// The scheduler's view by source equals the agents' (p2p = peer).
	if p2p != agent["peer"] || cdn != agent["cdn"] || orig != agent["origin"] {
		t.Errorf("scheduler p2p/cdn/origin %v/%v/%v, agents peer/cdn/origin %v/%v/%v", p2p, cdn, orig, agent["peer"], agent["cdn"], agent["origin"])
	}
	// Servers count what they sent, agents what they kept: an endgame
	// duplicate or a cancelled piece is sent and dropped.
	if served != float64(c.Node.CDNEgress()) {
		t.Errorf("pouchfly_cdn_upload_bytes_total %v, CDNEgress %d", served, c.Node.CDNEgress())
	}
	if served < agent["cdn"] || served > agent["cdn"]+size/4 {
		t.Errorf("CDN served %v bytes, agents kept %v from it (want kept ≤ served ≤ kept + size/4)", served, agent["cdn"])
	}
	if uploads < agent["peer"] || uploads > agent["peer"]+size {
		t.Errorf("agents uploaded %v bytes, kept %v from peers", uploads, agent["peer"])
	}
	// The origin sent the blob once, to the CDN.
	if got := value(sn, "pouchfly_cdn_origin_bytes_total"); got != size || c.Origin.Egress() != size {
		t.Errorf("cdn origin bytes %v, origin egress %d, want %d", got, c.Origin.Egress(), size)
	}
	// Every verified piece was timed. An endgame duplicate that completed
	// after the winning copy (the store keeps the first, 0 bytes written)
	// is timed too (peer/task.go observes every successful result), so the
	// count is exact only up to those.
	if want := float64(peers * pieces); histCount < want || histCount > want*1.1 {
		t.Errorf("piece latency histogram counted %v pieces, want %v (+ ≤10%% endgame duplicates)", histCount, want)
	} else if histCount > want {
		t.Logf("piece latency histogram: %v pieces timed for %v kept (endgame duplicates)", histCount, want)
	}
	if active != 0 {
		t.Errorf("agents report %v active tasks after the downloads", active)
	}
	for name, want := range map[string]float64{
		"pouchfly_scheduler_hosts":             peers + 1,
		"pouchfly_scheduler_tasks":             1,
		"pouchfly_supernode_sessions":          peers,
		"pouchfly_supernode_quarantined_hosts": 0,
		"pouchfly_scheduler_seeds_total":       1,
		"pouchfly_cdn_seeds_total":             1,
	} {
		if got := value(sn, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if value(sn, "pouchfly_scheduler_decision_seconds") < peers {
		t.Errorf("scheduling latency histogram counted %v decisions for %d hosts", value(sn, "pouchfly_scheduler_decision_seconds"), peers)
	}

	// Every metric the Grafana dashboard uses is one a supernode or an
	// agent exports.
	names := map[string]bool{}
	for n := range sn {
		names[n] = true
	}
	for _, u := range urls[:1] {
		for n := range scrape(t, u) {
			names[n] = true
		}
	}
	for _, n := range described(cs) {
		names[n] = true
	}
	for _, n := range described(c.Node.Scheduler().Metrics().Collectors()) {
		names[n] = true
	}
	checkGrafana(t, "../../deploy/grafana/pouchfly.json", names)
}

// checkGrafana parses the dashboard JSON and checks that every pouchfly_*
// (and process_/go_) metric its queries use is exported.
func checkGrafana(t *testing.T, file string, names map[string]bool) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) < 10 {
		t.Fatalf("%s: title %q uid %q, %d panels", file, dash.Title, dash.UID, len(dash.Panels))
	}
	re := regexp.MustCompile(`\b((?:pouchfly|process|go)_[a-z0-9_]+)`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range re.FindAllStringSubmatch(tg.Expr, -1) {
				n := m[1]
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(n, suf); ok && names[base] {
						n = base
					}
				}
				used[n] = true
			}
		}
	}
	var missing, all []string
	for n := range used {
		all = append(all, n)
		if !names[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(all)
	sort.Strings(missing)
	t.Logf("grafana dashboard uses %d metrics: %s", len(all), strings.Join(all, " "))
	if len(missing) > 0 {
		t.Errorf("grafana dashboard uses metrics nobody exports: %v", missing)
	}
	// The metrics the issue asks for are on the dashboard.
	for _, n := range []string{"pouchfly_peer_download_bytes_total", "pouchfly_scheduler_piece_bytes_total", "pouchfly_cdn_origin_bytes_total",
		"pouchfly_peer_piece_download_seconds", "pouchfly_scheduler_decision_seconds", "pouchfly_scheduler_hosts", "pouchfly_scheduler_tasks",
		"pouchfly_scheduler_quarantines_total", "pouchfly_peer_back_to_source_total", "pouchfly_peer_gc_bytes_freed_total", "pouchfly_cdn_evictions_total"} {
		if !slices.Contains(all, n) {
			t.Errorf("grafana dashboard lacks %s", n)
		}
	}
}
