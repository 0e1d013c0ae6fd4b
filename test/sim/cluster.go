package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/report"
)

// compareCluster runs the in-process loopback cluster (test/cluster: real
// supernode, CDN and agents on 127.0.0.x) with cfg's host count, blob size
// and caps — the agents' upload_rate and download_rate at the host cap, the
// origin's per-response rate at the origin cap; the CDN's piece server has
// no rate cap in that cluster — and returns its report object. The caller
// compares it with a simulator run at the same settings and no supernode
// cap.
func compareCluster(cfg Config, w io.Writer) (Output, error) {
	dir, err := os.MkdirTemp("", "pouchfly-sim-cluster-")
	if err != nil {
		return Output{}, err
	}
	defer os.RemoveAll(dir)
	hostCap := units.Bytes(cfg.HostCap)
	c, err := cluster.New(dir, cluster.Options{Peers: cfg.Hosts, Peer: func(i int, pc *peer.Config) {
		pc.UploadRate, pc.DownloadRate = hostCap, hostCap
		pc.MaxParallelPieces, pc.PerParentPieces, pc.CDNParallelPieces = cfg.MaxParallelPieces, cfg.PerParentPieces, cfg.CDNParallelPieces
	}})
	if err != nil {
		return Output{}, err
	}
	defer c.Close()
	c.Origin.Rate = int64(cfg.OriginCap)
	data := origin.Random(cfg.Size, 4242)
	digest := c.Origin.Add("blob", data)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		return Output{}, err
	}
	fmt.Fprintf(w, "cluster: %d agents on loopback, %s ...\n", cfg.Hosts, units.Format(cfg.Size))
	cpu0, _ := report.CPUTime()
	res := c.FetchAll(ctx, peer.Request{URL: c.Origin.URL("blob"), Digest: digest})
	cpu1, _ := report.CPUTime()
	var times []float64
	var fromPeers, fromCDN int64
	failed := 0
	ok := true
	for _, r := range res {
		if r.Err != nil || r.Digest != digest {
			failed++
			ok = ok && r.Err != nil
			continue
		}
		times = append(times, r.Seconds)
		fromPeers += r.Received["peer"]
		fromCDN += r.Received["cdn"]
	}
	o := Output{Report: report.Report{
		Scenario: "cluster", Hosts: cfg.Hosts, BlobBytes: cfg.Size,
		HostCapMbit: cfg.HostCap / 125000, OriginCapMbit: cfg.OriginCap / 125000,
		OriginEgressBytes: c.Origin.Egress(), SupernodeEgressBytes: c.Node.CDNEgress(), P2PBytes: fromPeers,
		CPUSecondsPerGB: report.PerGB(cpu1-cpu0, int64(len(times))*cfg.Size),
		Seconds:         report.Summarize(times), LimitSeconds: report.Limit(cfg.Size, cfg.HostCap/125000),
		DigestsOK: ok, FailedHosts: failed,
		Notes: "in-process loopback cluster (test/cluster), agents rate-limited by upload_rate/download_rate " +
			"(token buckets with a 1 s burst), origin per-response rate, CDN piece server uncapped",
	}}
	d := &o.Detail
	d.Model = "real agents"
	d.PieceSize = pieceSizeOf(cfg.Size)
	d.SupernodeCapMbit = 0
	size := float64(cfg.Size)
	d.CDNEgressX = float64(o.SupernodeEgressBytes) / size
	d.OriginEgressX = float64(o.OriginEgressBytes) / size
	if t := float64(fromPeers + o.SupernodeEgressBytes); t > 0 {
		d.P2PShare = float64(fromPeers) / t
	}
	if len(times) > 0 {
		d.MinSeconds = report.Percentile(times, 0)
		d.P50OverLimit = o.Seconds.P50 / o.LimitSeconds
		d.MaxOverLimit = o.Seconds.Max / o.LimitSeconds
	}
	_ = fromCDN
	return o, nil
}

// compareTestbed reads a testbed benchmark report (DESIGN.md §5 objects;
// fields it does not know are ignored) and, for each p2p run, simulates the
// same host count, blob size and caps — tbf caps have a small burst (5 ms),
// so the simulator's strict caps apply; the supernode cap is cfg's — and
// returns the testbed's objects (scenario "testbed-p2p") followed by the
// simulator's ("sim-as-testbed").
func compareTestbed(path string, cfg Config, seeds int, w io.Writer) ([]Output, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rs []report.Report
	if err := json.Unmarshal(b, &rs); err != nil {
		var one report.Report
		if err1 := json.Unmarshal(b, &one); err1 != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		rs = []report.Report{one}
	}
	var outs []Output
	for _, r := range rs {
		if r.Scenario != "p2p" || r.Hosts < 1 || r.BlobBytes <= 0 || r.HostCapMbit <= 0 || r.OriginCapMbit <= 0 {
			continue
		}
		tb := Output{Report: r}
		tb.Scenario = "testbed-p2p"
		size := float64(r.BlobBytes)
		tb.Detail.Model = "testbed"
		tb.Detail.CDNEgressX = float64(r.SupernodeEgressBytes) / size
		tb.Detail.OriginEgressX = float64(r.OriginEgressBytes) / size
		if t := float64(r.P2PBytes + r.SupernodeEgressBytes); t > 0 {
			tb.Detail.P2PShare = float64(r.P2PBytes) / t
		}
		if r.LimitSeconds > 0 {
			tb.Detail.P50OverLimit, tb.Detail.MaxOverLimit = r.Seconds.P50/r.LimitSeconds, r.Seconds.Max/r.LimitSeconds
		}
		outs = append(outs, tb)
		c := cfg
		c.Hosts, c.Size = r.Hosts, r.BlobBytes
		c.HostCap, c.OriginCap = r.HostCapMbit*125000, r.OriginCapMbit*125000
		for seed := uint64(1); seed <= uint64(seeds); seed++ {
			c.Seed = seed
			fmt.Fprintf(w, "sim as testbed: %d hosts, seed %d ...\n", c.Hosts, seed)
			s, err := New(c)
			if err != nil {
				return nil, err
			}
			so := s.Run().Output()
			so.Scenario = "sim-as-testbed"
			so.Notes = fmt.Sprintf("seed %d; ", seed) + so.Notes
			outs = append(outs, so)
		}
	}
	if len(outs) == 0 {
		return nil, fmt.Errorf("%s: no p2p run", path)
	}
	return outs, nil
}
