package scheduler

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/piece"
)

// bm builds a bitmap holding the given pieces.
func bm(pieces ...int) piece.Bitmap {
	var b piece.Bitmap
	for _, n := range pieces {
		b.Set(n)
	}
	return b
}

// span returns the pieces lo..hi-1.
func span(lo, hi int) []int {
	var s []int
	for i := lo; i < hi; i++ {
		s = append(s, i)
	}
	return s
}

func cand(id string, b piece.Bitmap, f ...func(*Candidate)) Candidate {
	c := Candidate{ID: id, Bitmap: b, Tiebreak: HashID(id)}
	for _, fn := range f {
		fn(&c)
	}
	return c
}

func ids(cs []Candidate) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

var (
	isCDN     = func(c *Candidate) { c.CDN = true }
	seeding   = func(c *Candidate) { c.Seeding = true }
	quarant   = func(c *Candidate) { c.Quarantined = true }
	dl        = func(c *Candidate) { c.Downloading = true }
	zoneA     = func(c *Candidate) { c.Zone = "a" }
	load      = func(n int) func(*Candidate) { return func(c *Candidate) { c.Load = n } }
	failures  = func(n int) func(*Candidate) { return func(c *Candidate) { c.Failures = n } }
	through   = func(x float64) func(*Candidate) { return func(c *Candidate) { c.Throughput = x } }
	fullCDN   = cand("cdn", bm(span(0, 16)...), isCDN)
	emptyKid  = cand("kid", nil)
	kidZoneA  = cand("kid", nil, zoneA)
	halfKid   = cand("kid", bm(span(0, 8)...))
	w         = DefaultWeights()
	anyResult = []string{"*"}
)

func TestChooseParents(t *testing.T) {
	tests := []struct {
		name  string
		child Candidate
		cands []Candidate
		max   int
		want  []string // "*" in want: only check the length and exclusions below
		not   []string
	}{
		{
			name:  "cdn is the only source",
			child: emptyKid, cands: []Candidate{fullCDN, cand("p1", nil), cand("p2", nil)}, max: 5,
			want: []string{"cdn"},
		},
		{
			name:  "peers still downloading are parents before they hold anything",
			child: emptyKid, cands: []Candidate{cand("cdn", nil, isCDN, seeding), cand("p1", nil, dl), cand("p2", nil)}, max: 5,
			want: []string{"p1", "cdn"},
		},
		{
			name:  "a useful peer ranks before an empty downloading one",
			child: emptyKid, cands: []Candidate{cand("p1", nil, dl), cand("p2", bm(1, 2), dl)}, max: 1,
			want: []string{"p2"},
		},
		{
			name:  "seeding cdn with nothing yet is still a parent",
			child: emptyKid, cands: []Candidate{cand("cdn", nil, isCDN, seeding)}, max: 5,
			want: []string{"cdn"},
		},
		{
			name:  "finished cdn with nothing useful is dropped",
			child: halfKid, cands: []Candidate{cand("cdn", bm(span(0, 8)...), isCDN), cand("p1", bm(8))}, max: 5,
			want: []string{"p1"},
		},
		{
			name:  "peers covering all the cdn has replace it",
			child: emptyKid, cands: []Candidate{fullCDN, cand("p1", bm(span(0, 16)...)), cand("p2", bm(span(0, 4)...))}, max: 5,
			want: []string{"p1", "p2"},
		},
		{
			name:  "cdn fills a gap, last",
			child: emptyKid, cands: []Candidate{fullCDN, cand("p1", bm(span(0, 8)...))}, max: 5,
			want: []string{"p1", "cdn"},
		},
		{
			name:  "cdn fills a gap in a full set by replacing the weakest peer",
			child: emptyKid,
			cands: []Candidate{fullCDN, cand("p1", bm(span(0, 8)...)), cand("p2", bm(span(0, 6)...)), cand("p3", bm(span(0, 2)...))},
			max:   2,
			want:  []string{"p1", "cdn"},
		},
		{
			name:  "seeding cdn is kept even when peers cover it",
			child: emptyKid, cands: []Candidate{cand("cdn", bm(0, 1), isCDN, seeding), cand("p1", bm(0, 1))}, max: 5,
			want: []string{"p1", "cdn"},
		},
		{
			name:  "more missing pieces rank first",
			child: emptyKid, cands: []Candidate{cand("few", bm(1)), cand("many", bm(span(0, 12)...)), cand("some", bm(span(0, 5)...))}, max: 5,
			want: []string{"many", "some", "few"},
		},
		{
			name:  "peers with nothing the child lacks are excluded",
			child: halfKid, cands: []Candidate{cand("same", bm(span(0, 8)...)), cand("less", bm(1, 2)), cand("new", bm(9))}, max: 5,
			want: []string{"new"},
		},
		{
			name:  "self and quarantined are excluded",
			child: emptyKid, cands: []Candidate{cand("kid", bm(span(0, 16)...)), cand("bad", bm(span(0, 16)...), quarant), cand("ok", bm(3))}, max: 5,
			want: []string{"ok"},
		},
		{
			name:  "quarantined cdn is excluded too",
			child: emptyKid, cands: []Candidate{cand("cdn", bm(1), isCDN, quarant)}, max: 5,
			want: []string{},
		},
		{
			name:  "same zone wins among equals",
			child: kidZoneA, cands: []Candidate{cand("far1", bm(span(0, 8)...)), cand("near", bm(span(0, 8)...), zoneA), cand("far2", bm(span(0, 8)...))}, max: 1,
			want: []string{"near"},
		},
		{
			name:  "zone does not beat many more useful pieces",
			child: kidZoneA, cands: []Candidate{cand("far", bm(span(0, 16)...)), cand("near", bm(1), zoneA)}, max: 1,
			want: []string{"far"},
		},
		{
			name:  "less loaded wins among equals",
			child: emptyKid, cands: []Candidate{cand("busy", bm(span(0, 8)...), load(10)), cand("idle", bm(span(0, 8)...), load(0))}, max: 1,
			want: []string{"idle"},
		},
		{
			name:  "failures count against",
			child: emptyKid, cands: []Candidate{cand("flaky", bm(span(0, 8)...), failures(2)), cand("solid", bm(span(0, 8)...))}, max: 1,
			want: []string{"solid"},
		},
		{
			name:  "faster wins among equals",
			child: emptyKid, cands: []Candidate{cand("slow", bm(span(0, 8)...), through(1e6)), cand("fast", bm(span(0, 8)...), through(1e8))}, max: 1,
			want: []string{"fast"},
		},
		{
			name:  "max bounds the set",
			child: emptyKid, cands: []Candidate{cand("a", bm(1)), cand("b", bm(2)), cand("c", bm(3)), cand("d", bm(4))}, max: 3,
			want: anyResult,
		},
		{
			name:  "max zero",
			child: emptyKid, cands: []Candidate{cand("a", bm(1))}, max: 0,
			want: []string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.cands)
			got := ChooseParents(tt.child, tt.cands, tt.max, w)
			if !reflect.DeepEqual(before, tt.cands) {
				t.Fatal("ChooseParents modified its input")
			}
			if len(got) > tt.max {
				t.Fatalf("got %d parents, max %d", len(got), tt.max)
			}
			if slices.Equal(tt.want, anyResult) {
				if len(got) != tt.max {
					t.Fatalf("got %v, want %d parents", ids(got), tt.max)
				}
				return
			}
			if !slices.Equal(ids(got), tt.want) {
				t.Fatalf("got %v, want %v", ids(got), tt.want)
			}
			// Deterministic.
			again := ChooseParents(tt.child, tt.cands, tt.max, w)
			if !slices.Equal(ids(again), ids(got)) {
				t.Fatalf("not deterministic: %v then %v", ids(got), ids(again))
			}
		})
	}
}

