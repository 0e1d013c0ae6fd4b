// Package report is the result format shared by the demo, the benchmarks
// and the chaos runs (DESIGN.md §5, docs/ARCHITECTURE.md "Reports"): one
// JSON object per run, percentiles of per-host times, and the machine's
// CPU time from /proc/stat.
package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Seconds are percentiles of per-host completion times.
type Seconds struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Report is one scenario run.
type Report struct {
	// Scenario names the run ("demo", "p2p", "chaos-…").
	Scenario string `json:"scenario"`
	// Hosts is the number of hosts that downloaded the blob.
	Hosts int `json:"hosts"`
	// BlobBytes is the size of the blob.
	BlobBytes int64 `json:"blob_bytes"`
	// HostCapMbit is each host's bandwidth cap (0: none).
	HostCapMbit float64 `json:"host_cap_mbit"`
	// OriginCapMbit is the origin's bandwidth cap (0: none).
	OriginCapMbit float64 `json:"origin_cap_mbit"`
	// OriginEgressBytes is what the origin sent, nothing else.
	OriginEgressBytes int64 `json:"origin_egress_bytes"`
	// SupernodeEgressBytes is what the supernode's CDN sent.
	SupernodeEgressBytes int64 `json:"supernode_egress_bytes"`
	// P2PBytes is what hosts received from other hosts.
	P2PBytes int64 `json:"p2p_bytes"`
	// CPUSecondsPerGB is the whole machine's CPU time over the run per GB
	// (1e9 bytes) delivered to all hosts together.
	CPUSecondsPerGB float64 `json:"cpu_seconds_per_gb"`
	// Seconds are percentiles of the hosts' download times.
	Seconds Seconds `json:"seconds"`
	// LimitSeconds is the physical limit, BlobBytes over the host cap
	// (0 without a cap): see Limit.
	LimitSeconds float64 `json:"limit_seconds"`
	// DigestsOK is true when every host that finished got the right bytes.
	DigestsOK bool `json:"digests_ok"`
	// FailedHosts counts hosts whose download failed or mismatched.
	FailedHosts int `json:"failed_hosts"`
	// Notes is free text (conditions, caveats).
	Notes string `json:"notes"`
	// Layers, in image scenarios, are the per-layer results (absent from
	// the JSON otherwise). It is a pointer so that Report stays
	// comparable with ==; == compares it by identity, so compare the
	// layers themselves (or use reflect.DeepEqual) when both have some.
	Layers *[]Layer `json:"layers,omitempty"`
}

// Layer is one image layer's result in an image scenario.
type Layer struct {
	// Digest is the layer blob's digest (sha256:…).
	Digest string `json:"digest"`
	// Bytes is the blob's size.
	Bytes int64 `json:"bytes"`
	// RegistryEgressBytes is what the registry sent for this blob.
	RegistryEgressBytes int64 `json:"registry_egress_bytes"`
	// Seconds are percentiles over the hosts of the time to fetch this
	// layer (as the scenario's notes define it).
	Seconds Seconds `json:"seconds"`
}

// Limit is the scenario's physical limit in seconds: blob bytes over the
// host cap (capMbit × 125000 bytes/s). It is 0 when capMbit is 0 (no cap).
func Limit(blobBytes int64, capMbit float64) float64 {
	if capMbit <= 0 {
		return 0
	}
	return float64(blobBytes) / (capMbit * 125000)
}

// Percentile returns the p-th percentile (0 ≤ p ≤ 100) of xs by linear
// interpolation between closest ranks (numpy's default, R type 7): p=0 is
// the minimum, p=100 the maximum, p=50 the median. xs is not modified;
// an empty xs gives 0 and p is clamped to [0, 100]. NaNs are not expected.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	p = math.Max(0, math.Min(100, p))
	h := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(h))
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[lo] + (h-float64(lo))*(s[lo+1]-s[lo])
}

// Summarize returns p50, p99 and max of xs (zeros when empty).
func Summarize(xs []float64) Seconds {
	return Seconds{P50: Percentile(xs, 50), P99: Percentile(xs, 99), Max: Percentile(xs, 100)}
}

// Write writes r as indented JSON to path.
func Write(path string, r Report) error {
	return writeJSON(path, r)
}

// WriteAll writes several runs to path as a JSON array.
func WriteAll(path string, rs []Report) error {
	return writeJSON(path, rs)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Read reads path: one object or an array of them. Unknown fields are an
// error, so a format drift shows up in the tests that read reports.
func Read(path string) ([]Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if len(b) > 0 && b[0] == '[' {
		var rs []Report
		if err := dec.Decode(&rs); err != nil {
			return nil, fmt.Errorf("report %s: %w", path, err)
		}
		return rs, nil
	}
	var r Report
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("report %s: %w", path, err)
	}
	return []Report{r}, nil
}

// ClockTicks is USER_HZ, the unit of /proc/stat (100 on every Linux
// architecture Pouchfly runs on).
const ClockTicks = 100

// CPUTime returns the machine's busy CPU time in seconds since boot, from
// the "cpu" line of /proc/stat: user + nice + system + irq + softirq +
// steal (idle and iowait excluded; guest time is already inside user).
// Take it before and after a run and subtract.
func CPUTime() (float64, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCPU(f)
}

func parseCPU(f io.Reader) (float64, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "cpu" {
			continue
		}
		return cpuFields(fields[1:])
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/stat: no cpu line")
}

// cpuFields sums user nice system _idle _iowait irq softirq steal.
func cpuFields(f []string) (float64, error) {
	if len(f) < 8 {
		return 0, fmt.Errorf("/proc/stat: short cpu line %q", f)
	}
	var sum uint64
	for _, i := range []int{0, 1, 2, 5, 6, 7} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		sum += v
	}
	return float64(sum) / ClockTicks, nil
}

// PerGB returns cpuSeconds per GB (1e9 bytes) of delivered bytes (0 when
// nothing was delivered).
func PerGB(cpuSeconds float64, delivered int64) float64 {
	if delivered <= 0 {
		return 0
	}
	return cpuSeconds / (float64(delivered) / 1e9)
}

// FormatBytes prints a byte count for tables: "1.5 MiB", "12 KiB", "7 B".
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
