package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/test/registry"
	"github.com/pouchfly/pouchfly/test/report"
)

// The image scenario: a distribution registry with token auth in this
// process, a generated multi-platform image pushed to it, and every host
// pulling the linux/amd64 image through its own agent's mirror at once.

const (
	imageRepo = "demo/app" // public: pulls anonymously (the token server still hands out tokens)
	imageTag  = "v1"
)

// startRegistry starts the registry on registryIP, generates the image and
// pushes it, then zeroes the registry's counters.
func (d *demo) startRegistry(ctx context.Context) error {
	o := d.o
	reg, err := registry.Start(ctx, registry.Options{
		Addr: net.JoinHostPort(registryIP, "0"),
		Dir:  filepath.Join(d.dir, "registry"),
		Auth: registry.AuthToken,
	})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	d.registry = reg
	if o.trace != nil {
		o.trace.Listeners = append(o.trace.Listeners, reg.Host())
	}
	d.logf("generating an image: %d layers of %s per platform (linux/amd64, linux/arm64; the last layer per platform, the others shared)…",
		o.ImageLayers, formatSizeRange(o.ImageLayerMin, o.ImageLayerMax))
	img, err := registry.GenerateImage(registry.ImageOptions{
		Layers:       o.ImageLayers,
		MinLayerSize: o.ImageLayerMin,
		MaxLayerSize: o.ImageLayerMax,
		Seed:         o.Seed,
	})
	if err != nil {
		return err
	}
	d.image, d.platform = img, img.Platform("linux", "amd64")
	if d.platform == nil {
		return fmt.Errorf("generated image has no linux/amd64 manifest")
	}
	if err := reg.Push(ctx, imageRepo, imageTag, img); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	reg.ResetStats()
	d.logf("registry   %s (token auth, realm %s): pushed %s/%s:%s, %d blobs, %s; linux/amd64 = %d layers + config = %s",
		reg.URL(), reg.TokenRealm(), reg.Host(), imageRepo, imageTag, len(img.Blobs), fmtBytes(img.BlobBytes()),
		len(d.platform.Manifest.Layers), fmtBytes(d.platform.BlobBytes()))
	return nil
}

// blobPull is one host's fetch of one blob.
type blobPull struct {
	Seconds float64 // from its GET to its last byte verified
	Bytes   int64
	OK      bool
}

// imageResult is one host's pull.
type imageResult struct {
	Host, IP, Mirror string
	// Seconds from the common start to the last blob verified.
	Seconds float64
	// Bytes of blobs (config and layers) received and verified; Got
	// counts every blob byte received (also of blobs cut short).
	Bytes, Got int64
	Blobs      map[digest.Digest]blobPull
	// Received is what the agent downloaded over the pull, by source
	// (peer, cdn, origin), from its metrics; nil when they could not be
	// read. ViaMirror is what its mirror sent to clients (-1: unknown).
	// Failures are its failed piece downloads by kind (retried elsewhere).
	Received  map[string]int64
	Failures  map[string]int64
	ViaMirror int64
	// Mismatch is set when some content did not match its digest.
	Mismatch bool
	Err      error
}

// agentCounters are the agent metrics the image scenario compares before
// and after the pull.
type agentCounters struct {
	received map[string]int64 // pouchfly_peer_download_bytes_total by source
	failures map[string]int64 // pouchfly_peer_piece_failures_total by kind
	mirror   int64            // pouchfly_mirror_blob_bytes_total
}

func (d *demo) agentCounters(ctx context.Context, i int) (agentCounters, error) {
	text, err := scrape(ctx, d.metrics[i])
	if err != nil {
		return agentCounters{}, err
	}
	var c agentCounters
	if c.received, err = parseMetricBy(strings.NewReader(text), "pouchfly_peer_download_bytes_total", "source"); err != nil {
		return c, err
	}
	if c.failures, err = parseMetricBy(strings.NewReader(text), "pouchfly_peer_piece_failures_total", "kind"); err != nil {
		return c, err
	}
	c.mirror, err = parseMetric(strings.NewReader(text), "pouchfly_mirror_blob_bytes_total")
	return c, err
}

