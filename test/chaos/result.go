package chaos

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/pouchfly/pouchfly/test/report"
)

// Result is one scenario run: a DESIGN.md §5 report object plus the
// scenario's own figures (in the same JSON object) and the verdicts of
// its checks. The checks are computed from the report and figures alone
// (Verify), so a report read back from disk is judged the same way.
type Result struct {
	report.Report
	// Env is where it ran: "loopback" or "testbed".
	Env string `json:"env"`
	// Figures are scenario-specific measurements (see each scenario).
	Figures map[string]float64 `json:"figures"`
	// Series are scenario-specific lists (retry gaps, per-host bytes).
	Series map[string][]float64 `json:"series,omitempty"`
	// Checks are the scenario's assertions and their outcome.
	Checks []Check `json:"checks"`
}

// Check is one assertion on a result.
type Check struct {
	// Name says what is asserted.
	Name string `json:"name"`
	// OK is the verdict.
	OK bool `json:"ok"`
	// Detail gives the figures it was decided on.
	Detail string `json:"detail"`
}

// Passed reports whether every check passed (and there is at least one).
func (r *Result) Passed() bool {
	if len(r.Checks) == 0 {
		return false
	}
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

// Failed returns the failed checks.
func (r *Result) Failed() []Check {
	var out []Check
	for _, c := range r.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

func (r *Result) fig(name string) float64 {
	if v, ok := r.Figures[name]; ok {
		return v
	}
	return math.NaN()
}

func (r *Result) set(name string, v float64) {
	if r.Figures == nil {
		r.Figures = map[string]float64{}
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		v = -1 // JSON has no NaN; -1 marks "not measured"
	}
	r.Figures[name] = v
}

func (r *Result) series(name string, v float64) {
	if r.Series == nil {
		r.Series = map[string][]float64{}
	}
	r.Series[name] = append(r.Series[name], v)
}

func (r *Result) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if r.Notes == "" {
		r.Notes = s
	} else {
		r.Notes += "; " + s
	}
}

// checker accumulates checks.
type checker struct{ checks []Check }

func (c *checker) add(name string, ok bool, format string, args ...any) {
	c.checks = append(c.checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// WriteResults writes results to path as a JSON array.
func WriteResults(path string, rs []*Result) error {
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadResults reads what WriteResults wrote. Unknown fields are errors, so
// a format drift shows in the tests.
func ReadResults(path string) ([]*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var rs []*Result
	if err := dec.Decode(&rs); err != nil {
		return nil, fmt.Errorf("chaos report %s: %w", path, err)
	}
	return rs, nil
}

// keyFigures are the figures the table shows per scenario.
var keyFigures = map[string][]string{
	ScenarioKill:       {"victims", "victim_have_at_kill_min", "restarted_fetched_ratio_max", "origin_egress_ratio"},
	ScenarioSupernode:  {"outage_seconds", "hosts_back_to_source", "origin_egress_ratio", "sessions_after_restart"},
	ScenarioMalicious:  {"corrupt_bytes", "bad_pieces_served", "quarantined_after", "completion_ratio"},
	ScenarioTrickler:   {"corrupt_bytes", "served_trickle", "quarantined_after", "completion_ratio"},
	ScenarioOrigin5xx:  {"cdn_attempts", "retry_gap_first_ms", "retry_gap_last_ms", "origin_egress_ratio"},
	ScenarioOriginRst:  {"cdn_attempts", "range_requests", "wasted_origin_bytes", "origin_egress_ratio"},
	ScenarioOriginStl:  {"cdn_attempts", "range_requests", "wasted_origin_bytes", "origin_egress_ratio"},
	ScenarioOriginDown: {"cdn_attempts", "clients_failed", "error_seconds_max", "clear_messages"},
	ScenarioDisk:       {"tmpfs_bytes", "disk_host_failed_clearly", "disk_host_uploaded_bytes", "later_download_ok"},
	ScenarioRequests:   {"requests", "rpc_p99_ms", "rpc_register_p99_ms", "origin_egress_ratio"},
}

// Table writes results as a markdown table.
func Table(w io.Writer, rs []*Result) {
	fmt.Fprintln(w, "| scenario | env | hosts | blob | p50 s | p99 s | max s | origin egress | failed | key figures | checks |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		var figs []string
		keys := keyFigures[r.Scenario]
		if keys == nil {
			for k := range r.Figures {
				keys = append(keys, k)
			}
			sort.Strings(keys)
		}
		for _, k := range keys {
			if v, ok := r.Figures[k]; ok {
				figs = append(figs, fmt.Sprintf("%s %s", k, fmtFig(v)))
			}
		}
		passed := 0
		for _, c := range r.Checks {
			if c.OK {
				passed++
			}
		}
		verdict := fmt.Sprintf("%d/%d", passed, len(r.Checks))
		if f := r.Failed(); len(f) > 0 {
			names := make([]string, len(f))
			for i, c := range f {
				names[i] = c.Name
			}
			verdict += " FAILED: " + strings.Join(names, ", ")
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %.2f | %.2f | %.2f | %s | %d | %s | %s |\n",
			r.Scenario, r.Env, r.Hosts, report.FormatBytes(r.BlobBytes), r.Seconds.P50, r.Seconds.P99, r.Seconds.Max,
			report.FormatBytes(r.OriginEgressBytes), r.FailedHosts, strings.Join(figs, ", "), verdict)
	}
}

func fmtFig(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// summarize fills Seconds from per-host times.
func summarize(xs []float64) report.Seconds {
	xs = slices.Clone(xs)
	return report.Summarize(xs)
}
