package report

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"empty", nil, 50, 0},
		{"one", []float64{3}, 99, 3},
		{"min", []float64{5, 1, 3}, 0, 1},
		{"max", []float64{5, 1, 3}, 100, 5},
		{"median odd", []float64{5, 1, 3}, 50, 3},
		{"median even interpolates", []float64{4, 1, 3, 2}, 50, 2.5},
		{"p99 of 8 sits just under max", []float64{1, 2, 3, 4, 5, 6, 7, 8}, 99, 7.93},
		{"p90 of 11", []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 90, 9},
		{"equal values", []float64{2, 2, 2}, 99, 2},
		{"clamped above", []float64{1, 2}, 150, 2},
		{"clamped below", []float64{1, 2}, -1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.xs, tc.p); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tc.xs, tc.p, got, tc.want)
			}
		})
	}
}

func TestPercentileLeavesInputAlone(t *testing.T) {
	xs := []float64{3, 1, 2}
	Percentile(xs, 50)
	if xs[0] != 3 || xs[1] != 1 || xs[2] != 2 {
		t.Errorf("input reordered: %v", xs)
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{10, 12, 11, 13})
	if s.P50 != 11.5 || s.Max != 13 || s.P99 <= 12.9 || s.P99 >= 13 {
		t.Errorf("Summarize = %+v", s)
	}
}

func TestLimit(t *testing.T) {
	if got := Limit(67108864, 50); math.Abs(got-10.737418) > 1e-5 {
		t.Errorf("Limit = %v, want 10.737418", got)
	}
	if Limit(1<<20, 0) != 0 {
		t.Error("no cap should give 0")
	}
}

func TestWriteRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.json")
	in := Report{Scenario: "demo", Hosts: 3, BlobBytes: 1 << 20, Seconds: Seconds{1, 2, 3}, DigestsOK: true, Notes: "x"}
	if err := Write(p, in); err != nil {
		t.Fatal(err)
	}
	out, err := Read(p)
	if err != nil || len(out) != 1 || out[0] != in {
		t.Fatalf("Read = %+v, %v", out, err)
	}
	if err := WriteAll(p, []Report{in, in}); err != nil {
		t.Fatal(err)
	}
	if out, err := Read(p); err != nil || len(out) != 2 {
		t.Fatalf("Read array = %d, %v", len(out), err)
	}
}

func TestLayersOptional(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.json")
	plain := Report{Scenario: "demo-file", Hosts: 3}
	layers := []Layer{{Digest: "sha256:ab", Bytes: 10, RegistryEgressBytes: 10, Seconds: Seconds{1, 2, 3}}}
	img := Report{Scenario: "demo-image", Hosts: 3, Layers: &layers}
	if err := WriteAll(p, []Report{plain, img}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if n := strings.Count(string(b), `"layers"`); n != 1 {
		t.Errorf("\"layers\" appears %d times, want once (omitted without layers):\n%s", n, b)
	}
	out, err := Read(p)
	if err != nil || len(out) != 2 {
		t.Fatalf("Read = %+v, %v", out, err)
	}
	if out[0] != plain {
		t.Errorf("plain report = %+v, want %+v", out[0], plain)
	}
	if !reflect.DeepEqual(out[1], img) {
		t.Errorf("image report = %+v (layers %+v), want %+v", out[1], out[1].Layers, img)
	}
}

func TestCPU(t *testing.T) {
	got, err := parseCPU(strings.NewReader("cpu  100 5 50 9000 70 3 2 1 40 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n"))
	if err != nil || math.Abs(got-1.61) > 1e-9 {
		t.Errorf("parseCPU = %v, %v; want 1.61", got, err)
	}
	if _, err := parseCPU(strings.NewReader("intr 1 2\n")); err == nil {
		t.Error("no cpu line: want an error")
	}
	if v, err := CPUTime(); err != nil || v <= 0 {
		t.Errorf("CPUTime = %v, %v", v, err)
	}
	if got := PerGB(3, 2e9); got != 1.5 {
		t.Errorf("PerGB = %v", got)
	}
}
