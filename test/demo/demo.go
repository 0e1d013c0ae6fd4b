package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/proc"
	"github.com/pouchfly/pouchfly/test/registry"
	"github.com/pouchfly/pouchfly/test/report"
)

// options configure one demo run (the flags; see usage).
type options struct {
	Size        int64
	Peers       int
	Report      string
	Timeout     time.Duration
	BinDir      string
	Seed        uint64
	Keep        bool
	StopTimeout time.Duration
	// ImageLayers is the number of layers per platform of the generated
	// image (0: no image scenario); each layer's size is drawn in
	// [ImageLayerMin, ImageLayerMax].
	ImageLayers                  int
	ImageLayerMin, ImageLayerMax int64
	// ImageParallel is how many blobs each host fetches at once.
	ImageParallel int
	// Out receives the progress lines, the table and the summary.
	Out io.Writer
	// trace, when set, is filled as the run goes (for tests: what to check
	// is gone afterwards).
	trace *trace
}

// trace records what a run created.
type trace struct {
	TempDir string
	PIDs    []int
	// Listeners are the TCP addresses the run served on (the registry and
	// the agents' mirrors), all closed when run returns.
	Listeners []string
	// phase, when set, is called as each scenario starts ("file",
	// "image").
	phase func(name string)
}

func (o options) validate() error {
	switch {
	case o.Size < 1:
		return fmt.Errorf("--size must be at least 1 byte")
	case o.Size > 4<<30:
		return fmt.Errorf("--size above 4GiB: the origin holds the file in memory")
	case o.Peers < 1 || o.Peers > 200:
		return fmt.Errorf("--peers must be 1..200 (agents use 127.0.0.11…127.0.0.210)")
	case o.Timeout <= 0 || o.StopTimeout <= 0:
		return fmt.Errorf("--timeout and --stop-timeout must be positive")
	case o.ImageLayers < 0 || o.ImageLayers > 64:
		return fmt.Errorf("--image-layers must be 0..64")
	case o.ImageLayers > 0 && (o.ImageLayerMin < 1 || o.ImageLayerMax < o.ImageLayerMin):
		return fmt.Errorf("--image-layer-size must be at least 1 byte, MIN-MAX with MIN ≤ MAX")
	case o.ImageLayers > 0 && o.ImageLayerMax > 512<<20:
		return fmt.Errorf("--image-layer-size above 512MiB: the image is generated and held in memory")
	case o.ImageLayers > 0 && (o.ImageParallel < 1 || o.ImageParallel > 64):
		return fmt.Errorf("--image-parallel must be 1..64")
	}
	return nil
}

func (o options) phase(name string) {
	if o.trace != nil && o.trace.phase != nil {
		o.trace.phase(name)
	}
}

const (
	supernodeIP = "127.0.0.2"
	registryIP  = "127.0.0.3"
	fileName    = "demo.bin"
	mib         = 1 << 20
	// cdnEgressMetric is the supernode's counter of the bytes its CDN sent.
	cdnEgressMetric = "pouchfly_cdn_upload_bytes_total"
)

// agentIP is the loopback address of agent i (1-based).
func agentIP(i int) string { return fmt.Sprintf("127.0.0.%d", 10+i) }

// hostResult is one agent's download.
type hostResult struct {
	Host     string
	IP       string
	Seconds  float64
	Bytes    int64
	Digest   string
	Received map[string]int64
	Err      error
}

func (r hostResult) ok(digest string, size int64) bool {
	return r.Err == nil && r.Digest == digest && r.Bytes == size
}

// demo is one run's state.
type demo struct {
	o         options
	out       io.Writer
	dir       string
	origin    *origin.Server
	supernode *proc.Proc
	agents    []*proc.Proc
	sockets   []string
	metrics   []string // each agent's metrics host:port
	mirrors   []string // each agent's registry mirror host:port ("" without the image scenario)
	grpcAddr  string
	httpAddr  string
	delivered int64 // bytes read by all hosts together in the file scenario
	// The image scenario (nil registry: skipped).
	registry *registry.Registry
	image    *registry.Image
	platform *registry.PlatformImage // linux/amd64, what the hosts pull
	// interrupted is set when the downloads were cut short (Ctrl-C,
	// --timeout).
	interrupted bool
}

