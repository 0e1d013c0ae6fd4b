package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// profileResult is the CPU profile of one extra (profiled) download run.
type profileResult struct {
	File       string            `json:"file"`
	Run        p2pRun            `json:"run"`
	TotalSec   float64           `json:"total_seconds"`
	Flat       []string          `json:"top_flat"`
	Cum        []string          `json:"top_cum"`
	Categories []profileCategory `json:"categories"`
	Err        string            `json:"error,omitempty"`
}

type profileCategory struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Percent float64 `json:"percent"`
}

// buckets assign each sample to exactly one place of the data path, by
// the first rule (in order) that matches a frame of its stack.
var buckets = []struct {
	name string
	re   *regexp.Regexp
}{
	{"sha256: verify each piece on write (piece.copyPiece)", regexp.MustCompile(`^crypto/.*sha256\..*@@.*piece\.copyPiece`)},
	{"sha256: whole-content digest (peer.(*Stream).Read)", regexp.MustCompile(`^crypto/.*sha256\..*@@.*peer\.\(\*Stream\)\.Read`)},
	{"sha256: other callers (harness, CDN, tokens)", regexp.MustCompile(`^crypto/.*sha256\.`)},
	{"pwrite into the store file (kernel copy + ext4)", regexp.MustCompile(`poll\.\(\*FD\)\.Pwrite`)},
	{"socket read of piece bodies (kernel loopback copy)", regexp.MustCompile(`net\.\(\*conn\)\.Read@@.*(peer\.\(\*countingReader\)|piece\.)`)},
	{"sendfile / socket write (upload server)", regexp.MustCompile(`poll\.SendFile|sendfile|piece\.\(\*Handler\)`)},
	{"stream read from the store file (kernel copy)", regexp.MustCompile(`poll\.\(\*FD\)\.Read@@.*peer\.\(\*Stream\)\.Read`)},
	{"control plane (gRPC, protobuf, scheduler)", regexp.MustCompile(`google\.golang\.org/|pouchfly/scheduler\.|pouchfly/supernode\.`)},
	{"GC and allocation", regexp.MustCompile(`runtime\.gcBgMarkWorker|runtime\.mallocgc|runtime\.gcAssist|runtime\.bgsweep|runtime\.bgscavenge`)},
	{"memmove / memclr", regexp.MustCompile(`^runtime\.mem(move|clr)`)},
	{"goroutine scheduling, netpoll, futex", regexp.MustCompile(`runtime\.(schedule|findRunnable|netpoll|futex|mcall|park_m|goready|notewakeup|wakep|usleep|osyield)`)},
	{"other syscalls", regexp.MustCompile(`internal/runtime/syscall|syscall\.`)},
}

type trace struct {
	sec    float64
	frames []string
}

var durRe = regexp.MustCompile(`^([0-9.]+)(ns|us|µs|ms|s|min|h)$`)

func parseDur(v string) (float64, bool) {
	m := durRe.FindStringSubmatch(v)
	if m == nil {
		return 0, false
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	switch m[2] {
	case "ns":
		f /= 1e9
	case "us", "µs":
		f /= 1e6
	case "ms":
		f /= 1e3
	case "min":
		f *= 60
	case "h":
		f *= 3600
	}
	return f, true
}

// parseTraces reads `go tool pprof -traces` output.
func parseTraces(out string) []trace {
	var ts []trace
	var cur *trace
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-----------+") {
			if cur != nil {
				ts = append(ts, *cur)
			}
			cur = &trace{}
			continue
		}
		if cur == nil {
			continue
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if len(cur.frames) == 0 {
			if d, ok := parseDur(f[0]); ok && len(f) >= 2 {
				cur.sec = d
				cur.frames = append(cur.frames, f[1])
				continue
			}
		}
		cur.frames = append(cur.frames, f[0])
	}
	if cur != nil && len(cur.frames) > 0 {
		ts = append(ts, *cur)
	}
	return ts
}

// bucketOf matches the rules against "leaf@@caller@@…@@root": a rule
// anchored with ^ looks at the leaf, others at any frame.
func bucketOf(t trace) string {
	joined := strings.Join(t.frames, "@@")
	for _, b := range buckets {
		if b.re.MatchString(joined) {
			return b.name
		}
	}
	return "other"
}

// analyzeProfile fills p from `go tool pprof` text reports.
func analyzeProfile(goBin string, p *profileResult) {
	run := func(args ...string) (string, error) {
		cmd := exec.Command(goBin, append([]string{"tool", "pprof"}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("go tool pprof %v: %v", args, err)
		}
		return string(out), nil
	}
	body := func(out string, n int) []string {
		var lines []string
		in := false
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "flat ") {
				in = true
				lines = append(lines, strings.TrimRight(l, " "))
				continue
			}
			if in && strings.TrimSpace(l) != "" && len(lines) <= n {
				lines = append(lines, strings.TrimRight(l, " "))
			}
		}
		return lines
	}
	out, err := run("-top", "-nodecount=20", p.File)
	if err != nil {
		p.Err = err.Error()
		return
	}
	p.Flat = body(out, 20)
	if out, err := run("-top", "-cum", "-nodecount=30", p.File); err == nil {
		p.Cum = body(out, 30)
	}
	out, err = run("-traces", p.File)
	if err != nil {
		p.Err = err.Error()
		return
	}
	sums := map[string]float64{}
	for _, t := range parseTraces(out) {
		p.TotalSec += t.sec
		sums[bucketOf(t)] += t.sec
	}
	for _, b := range append(buckets, struct {
		name string
		re   *regexp.Regexp
	}{"other", nil}) {
		if v := sums[b.name]; v > 0 {
			p.Categories = append(p.Categories, profileCategory{Name: b.name, Seconds: v, Percent: 100 * v / p.TotalSec})
		}
	}
}