// imageScenario runs the pull, prints its tables and summary and returns
// the results and the report. snErr is trouble reading the supernode's
// metrics; err is an interruption (the results are then partial and no
// report is made).
func (d *demo) imageScenario(ctx context.Context) (results []imageResult, rep report.Report, snErr, err error) {
	n := d.o.Peers
	plat := d.platform
	d.logf("\n== scenario demo-image: all %d hosts pull %s/%s:%s (linux/amd64, %d blobs, %s) through their own mirror at once, %d blobs at a time",
		n, d.registry.Host(), imageRepo, imageTag, len(plat.Manifest.Layers)+1, fmtBytes(plat.BlobBytes()), d.o.ImageParallel)

	before := make([]agentCounters, n)
	beforeErr := make([]error, n)
	for i := range n {
		before[i], beforeErr[i] = d.agentCounters(ctx, i)
	}
	cdn0, cdnErr := d.metric(ctx, cdnEgressMetric)
	// Since the push only the readiness probes (GET /v2/ through the
	// mirrors) reached the registry: count from here.
	d.registry.ResetStats()

	results = make([]imageResult, n)
	var total atomic.Int64
	var finished atomic.Int32
	cpu0, err := report.CPUTime()
	if err != nil {
		return nil, rep, nil, fmt.Errorf("cpu time: %w", err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			results[i] = d.pullImage(ctx, i, start, &total)
		}()
	}
	d.progress(&wg, start, n, &finished, &total, int64(n)*plat.BlobBytes())
	wall := time.Since(start)
	cpu1, err := report.CPUTime()
	if err != nil {
		return nil, rep, nil, fmt.Errorf("cpu time: %w", err)
	}
	if err := ctx.Err(); err != nil {
		d.interrupted = true
		d.logf("\nstopped before every host finished; where they were:")
		d.printImageTable(results)
		return results, rep, nil, err
	}
	stats := d.registry.Stats()

	for i := range results {
		results[i].ViaMirror = -1
		after, err := d.agentCounters(ctx, i)
		if err != nil || beforeErr[i] != nil {
			continue
		}
		results[i].ViaMirror = after.mirror - before[i].mirror
		results[i].Received = map[string]int64{}
		for src, v := range after.received {
			results[i].Received[src] = v - before[i].received[src]
		}
		results[i].Failures = map[string]int64{}
		for kind, v := range after.failures {
			if v > before[i].failures[kind] {
				results[i].Failures[kind] = v - before[i].failures[kind]
			}
		}
	}
	cdn1, err := d.metric(ctx, cdnEgressMetric)
	if cdnErr == nil {
		cdnErr = err
	}
	if cdnErr != nil {
		snErr = fmt.Errorf("supernode metrics: %w", cdnErr)
	}

	rep = d.buildImageReport(results, stats, wall, cpu1-cpu0, cdn1-cdn0)
	d.printImageTable(results)
	d.printLayerTable(results, stats)
	d.printImageSummary(rep, results, stats, wall, cpu1-cpu0)
	return results, rep, snErr, nil
}

// hostHTTPClient is host i's HTTP client: its own connection pool, dialing
// from the host's address as a runtime on that host would.
func (d *demo) hostHTTPClient(i int) *http.Client {
	dialer := &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(agentIP(i + 1))},
		Timeout:   5 * time.Second,
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: d.o.ImageParallel + 2,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		ReadBufferSize:      256 << 10,
	}}
}