// run performs the whole demo and returns its reports: "demo-file", then
// "demo-image" (unless o.ImageLayers is 0). The reports are also returned
// (and written) when hosts failed; err is then non-nil. Every child
// process is stopped, the origin and registry closed and the temporary
// directory removed before run returns, whatever happened.
func run(ctx context.Context, o options) (reps []report.Report, err error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	d := &demo{o: o, out: o.Out}
	if d.out == nil {
		d.out = io.Discard
	}
	defer func() {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			err = fmt.Errorf("the run exceeded --timeout %v: %w", o.Timeout, err)
		}
	}()

	bin, err := filepath.Abs(o.BinDir)
	if err != nil {
		return nil, err
	}
	snBin, dfBin := filepath.Join(bin, "supernode"), filepath.Join(bin, "dfget")
	for _, b := range []string{snBin, dfBin} {
		if st, err := os.Stat(b); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%s is not an executable: run `make build` (or pass --bin)", b)
		}
	}
	if d.dir, err = os.MkdirTemp("", "pouchfly-demo-"); err != nil {
		return nil, err
	}
	if o.trace != nil {
		o.trace.TempDir = d.dir
	}
	defer d.cleanup()
	d.logf("work dir %s (data dirs, sockets, logs, registry storage)", d.dir)

	// 1. The origin.
	d.logf("generating a %s file…", fmtBytes(o.Size))
	data := origin.Random(o.Size, o.Seed)
	d.origin = origin.New()
	digest := d.origin.Add(fileName, data)
	if err := d.origin.Start("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("origin: %w", err)
	}
	url := d.origin.URL(fileName)
	d.logf("origin     %s  (%s)", url, digest)

	// 2. The registry with the image (the agents' mirrors point at it).
	if o.ImageLayers > 0 {
		if err := d.startRegistry(ctx); err != nil {
			return nil, err
		}
	}
	// 3. The supernode.
	if err := d.startSupernode(ctx, snBin); err != nil {
		return nil, err
	}
	// 4. The agents.
	if err := d.startAgents(ctx, dfBin); err != nil {
		return nil, err
	}
	// 5. Wait until they answer and are connected.
	if err := d.waitAgents(ctx); err != nil {
		return nil, err
	}

	// 6. Scenario "demo-file": everybody downloads the file at once.
	o.phase("file")
	results, wall, cpu, err := d.downloadAll(ctx, url, digest)
	if err != nil {
		if results != nil {
			d.interrupted = true
			d.logf("\nstopped before every host finished; where they were:")
			d.printTable(results, digest)
		}
		return nil, err
	}
	var snErr error
	cdnEgress, mErr := d.metric(ctx, cdnEgressMetric)
	if mErr != nil {
		snErr = fmt.Errorf("supernode metrics: %w", mErr)
	}
	fileRep := d.buildReport(results, digest, wall, cpu, cdnEgress)
	d.printTable(results, digest)
	d.printSummary(fileRep, wall, cpu, d.swarmFailures(ctx))
	reps = append(reps, fileRep)

	// 7. Scenario "demo-image": every host pulls the image through its own
	// mirror at once.
	var pulls []imageResult
	if d.registry != nil {
		o.phase("image")
		var imgRep report.Report
		var imgSnErr error
		pulls, imgRep, imgSnErr, err = d.imageScenario(ctx)
		if err != nil {
			return reps, err
		}
		if snErr == nil {
			snErr = imgSnErr
		}
		reps = append(reps, imgRep)
	}

	// 8. The report, and what the logs say.
	fmt.Fprintln(d.out)
	d.printProcessCPU()
	if o.Report != "" {
		if err := report.WriteAll(o.Report, reps); err != nil {
			return reps, fmt.Errorf("write report: %w", err)
		}
		d.logf("report written to %s (%s)", o.Report, scenarioNames(reps))
	}
	d.scanLogs()

	if e := d.supernode.Unexpected(); e != nil {
		snErr = e
	}
	var failed []string
	for i, r := range results {
		if r.ok(digest, o.Size) {
			continue
		}
		failed = append(failed, "file:"+r.Host)
		why := r.Err
		if e := d.agents[i].Unexpected(); e != nil {
			why = fmt.Errorf("%v (the agent process died: %v)", why, e)
		} else if why == nil {
			why = fmt.Errorf("got %d bytes with digest %s, want %d bytes with %s", r.Bytes, r.Digest, o.Size, digest)
		}
		fmt.Fprintf(d.out, "\n%s FAILED the file download: %v\n  last lines of %s:\n%s\n", r.Host, why, d.agents[i].LogPath, indent(d.agents[i].Tail(20), "    "))
	}
	for i, r := range pulls {
		if r.Err == nil {
			continue
		}
		failed = append(failed, "image:"+r.Host)
		why := r.Err
		if e := d.agents[i].Unexpected(); e != nil {
			why = fmt.Errorf("%v (the agent process died: %v)", why, e)
		}
		fmt.Fprintf(d.out, "\n%s FAILED the image pull: %v\n  last lines of %s:\n%s\n", r.Host, why, d.agents[i].LogPath, indent(d.agents[i].Tail(20), "    "))
	}
	if snErr != nil {
		fmt.Fprintf(d.out, "\nsupernode: %v\n  last lines of %s:\n%s\n", snErr, d.supernode.LogPath, indent(d.supernode.Tail(20), "    "))
	}
	switch {
	case len(failed) > 0:
		return reps, fmt.Errorf("%d host downloads failed (%s)", len(failed), strings.Join(failed, ", "))
	case snErr != nil:
		return reps, snErr
	}
	return reps, nil
}