// Ties are broken differently for different children, so a crowd of
// children with identical views spreads over identical parents.
func TestChooseParentsSpreadsTies(t *testing.T) {
	var cands []Candidate
	for i := range 20 {
		cands = append(cands, cand(fmt.Sprintf("p%02d", i), bm(span(0, 8)...)))
	}
	firsts := map[string]int{}
	for i := range 100 {
		got := ChooseParents(cand(fmt.Sprintf("kid%d", i), nil), cands, 1, w)
		firsts[got[0].ID]++
	}
	if len(firsts) < 10 {
		t.Fatalf("100 children chose only %d distinct first parents among 20 equal ones: %v", len(firsts), firsts)
	}
}

func TestShouldReparent(t *testing.T) {
	cfg := DefaultConfig()
	tests := []struct {
		name string
		link LinkStats
		sib  []float64
		want string
	}{
		{"healthy", LinkStats{Samples: 5, Throughput: 9e6}, []float64{10e6, 8e6}, ReasonNone},
		{"failures at the limit", LinkStats{Failures: 3}, nil, ReasonFailures},
		{"failures below the limit", LinkStats{Failures: 2}, nil, ReasonNone},
		{"slow", LinkStats{Samples: 3, Throughput: 1e6}, []float64{10e6, 10e6}, ReasonSlow},
		{"slow vs median not mean", LinkStats{Samples: 3, Throughput: 3e6}, []float64{1e6, 20e6, 20e6}, ReasonSlow},
		{"just above the ratio", LinkStats{Samples: 3, Throughput: 2.1e6}, []float64{10e6}, ReasonNone},
		{"too few samples to judge", LinkStats{Samples: 2, Throughput: 1}, []float64{10e6}, ReasonNone},
		{"no siblings to compare", LinkStats{Samples: 10, Throughput: 1}, nil, ReasonNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ShouldReparent(tt.link, tt.sib, cfg); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.MaxParents = 0 },
		func(c *Config) { c.QuarantineBadPieces = 0 },
		func(c *Config) { c.SlowParentRatio = 1 },
		func(c *Config) { c.TokenTTL = time.Second },
		func(c *Config) { c.FailureCacheTTL = time.Hour },
		func(c *Config) { c.Weights.Useful = 0 },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if c.Validate() == nil {
			t.Errorf("case %d: invalid config accepted", i)
		}
	}
}

func BenchmarkChooseParents1000(b *testing.B) {
	const n, pieces = 1000, 256
	cands := make([]Candidate, n)
	for i := range cands {
		var bits piece.Bitmap
		for p := range pieces {
			if (p*7+i)%3 != 0 {
				bits.Set(p)
			}
		}
		cands[i] = cand(fmt.Sprintf("host-%04d", i), bits, load(i%7), through(float64(i%13)*1e6))
		cands[i].Zone = fmt.Sprint("z", i%4)
	}
	cands[0].CDN = true
	child := cand("kid", bm(span(0, 100)...))
	child.Zone = "z1"
	b.ReportAllocs()
	for b.Loop() {
		ChooseParents(child, cands, 5, w)
	}
}