// pullImage is host i's pull through its mirror, like a container runtime:
// the index by tag, the linux/amd64 manifest by digest, then config and
// layers, ImageParallel at a time. Every digest is checked.
func (d *demo) pullImage(ctx context.Context, i int, start time.Time, total *atomic.Int64) (r imageResult) {
	r = imageResult{Host: fmt.Sprintf("host-%d", i+1), IP: agentIP(i + 1), Mirror: d.mirrors[i],
		Blobs: map[digest.Digest]blobPull{}, ViaMirror: -1}
	defer func() {
		r.Seconds = time.Since(start).Seconds()
		if errors.Is(r.Err, errdefs.ErrDigestMismatch) {
			r.Mismatch = true
		}
	}()
	hc := d.hostHTTPClient(i)
	defer hc.CloseIdleConnections()
	c, err := registry.NewClient("http://"+r.Mirror, registry.Credentials{}, hc)
	if err != nil {
		r.Err = err
		return r
	}

	// The index, by tag: the client cannot check a tag's digest; we can.
	data, _, dg, err := c.GetManifest(ctx, imageRepo, imageTag)
	if err != nil {
		r.Err = fmt.Errorf("index: %w", err)
		return r
	}
	if want := d.image.IndexDescriptor.Digest; dg != want {
		r.Err = fmt.Errorf("index %s:%s is %s, pushed %s: %w", imageRepo, imageTag, dg, want, errdefs.ErrDigestMismatch)
		return r
	}
	var index ocispec.Index
	if err := json.Unmarshal(data, &index); err != nil {
		r.Err = fmt.Errorf("index: %w", err)
		return r
	}
	var desc *ocispec.Descriptor
	for k, m := range index.Manifests {
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" {
			desc = &index.Manifests[k]
			break
		}
	}
	if desc == nil {
		r.Err = fmt.Errorf("index: no linux/amd64 manifest")
		return r
	}

	// The manifest, by digest (GetManifest checks it).
	if data, _, _, err = c.GetManifest(ctx, imageRepo, desc.Digest.String()); err != nil {
		r.Err = fmt.Errorf("manifest: %w", err)
		return r
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(data, &man); err != nil {
		r.Err = fmt.Errorf("manifest: %w", err)
		return r
	}

	// Config and layers, started in manifest order, ImageParallel at a
	// time; the first failure stops the host's other fetches.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, d.o.ImageParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
blobs:
	for _, b := range append([]ocispec.Descriptor{man.Config}, man.Layers...) {
		select {
		case sem <- struct{}{}:
		case <-hctx.Done():
			break blobs
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			bp, err := pullBlob(hctx, c, b, total)
			mu.Lock()
			defer mu.Unlock()
			r.Blobs[b.Digest] = bp
			r.Got += bp.Bytes
			if bp.OK {
				r.Bytes += bp.Bytes
			}
			if err != nil && r.Err == nil {
				r.Err = fmt.Errorf("blob %s (%s): %w", shortDigest(b.Digest), fmtBytes(b.Size), err)
				cancel()
			}
		}()
	}
	wg.Wait()
	if r.Err == nil {
		// Every blob ended; fail if the context did (an interrupted pull).
		r.Err = ctx.Err()
	}
	return r
}