// scenarioNames lists the reports' scenarios ("demo-file, demo-image").
func scenarioNames(reps []report.Report) string {
	names := make([]string, len(reps))
	for i, r := range reps {
		names[i] = r.Scenario
	}
	return strings.Join(names, ", ")
}

func (d *demo) logf(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

// freePorts returns n distinct free TCP ports on ip. They are released
// before the caller uses them; on a loopback address of its own the race
// with other programs is negligible.
func freePorts(ip string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (d *demo) startSupernode(ctx context.Context, bin string) error {
	ports, err := freePorts(supernodeIP, 3)
	if err != nil {
		return fmt.Errorf("supernode ports on %s: %w", supernodeIP, err)
	}
	d.grpcAddr = net.JoinHostPort(supernodeIP, strconv.Itoa(ports[0]))
	pieceAddr := net.JoinHostPort(supernodeIP, strconv.Itoa(ports[1]))
	d.httpAddr = net.JoinHostPort(supernodeIP, strconv.Itoa(ports[2]))
	dir := filepath.Join(d.dir, "supernode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	d.supernode, err = startChild("supernode", filepath.Join(d.dir, "supernode.log"), bin,
		"--listen", d.grpcAddr, "--piece-listen", pieceAddr, "--http-listen", d.httpAddr,
		"--advertise-ip", supernodeIP, "--data-dir", dir)
	if err != nil {
		return err
	}
	if d.o.trace != nil {
		d.o.trace.PIDs = append(d.o.trace.PIDs, d.supernode.PID())
	}
	d.logf("supernode  pid %d, sessions %s, metrics http://%s/metrics", d.supernode.PID(), d.grpcAddr, d.httpAddr)
	hc := &http.Client{Timeout: time.Second}
	return d.poll(ctx, 30*time.Second, "the supernode to answer on /healthz", func() (bool, string, error) {
		if dead, err := d.supernode.Exited(); dead {
			return false, "", d.childFailed(d.supernode, err)
		}
		resp, err := hc.Get("http://" + d.httpAddr + "/healthz")
		if err != nil {
			return false, "not answering yet", nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
}

func (d *demo) startAgents(ctx context.Context, bin string) error {
	for i := 1; i <= d.o.Peers; i++ {
		host, ip := fmt.Sprintf("host-%d", i), agentIP(i)
		dir := filepath.Join(d.dir, host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		sock := filepath.Join(dir, "dfget.sock")
		// Fixed ports for metrics and the mirror: the demo reads one and
		// pulls through the other.
		ports, err := freePorts(ip, 2)
		if err != nil {
			return fmt.Errorf("%s ports on %s: %w", host, ip, err)
		}
		metricsAddr := net.JoinHostPort(ip, strconv.Itoa(ports[0]))
		mirrorAddr := ""
		if d.registry != nil {
			mirrorAddr = net.JoinHostPort(ip, strconv.Itoa(ports[1]))
		}
		cfg, err := d.writeAgentConfig(dir, mirrorAddr)
		if err != nil {
			return err
		}
		c, err := startChild(host, filepath.Join(d.dir, host+".log"), bin, "daemon", "--config", cfg,
			"--supernode", d.grpcAddr, "--upload-listen", ip+":0", "--ip", ip,
			"--data-dir", dir, "--socket", sock, "--host-id", host, "--metrics-listen", metricsAddr)
		if err != nil {
			return err
		}
		d.agents = append(d.agents, c)
		d.sockets = append(d.sockets, sock)
		d.metrics = append(d.metrics, metricsAddr)
		d.mirrors = append(d.mirrors, mirrorAddr)
		if d.o.trace != nil {
			d.o.trace.PIDs = append(d.o.trace.PIDs, c.PID())
			if mirrorAddr != "" {
				d.o.trace.Listeners = append(d.o.trace.Listeners, mirrorAddr)
			}
		}
	}
	d.logf("agents     %d × dfget daemon on %s…%s (host-1…host-%d)", d.o.Peers, agentIP(1), agentIP(d.o.Peers), d.o.Peers)
	if d.registry != nil {
		d.logf("mirrors    each agent serves the registry mirror on its own address (%s, …), upstream %s", d.mirrors[0], d.registry.URL())
	}
	return nil
}

// writeAgentConfig writes an agent's dfget.yaml: the mirror section (off
// when mirrorAddr is ""; otherwise serving only the demo registry, also
// as the default for requests that name none). The other settings come
// as flags.
func (d *demo) writeAgentConfig(dir, mirrorAddr string) (string, error) {
	var b strings.Builder
	b.WriteString("# written by pouchfly-demo; the peer settings are flags\nmirror:\n")
	if mirrorAddr == "" {
		b.WriteString("  listen: \"\"\n")
	} else {
		host := d.registry.Host()
		fmt.Fprintf(&b, "  listen: %q\n  default_registry: %q\n  allow_any_registry: false\n  mirrors:\n    - host: %q\n      url: %q\n",
			mirrorAddr, host, host, d.registry.URL())
	}
	path := filepath.Join(dir, "dfget.yaml")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// waitAgents waits until every agent answers on its socket and the
// supernode counts a session for each.
func (d *demo) waitAgents(ctx context.Context) error {
	clients := make([]*peer.Client, len(d.sockets))
	for i, s := range d.sockets {
		clients[i] = peer.NewClient(s)
	}
	n := d.o.Peers
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	defer hc.CloseIdleConnections()
	mirrorsUp := func() int {
		up := 0
		for _, m := range d.mirrors {
			if m == "" {
				continue
			}
			// Any HTTP answer will do (the registry's 401 passes through).
			if resp, err := hc.Get("http://" + m + "/v2/"); err == nil {
				resp.Body.Close()
				up++
			}
		}
		return up
	}
	return d.poll(ctx, 60*time.Second, "the agents to answer and connect", func() (bool, string, error) {
		for _, c := range append([]*proc.Proc{d.supernode}, d.agents...) {
			if dead, err := c.Exited(); dead {
				return false, "", d.childFailed(c, err)
			}
		}
		up := 0
		for _, c := range clients {
			pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			if c.Ping(pctx) == nil {
				up++
			}
			cancel()
		}
		mirrors, wantMirrors := 0, 0
		if d.registry != nil {
			mirrors, wantMirrors = mirrorsUp(), n
		}
		sessions, err := d.metric(ctx, "pouchfly_supernode_sessions")
		if err != nil {
			return false, fmt.Sprintf("%d/%d answering on their sockets, supernode metrics: %v", up, n, err), nil
		}
		msg := fmt.Sprintf("%d/%d answering on their sockets, %d/%d connected to the supernode", up, n, sessions, n)
		if wantMirrors > 0 {
			msg += fmt.Sprintf(", %d/%d mirrors answering", mirrors, wantMirrors)
		}
		return up == n && sessions >= int64(n) && mirrors == wantMirrors, msg, nil
	})
}

// childFailed wraps a child's exit with the tail of its log.
func (d *demo) childFailed(c *proc.Proc, err error) error {
	return fmt.Errorf("%w: %v\n  last lines of %s:\n%s", errExited, err, c.LogPath, indent(c.Tail(20), "    "))
}

// poll calls check until it says done, printing its status when it
// changes (at most once a second), failing after limit.
func (d *demo) poll(ctx context.Context, limit time.Duration, what string, check func() (bool, string, error)) error {
	start := time.Now()
	deadline := start.Add(limit)
	last, lastPrint := "", start
	for {
		ok, msg, err := check()
		if err != nil {
			return err
		}
		if ok {
			if msg != "" {
				d.logf("  ready after %.1fs: %s", time.Since(start).Seconds(), msg)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v waiting for %s (%s)", limit, what, msg)
		}
		if msg != last && time.Since(lastPrint) >= time.Second {
			d.logf("  waiting for %s: %s", what, msg)
			last, lastPrint = msg, time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metric scrapes one metric from the supernode (summed over its labels).
func (d *demo) metric(ctx context.Context, name string) (int64, error) {
	text, err := scrape(ctx, d.httpAddr)
	if err != nil {
		return 0, err
	}
	return parseMetric(strings.NewReader(text), name)
}

// scrape fetches the Prometheus text exposition at http://addr/metrics.
func scrape(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET http://%s/metrics: %s", addr, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return string(b), err
}

// parseMetric sums the samples of name in a Prometheus text exposition.
func parseMetric(r io.Reader, name string) (int64, error) {
	var sum float64
	found := false
	err := eachSample(r, name, func(_ string, v float64) {
		sum += v
		found = true
	})
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exposed", name)
	}
	return int64(sum), nil
}

// parseMetricBy sums the samples of name per value of label (samples
// without the label count under ""). A metric with no samples yet (a
// vector nothing has touched) gives an empty map.
func parseMetricBy(r io.Reader, name, label string) (map[string]int64, error) {
	sums := map[string]float64{}
	err := eachSample(r, name, func(labels string, v float64) {
		val := ""
		if _, rest, ok := strings.Cut(labels, label+`="`); ok {
			val, _, _ = strings.Cut(rest, `"`)
		}
		sums[val] += v
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(sums))
	for k, v := range sums {
		out[k] = int64(v)
	}
	return out, nil
}

// eachSample calls fn with the label block ("{…}" or "") and the value of
// every sample of name.
func eachSample(r io.Reader, name string, fn func(labels string, v float64)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		labels := ""
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[:end+1], rest[end+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return fmt.Errorf("metric %s: %q: %w", name, line, err)
		}
		fn(labels, v)
	}
	return sc.Err()
}

// countingHash passes writes to w (a hash) and counts them, also into
// total (the progress of all hosts).
type countingHash struct {
	w     io.Writer
	n     atomic.Int64
	total *atomic.Int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	c.total.Add(int64(n))
	return n, err
}

// downloadAll has every agent download url at once. It returns the
// results, the wall time of the whole phase and the machine's busy CPU
// seconds over it.
func (d *demo) downloadAll(ctx context.Context, url, digest string) ([]hostResult, time.Duration, float64, error) {
	n := d.o.Peers
	d.logf("\n== scenario demo-file: all %d agents download the %s file at once through their local sockets", n, fmtBytes(d.o.Size))
	results := make([]hostResult, n)
	var total atomic.Int64
	var finished atomic.Int32
	cpu0, err := report.CPUTime()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("cpu time: %w", err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			results[i] = d.download(ctx, i, url, digest, start, &total)
		}()
	}
	d.progress(&wg, start, n, &finished, &total, int64(n)*d.o.Size)
	wall := time.Since(start)
	cpu1, err := report.CPUTime()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("cpu time: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return results, wall, 0, err
	}
	return results, wall, cpu1 - cpu0, nil
}

// progress prints the swarm's progress every 2 seconds until wg is done.
func (d *demo) progress(wg *sync.WaitGroup, start time.Time, n int, finished *atomic.Int32, total *atomic.Int64, want int64) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	var lastBytes int64
	lastT := start
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			b := total.Load()
			rate := float64(b-lastBytes) / now.Sub(lastT).Seconds() / mib
			lastBytes, lastT = b, now
			d.logf("  %5.1fs  %d/%d hosts done, %s of %s delivered (%.0f MiB/s)",
				now.Sub(start).Seconds(), finished.Load(), n, fmtBytes(b), fmtBytes(want), rate)
		}
	}
}

// download is agent i's download, hashed and timed from start.
func (d *demo) download(ctx context.Context, i int, url, digest string, start time.Time, total *atomic.Int64) hostResult {
	r := hostResult{Host: fmt.Sprintf("host-%d", i+1), IP: agentIP(i + 1)}
	defer func() { r.Seconds = time.Since(start).Seconds() }()
	dl, err := peer.NewClient(d.sockets[i]).Download(ctx, peer.DownloadRequest{URL: url, Digest: digest})
	if err != nil {
		r.Err = err
		return r
	}
	defer dl.Close()
	h := sha256.New()
	cw := &countingHash{w: h, total: total}
	_, r.Err = io.CopyBuffer(cw, dl, make([]byte, 1<<20))
	r.Seconds = time.Since(start).Seconds()
	r.Bytes = cw.n.Load()
	r.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	r.Received = dl.Received()
	if r.Err == nil && dl.Length != d.o.Size {
		r.Err = fmt.Errorf("agent announced %d bytes, the file has %d", dl.Length, d.o.Size)
	}
	return r
}

func (d *demo) buildReport(results []hostResult, digest string, wall time.Duration, cpu float64, cdnEgress int64) report.Report {
	rep := report.Report{
		Scenario:             "demo-file",
		Hosts:                d.o.Peers,
		BlobBytes:            d.o.Size,
		OriginEgressBytes:    d.origin.Egress(),
		SupernodeEgressBytes: cdnEgress,
		DigestsOK:            true,
	}
	var secs []float64
	var delivered int64
	for _, r := range results {
		delivered += r.Bytes
		d.delivered += r.Bytes
		rep.P2PBytes += r.Received["peer"]
		if !r.ok(digest, d.o.Size) {
			rep.FailedHosts++
			if r.Err == nil || r.Bytes == d.o.Size {
				rep.DigestsOK = false // finished with the wrong bytes
			}
			continue
		}
		secs = append(secs, r.Seconds)
	}
	rep.Seconds = report.Summarize(secs)
	rep.LimitSeconds = report.Limit(d.o.Size, rep.HostCapMbit)
	rep.CPUSecondsPerGB = report.PerGB(cpu, delivered)
	rep.Notes = fmt.Sprintf("one machine, real processes on loopback (origin 127.0.0.1 in the demo process, "+
		"supernode 127.0.0.2, agents %s..%s); no bandwidth caps, so host_cap_mbit and origin_cap_mbit are 0 and "+
		"limit_seconds is 0 (the physical limit is blob size over the host cap, undefined without a cap). "+
		"seconds: per host from the common start to the last byte, successful hosts only. "+
		"origin_egress_bytes: body bytes the origin sent. "+
		"supernode_egress_bytes from pouchfly_cdn_upload_bytes_total at the end of this scenario; p2p_bytes = sum of bytes hosts received from peers. "+
		"cpu_seconds_per_gb: busy jiffies (user+nice+system+irq+softirq+steal) of the whole machine (%d CPUs, "+
		"shared with whatever else runs) over the download phase (%.1fs wall, %.1f CPU-s), "+
		"including the demo's own SHA-256 of every delivered byte, per 1e9 bytes delivered (%d).",
		agentIP(1), agentIP(d.o.Peers), runtime.NumCPU(), wall.Seconds(), cpu, delivered)
	return rep
}

// printTable prints one line per host.
func (d *demo) printTable(results []hostResult, digest string) {
	fmt.Fprintln(d.out)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "host\taddress\tseconds\tMiB/s\tfrom peers\tfrom supernode\tfrom origin\tdigest\t")
	for _, r := range results {
		status := "ok"
		switch {
		case r.Err != nil && d.interrupted:
			status = "stopped"
		case r.Err != nil:
			status = "FAILED"
		case !r.ok(digest, d.o.Size):
			status = "MISMATCH"
		}
		speed := "-"
		if r.Seconds > 0 && r.Bytes > 0 {
			speed = fmt.Sprintf("%.1f", float64(r.Bytes)/mib/r.Seconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t\n", r.Host, r.IP, r.Seconds, speed,
			fmtBytes(r.Received["peer"]), fmtBytes(r.Received["cdn"]), fmtBytes(r.Received["origin"]), status)
	}
	tw.Flush()
}

// printSummary prints the swarm-wide numbers.
func (d *demo) printSummary(rep report.Report, wall time.Duration, cpu float64, failures map[string]int64) {
	size := float64(d.o.Size)
	delivered := d.delivered
	share := 0.0
	if delivered > 0 {
		share = 100 * float64(rep.P2PBytes) / float64(delivered)
	}
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "file\t%s to %d hosts = %s delivered in %.2fs (%.0f MiB/s together)\n",
		fmtBytes(d.o.Size), d.o.Peers, fmtBytes(delivered), wall.Seconds(), float64(delivered)/mib/wall.Seconds())
	fmt.Fprintf(tw, "per host\tp50 %.2fs, p99 %.2fs, max %.2fs (no bandwidth caps on loopback)\n",
		rep.Seconds.P50, rep.Seconds.P99, rep.Seconds.Max)
	fmt.Fprintf(tw, "origin egress\t%s = %.2f × the file size\n", fmtBytes(rep.OriginEgressBytes), float64(rep.OriginEgressBytes)/size)
	fmt.Fprintf(tw, "supernode egress\t%s = %.2f × the file size (pouchfly_cdn_upload_bytes_total)\n",
		fmtBytes(rep.SupernodeEgressBytes), float64(rep.SupernodeEgressBytes)/size)
	fmt.Fprintf(tw, "P2P share\t%.1f%% of the delivered bytes came from other hosts (%s)\n", share, fmtBytes(rep.P2PBytes))
	if failures != nil {
		fmt.Fprintf(tw, "piece failures\t%s\n", fmtFailures(failures))
	}
	fmt.Fprintf(tw, "CPU\t%.2f CPU-seconds per GB delivered (whole machine: %.1f CPU-s over %.1fs = %.0f%% of %d CPUs)\n",
		rep.CPUSecondsPerGB, cpu, wall.Seconds(), 100*cpu/wall.Seconds()/float64(runtime.NumCPU()), runtime.NumCPU())
	ok := "yes"
	if !rep.DigestsOK || rep.FailedHosts > 0 {
		ok = fmt.Sprintf("NO: %d failed hosts, digests ok %v", rep.FailedHosts, rep.DigestsOK)
	}
	fmt.Fprintf(tw, "all hosts ok\t%s\n", ok)
	tw.Flush()
}

// printProcessCPU shows where the CPU went: the supernode, the agents and
// this process (origin and the demo's digest checks), since they started.
func (d *demo) printProcessCPU() {
	sn, err := proc.CPU(d.supernode.PID())
	if err != nil {
		return
	}
	var agents, most float64
	mostName := ""
	for _, c := range d.agents {
		v, err := proc.CPU(c.PID())
		if err != nil {
			return
		}
		agents += v
		if v > most {
			most, mostName = v, c.Name
		}
	}
	self, err := proc.CPU(0)
	if err != nil {
		return
	}
	d.logf("CPU by process over the whole run: supernode %.1fs, agents %.1fs together (%.1fs each on average, most %s %.1fs), this process (origin, registry, digest checks) %.1fs",
		sn, agents, agents/float64(len(d.agents)), mostName, most, self)
}

// scanLogs counts WARN and ERROR lines in the children's logs and shows
// the first few, so trouble that did not fail the run is still visible.
func (d *demo) scanLogs() {
	type hit struct{ who, line string }
	var hits []hit
	counts := map[string]int{}
	for _, c := range append([]*proc.Proc{d.supernode}, d.agents...) {
		if c == nil {
			continue
		}
		f, err := os.Open(c.LogPath)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			for _, lvl := range []string{"level=WARN", "level=ERROR", "panic:"} {
				if strings.Contains(l, lvl) {
					counts[lvl]++
					hits = append(hits, hit{c.Name, l})
					break
				}
			}
		}
		f.Close()
	}
	if len(hits) == 0 {
		d.logf("child logs: no warnings or errors")
		return
	}
	d.logf("child logs: %d ERROR, %d WARN, %d panic lines; the first ones:", counts["level=ERROR"], counts["level=WARN"], counts["panic:"])
	for _, h := range hits[:min(len(hits), 8)] {
		l := h.line
		if len(l) > 240 {
			l = l[:240] + "…"
		}
		d.logf("  %-9s %s", h.who, l)
	}
	if d.o.Keep {
		d.logf("  (all logs are kept in %s)", d.dir)
	} else {
		d.logf("  (rerun with --keep to keep the logs)")
	}
}

// cleanup stops every child (agents first, in parallel, then the
// supernode), closes the origin and removes the temporary directory.
func (d *demo) cleanup() {
	var running int
	for _, c := range append([]*proc.Proc{d.supernode}, d.agents...) {
		if c != nil {
			if dead, _ := c.Exited(); !dead {
				running++
			}
		}
	}
	if running > 0 {
		d.logf("stopping %d child processes…", running)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var killed []string
	stop := func(c *proc.Proc) {
		defer wg.Done()
		if c.Stop(d.o.StopTimeout) {
			mu.Lock()
			killed = append(killed, c.Name)
			mu.Unlock()
		}
	}
	for _, c := range d.agents {
		wg.Add(1)
		go stop(c)
	}
	wg.Wait()
	if d.supernode != nil {
		wg.Add(1)
		stop(d.supernode)
	}
	if running > 0 && len(killed) == 0 {
		d.logf("  all stopped")
	}
	if len(killed) > 0 {
		d.logf("  %s did not exit within %v of SIGTERM and were killed", strings.Join(killed, ", "), d.o.StopTimeout)
	}
	if d.registry != nil {
		if err := d.registry.Close(); err != nil {
			d.logf("registry: close: %v", err)
		}
	}
	if d.origin != nil {
		d.origin.Close()
	}
	if d.o.Keep {
		d.logf("kept %s", d.dir)
		return
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.logf("could not remove %s: %v", d.dir, err)
	}
}

// fmtBytes prints n in MiB (or smaller units for small values).
func fmtBytes(n int64) string {
	switch {
	case n == 0:
		return "0"
	case n < mib:
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}
