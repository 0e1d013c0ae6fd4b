package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
)

// schedBench is one `go test -bench` result line of the scheduler package.
type schedBench struct {
	Name        string  `json:"name"`
	Iterations  int64   `json:"iterations"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op,omitempty"`
	AllocsPerOp float64 `json:"allocs_per_op,omitempty"`
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+(\d+)\s+([0-9.]+) ns/op(.*)$`)

// parseSchedBench reads `go test -bench` output; ok is false when the
// run did not end with PASS/ok or reported a failure.
func parseSchedBench(path string) (out []schedBench, ok bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "ok\t") {
			ok = true
		}
		if strings.HasPrefix(l, "FAIL") || strings.Contains(l, "FAILED") {
			ok = false
			break
		}
	}
	for _, l := range strings.Split(string(b), "\n") {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		r := schedBench{Name: m[1]}
		r.Iterations, _ = strconv.ParseInt(m[3], 10, 64)
		r.NsPerOp, _ = strconv.ParseFloat(m[4], 64)
		f := strings.Fields(m[5])
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseFloat(f[i], 64)
			switch f[i+1] {
			case "B/op":
				r.BytesPerOp = v
			case "allocs/op":
				r.AllocsPerOp = v
			}
		}
		out = append(out, r)
	}
	return out, ok, nil
}