// pullBlob fetches one blob, streaming it through SHA-256 (the progress
// counter sees every byte as it arrives).
func pullBlob(ctx context.Context, c *registry.Client, desc ocispec.Descriptor, total *atomic.Int64) (bp blobPull, err error) {
	t0 := time.Now()
	defer func() { bp.Seconds = time.Since(t0).Seconds() }()
	resp, err := c.Do(ctx, imageRepo, http.MethodGet, "/v2/"+imageRepo+"/blobs/"+desc.Digest.String(), nil, nil)
	if err != nil {
		return bp, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return bp, fmt.Errorf("GET: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	h := sha256.New()
	cw := &countingHash{w: h, total: total}
	_, err = io.CopyBuffer(cw, resp.Body, make([]byte, 256<<10))
	bp.Bytes = cw.n.Load()
	if err != nil {
		return bp, fmt.Errorf("after %d bytes: %w", bp.Bytes, err)
	}
	got := digest.NewDigest(digest.SHA256, h)
	if got != desc.Digest || bp.Bytes != desc.Size {
		return bp, fmt.Errorf("got %d bytes with digest %s, want %d bytes: %w", bp.Bytes, got, desc.Size, errdefs.ErrDigestMismatch)
	}
	bp.OK = true
	return bp, nil
}

// blobEgress is what the registry sent for blob d (any repository).
func blobEgress(st registry.Stats, d digest.Digest) int64 {
	var n int64
	for path, ps := range st.Paths {
		if strings.HasSuffix(path, "/blobs/"+d.String()) {
			n += ps.Bytes
		}
	}
	return n
}

// blobTimes are the seconds of the hosts that fetched blob d.
func blobTimes(results []imageResult, d digest.Digest) []float64 {
	var xs []float64
	for _, r := range results {
		if bp, ok := r.Blobs[d]; ok && bp.OK {
			xs = append(xs, bp.Seconds)
		}
	}
	return xs
}

func (d *demo) buildImageReport(results []imageResult, st registry.Stats, wall time.Duration, cpu float64, cdnEgress int64) report.Report {
	plat := d.platform
	rep := report.Report{
		Scenario:             "demo-image",
		Hosts:                d.o.Peers,
		BlobBytes:            plat.BlobBytes(),
		OriginEgressBytes:    st.BlobBytes,
		SupernodeEgressBytes: cdnEgress,
		DigestsOK:            true,
	}
	var secs []float64
	var delivered int64
	for _, r := range results {
		delivered += r.Bytes
		rep.P2PBytes += r.Received["peer"]
		if r.Mismatch {
			rep.DigestsOK = false
		}
		if r.Err != nil {
			rep.FailedHosts++
			continue
		}
		secs = append(secs, r.Seconds)
	}
	rep.Seconds = report.Summarize(secs)
	rep.LimitSeconds = report.Limit(rep.BlobBytes, rep.HostCapMbit)
	rep.CPUSecondsPerGB = report.PerGB(cpu, delivered)
	layers := make([]report.Layer, 0, len(plat.Manifest.Layers))
	for _, l := range plat.Manifest.Layers {
		layers = append(layers, report.Layer{
			Digest:              l.Digest.String(),
			Bytes:               l.Size,
			RegistryEgressBytes: blobEgress(st, l.Digest),
			Seconds:             report.Summarize(blobTimes(results, l.Digest)),
		})
	}
	rep.Layers = &layers
	rep.Notes = fmt.Sprintf("one machine, real processes on loopback: a distribution registry with token auth in the demo process "+
		"(%s), supernode 127.0.0.2, agents %s..%s each serving its registry mirror on its own address; every host pulls "+
		"%s:%s for linux/amd64 through its own mirror at once as a runtime would (index by tag, manifest by digest, then config "+
		"and layers %d at a time, every digest checked; anonymous, bearer token from the registry's token server). "+
		"The image has %d layers per platform (linux/amd64, linux/arm64; the last one per platform), %s each. "+
		"No bandwidth caps, so host_cap_mbit, origin_cap_mbit and limit_seconds are 0. "+
		"blob_bytes: config + layers of linux/amd64. origin_egress_bytes: registry body bytes of blob GETs "+
		"(manifests %d bytes and tokens not included; %d registry requests in all). "+
		"supernode_egress_bytes: increase of pouchfly_cdn_upload_bytes_total over the pull; p2p_bytes: increase of the agents' "+
		"pouchfly_peer_download_bytes_total{source=\"peer\"}. seconds: per host from the common start to its last blob verified, "+
		"successful hosts only; layers[].seconds: per host from that layer's GET to its last byte verified. "+
		"cpu_seconds_per_gb: busy jiffies of the whole machine (%d CPUs, shared with whatever else runs) over the pull "+
		"(%.1fs wall, %.1f CPU-s), including the registry and the demo's own SHA-256, per 1e9 blob bytes delivered (%d).",
		d.registry.Host(), agentIP(1), agentIP(d.o.Peers), imageRepo, imageTag, d.o.ImageParallel,
		d.o.ImageLayers, formatSizeRange(d.o.ImageLayerMin, d.o.ImageLayerMax),
		st.ManifestBytes, st.Requests, runtime.NumCPU(), wall.Seconds(), cpu, delivered)
	return rep
}

// printImageTable prints one line per host.
func (d *demo) printImageTable(results []imageResult) {
	fmt.Fprintln(d.out)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "host\tmirror\tseconds\tMiB/s\tfrom peers\tfrom supernode\tfrom origin\tvia mirror\tdigests\t")
	for _, r := range results {
		status := "ok"
		switch {
		case r.Mismatch:
			status = "MISMATCH"
		case r.Err != nil && d.interrupted:
			status = "stopped"
		case r.Err != nil:
			status = "FAILED"
		}
		speed := "-"
		if r.Seconds > 0 && r.Got > 0 {
			speed = fmt.Sprintf("%.1f", float64(r.Got)/mib/r.Seconds)
		}
		from := func(src string) string {
			if r.Received == nil {
				return "?"
			}
			return fmtBytes(r.Received[src])
		}
		via := "?"
		if r.ViaMirror >= 0 {
			via = fmtBytes(r.ViaMirror)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Host, r.Mirror, r.Seconds, speed,
			from("peer"), from("cdn"), from("origin"), via, status)
	}
	tw.Flush()
}

// printLayerTable prints one line per blob of the linux/amd64 image.
func (d *demo) printLayerTable(results []imageResult, st registry.Stats) {
	fmt.Fprintln(d.out)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "blob\tdigest\tsize\thosts ok\tp50 s\tmax s\tregistry GETs\tregistry egress\t× size\t")
	line := func(name string, desc ocispec.Descriptor) {
		xs := blobTimes(results, desc.Digest)
		sum := report.Summarize(xs)
		eg := blobEgress(st, desc.Digest)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%.2f\t%.2f\t%d\t%s\t%.2f\t\n", name, shortDigest(desc.Digest), fmtBytes(desc.Size),
			len(xs), len(results), sum.P50, sum.Max, st.BlobGets[desc.Digest], fmtBytes(eg), float64(eg)/float64(max(desc.Size, 1)))
	}
	for k, l := range d.platform.Manifest.Layers {
		line(fmt.Sprintf("layer %d", k+1), l)
	}
	line("config", d.platform.Manifest.Config)
	tw.Flush()
	fmt.Fprintln(d.out, "(seconds per host from the blob's GET to its last byte verified)")
}

