package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

func gbps(v float64) string { return fmt.Sprintf("%.2f GB/s", v/1e9) }

func mib(v int64) string { return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20)) }

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func split(m map[string]int64) string {
	var total int64
	for _, v := range m {
		total += v
	}
	if total == 0 {
		return "-"
	}
	var parts []string
	for _, k := range []string{"peer", "cdn", "origin"} {
		parts = append(parts, fmt.Sprintf("%s %.1f%%", k, 100*float64(m[k])/float64(total)))
	}
	return strings.Join(parts, ", ")
}

func printTable(out io.Writer, m Machine, size int64, runs int, p2p *p2pResult, rss *rssResult, sched []schedBench) {
	fmt.Fprintf(out, "\nPouchfly bench-local — %s task, loopback, no caps\n", fmtBytes(size))
	fmt.Fprintf(out, "machine: nproc %d, %s, sha_ni %s (sha256 on one core: %s), kernel %s, %s; data dir %s on %s (tmpfs: %v); load at start %s\n",
		m.NProc, m.CPUModel, yes(m.SHANI), gbps(m.SHA256Bps), m.Kernel, m.GoVersion, m.DataDir, m.DataFS, m.Tmpfs, m.LoadAvg)
	fmt.Fprintf(out, "memory probes: page-cache write of 1 GiB %.2f CPU-s/GB with fresh pages, %.2f recycled; touching idle memory %.2f µs/page after 5 s idle vs %.3f hot; virtio-balloon free page reporting: %v\n\n",
		m.PageCacheFreshCPUPerGB, m.PageCacheRecycledCPUPerGB, m.ColdTouchUsPerPage, m.HotTouchUsPerPage, m.BalloonFreePageReporting)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "metric\tvalue\ttarget\tmet")
	fmt.Fprintln(w, "------\t-----\t------\t---")
	if p2p != nil {
		best, med := bestMedian(p2p.Runs)
		var secs, cpu, lb, pcpu, fbs, bg, pd []float64
		recv := map[string]int64{}
		for _, r := range p2p.Runs {
			if r.Err != "" || !r.DigestOK {
				continue
			}
			secs = append(secs, r.Seconds)
			cpu = append(cpu, r.CPUSecondsPerGB)
			lb = append(lb, r.MachineLessBackgroundPerGB)
			pcpu = append(pcpu, r.ProcessCPUSecondsPerGB)
			fbs = append(fbs, r.FirstByteSeconds)
			bg = append(bg, r.BackgroundCores)
			pd = append(pd, r.PiecesDoneSeconds)
			for k, v := range r.Received {
				recv[k] += v
			}
		}
		fmt.Fprintf(w, "p2p throughput (in-process cluster), best of %d\t%s\t≥ 1.00 GB/s\t%s\n", len(p2p.Runs), gbps(best), yes(best >= targetBps))
		fmt.Fprintf(w, "p2p throughput, median\t%s\t\t\n", gbps(med))
		for _, r := range p2p.Warmup {
			fmt.Fprintf(w, "p2p warm-up run (not in the figures)\t%s, %.2f s/GB machine\t\t%s\n", gbps(r.BytesPerSec), r.CPUSecondsPerGB, errNote(r.Err))
		}
		fmt.Fprintf(w, "p2p seconds per run (min / median / max)\t%.2f / %.2f / %.2f s\t\t\n",
			percentile(append([]float64(nil), secs...), 0), percentile(append([]float64(nil), secs...), 50), percentile(append([]float64(nil), secs...), 100))
		fmt.Fprintf(w, "runs ok (digest verified)\t%d of %d\t\t\n", len(secs), len(p2p.Runs))
		fmt.Fprintf(w, "time to first byte (median)\t%.0f ms\t\t\n", 1000*percentile(fbs, 50))
		pdm := percentile(pd, 50)
		pdr := 0.0
		if pdm > 0 {
			pdr = float64(size) / pdm
		}
		fmt.Fprintf(w, "all pieces stored at (median; the stream ends later)\t%.2f s (%s)\t\t\n", pdm, gbps(pdr))
		contended := 0
		for _, v := range bg {
			if v >= 0.5 {
				contended++
			}
		}
		fmt.Fprintf(w, "other load before runs (busy cores, max)\t%.2f of %d (%d of %d runs contended ≥ 0.5)\t\t\n", percentile(append([]float64(nil), bg...), 100), m.NProc, contended, len(bg))
		fmt.Fprintf(w, "CPU-seconds per GB, whole machine (median)\t%.2f s/GB\t\t\n", percentile(cpu, 50))
		if percentile(append([]float64(nil), bg...), 100) < 1 {
			fmt.Fprintf(w, "CPU-seconds per GB, machine less other load (median)\t%.2f s/GB\t\t\n", percentile(lb, 50))
		} else {
			fmt.Fprintf(w, "CPU-seconds per GB, machine less other load\tn/a (others kept ≥ 1 core busy)\t\t\n")
		}
		fmt.Fprintf(w, "CPU-seconds per GB, bench process (median)\t%.2f s/GB\t\t\n", percentile(pcpu, 50))
		fmt.Fprintf(w, "bytes received by the measured peer\t%s\t\t\n", split(recv))
		fmt.Fprintf(w, "CDN in the swarm during measured runs\t%v\t\t\n", p2p.CDNDuringP2P)
		fmt.Fprintf(w, "seed download (origin→CDN→peer 0)\t%.2f s, %s\t\t\n", p2p.SeedSeconds, split(p2p.SeedReceived))
		if h := p2p.HarnessFetch; h != nil {
			fmt.Fprintf(w, "p2p via cluster.Fetch (+sha256 in consumer)\t%s, %.2f s/GB\t\t%s\n", gbps(h.BytesPerSec), h.CPUSecondsPerGB, errNote(h.Err))
		}
		if h := p2p.NoDigest; h != nil {
			fmt.Fprintf(w, "ablation: request without digest (no 2nd sha256 pass)\t%s, %.2f s/GB process\t\t%s\n", gbps(h.BytesPerSec), h.ProcessCPUSecondsPerGB, errNote(h.Err))
		}
		if p := p2p.Profile; p != nil {
			fmt.Fprintf(w, "profiled run (pprof on)\t%s\t\t\n", gbps(p.Run.BytesPerSec))
		}
	}
	if rss != nil {
		fmt.Fprintf(w, "agent A peak RSS (VmHWM), downloading from CDN\t%s\t≤ 64 MiB\t%s\n", mib(rss.ASeed.PeakRSS), yes(rss.ASeed.PeakRSS > 0 && rss.ASeed.PeakRSS <= targetRSS))
		fmt.Fprintf(w, "agent A peak RSS (VmHWM), serving B\t%s\t≤ 64 MiB\t%s\n", mib(rss.AServe.PeakRSS), yes(rss.AServe.PeakRSS > 0 && rss.AServe.PeakRSS <= targetRSS))
		fmt.Fprintf(w, "agent B peak RSS (VmHWM), downloading 1 task\t%s\t≤ 64 MiB\t%s\n", mib(rss.B.PeakRSS), yes(rss.B.PeakRSS > 0 && rss.B.PeakRSS <= targetRSS))
		fmt.Fprintf(w, "supernode peak RSS during B's download\t%s\t\t\n", mib(rss.Supernode.PeakRSS))
		fmt.Fprintf(w, "real-process p2p throughput (B via its socket)\t%s (first byte %.0f ms, other load %.2f cores)\t\t%s\n", gbps(rss.BytesPerSec), 1000*rss.FirstByte, rss.Background, errNote(rss.Err))
		fmt.Fprintf(w, "real-process CPU: A / B (of it kernel) / supernode / client\t%.2f / %.2f (%.2f) / %.2f / %.2f s\t\t\n",
			rss.AServe.CPUSeconds, rss.B.CPUSeconds, rss.B.SysSeconds, rss.Supernode.CPUSeconds, rss.ClientCPUSeconds)
		fmt.Fprintf(w, "real-process CPU-seconds per GB, whole machine\t%.2f s/GB\t\t\n", rss.CPUSecondsPerGB)
		fmt.Fprintf(w, "bytes received by agent B\t%s\t\t\n", split(rss.Received))
	}
	for _, s := range sched {
		extra := ""
		if s.BytesPerOp > 0 || s.AllocsPerOp > 0 {
			extra = fmt.Sprintf(" (%.0f B/op, %.0f allocs/op)", s.BytesPerOp, s.AllocsPerOp)
		}
		name := strings.TrimPrefix(s.Name, "Benchmark")
		if name == "Register1000" {
			name += " (op = 1000 registrations)"
		}
		fmt.Fprintf(w, "scheduler %s\t%s ns/op%s\t\t\n", name, fmtNs(s.NsPerOp), extra)
	}
	w.Flush()
	if p2p != nil && p2p.Profile != nil {
		printProfile(out, p2p.Profile)
	}
	if p2p != nil && p2p.NoDigestProfile != nil {
		printProfile(out, p2p.NoDigestProfile)
	}
	fmt.Fprintln(out)
}

func errNote(e string) string {
	if e == "" {
		return ""
	}
	if len(e) > 60 {
		e = e[:60] + "…"
	}
	return "error: " + e
}

func fmtNs(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func printProfile(out io.Writer, p *profileResult) {
	fmt.Fprintf(out, "\nCPU profile of one extra download, %s (%s): %.2f s of samples over %.2f s wall (%s)\n", p.Run.Consumer, p.File, p.TotalSec, p.Run.Seconds, gbps(p.Run.BytesPerSec))
	fmt.Fprintln(out, "where the CPU goes (each sample counted once, by the first matching rule):")
	for _, c := range p.Categories {
		fmt.Fprintf(out, "  %-55s %6.2fs %5.1f%%\n", c.Name, c.Seconds, c.Percent)
	}
	fmt.Fprintln(out, "top functions (flat):")
	for _, l := range p.Flat {
		fmt.Fprintln(out, "  "+l)
	}
	if p.Err != "" {
		fmt.Fprintln(out, "  profile analysis failed:", p.Err)
	}
}