// printImageSummary prints the swarm-wide numbers of the pull.
func (d *demo) printImageSummary(rep report.Report, results []imageResult, st registry.Stats, wall time.Duration, cpu float64) {
	size := float64(rep.BlobBytes)
	var delivered int64
	for _, r := range results {
		delivered += r.Bytes
	}
	share := 0.0
	if delivered > 0 {
		share = 100 * float64(rep.P2PBytes) / float64(delivered)
	}
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "image\t%s/%s:%s linux/amd64, %s of blobs to %d hosts = %s delivered in %.2fs (%.0f MiB/s together)\n",
		d.registry.Host(), imageRepo, imageTag, fmtBytes(rep.BlobBytes), d.o.Peers, fmtBytes(delivered), wall.Seconds(),
		float64(delivered)/mib/wall.Seconds())
	fmt.Fprintf(tw, "per host\tp50 %.2fs, p99 %.2fs, max %.2fs (no bandwidth caps on loopback)\n",
		rep.Seconds.P50, rep.Seconds.P99, rep.Seconds.Max)
	fmt.Fprintf(tw, "registry egress\t%s of blobs = %.2f × the image's blob bytes (plus %s of manifests; %d requests, %d for tokens)\n",
		fmtBytes(rep.OriginEgressBytes), float64(rep.OriginEgressBytes)/size, fmtBytes(st.ManifestBytes), st.Requests, st.TokenRequests)
	fmt.Fprintf(tw, "supernode egress\t%s = %.2f × the image's blob bytes (pouchfly_cdn_upload_bytes_total over the pull)\n",
		fmtBytes(rep.SupernodeEgressBytes), float64(rep.SupernodeEgressBytes)/size)
	fmt.Fprintf(tw, "P2P share\t%.1f%% of the delivered bytes came from other hosts (%s)\n", share, fmtBytes(rep.P2PBytes))
	failures := map[string]int64{}
	for _, r := range results {
		for k, v := range r.Failures {
			failures[k] += v
		}
	}
	fmt.Fprintf(tw, "piece failures\t%s\n", fmtFailures(failures))
	fmt.Fprintf(tw, "CPU\t%.2f CPU-seconds per GB delivered (whole machine: %.1f CPU-s over %.1fs = %.0f%% of %d CPUs)\n",
		rep.CPUSecondsPerGB, cpu, wall.Seconds(), 100*cpu/wall.Seconds()/float64(runtime.NumCPU()), runtime.NumCPU())
	ok := "yes"
	if !rep.DigestsOK || rep.FailedHosts > 0 {
		ok = fmt.Sprintf("NO: %d failed hosts, digests ok %v", rep.FailedHosts, rep.DigestsOK)
	}
	fmt.Fprintf(tw, "all hosts ok\t%s\n", ok)
	tw.Flush()
}

// shortDigest is "sha256:" and the first 12 hex digits.
func shortDigest(d digest.Digest) string {
	enc := d.Encoded()
	return string(d.Algorithm()) + ":" + enc[:min(12, len(enc))]
}

// fmtFailures prints piece failures by kind ("none", or "3: network 2,
// not_found 1 (…)").
func fmtFailures(m map[string]int64) string {
	var total int64
	var kinds []string
	for k, v := range m {
		if v > 0 {
			total += v
			kinds = append(kinds, fmt.Sprintf("%s %d", strings.ToLower(strings.TrimPrefix(k, "FAILURE_")), v))
		}
	}
	if total == 0 {
		return "none"
	}
	sort.Strings(kinds)
	return fmt.Sprintf("%d: %s (pieces fetched again from another parent; not errors)", total, strings.Join(kinds, ", "))
}

// swarmFailures sums the agents' failed piece downloads by kind (nil when
// some agent's metrics could not be read).
func (d *demo) swarmFailures(ctx context.Context) map[string]int64 {
	sum := map[string]int64{}
	for i := range d.agents {
		text, err := scrape(ctx, d.metrics[i])
		if err != nil {
			return nil
		}
		m, err := parseMetricBy(strings.NewReader(text), "pouchfly_peer_piece_failures_total", "kind")
		if err != nil {
			return nil
		}
		for k, v := range m {
			sum[k] += v
		}
	}
	return sum
}
