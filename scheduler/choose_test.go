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
			name:  "seeding cdn does not displace a peer from a full set",
			child: emptyKid, cands: []Candidate{cand("cdn", nil, isCDN, seeding), cand("p1", nil, dl), cand("p2", nil, dl)}, max: 2,
			want: []string{"p1", "p2"},
		},
		{
			name:  "seeding cdn with a piece handed to the child does displace the weakest peer",
			child: emptyKid, cands: []Candidate{cand("cdn", bm(3), isCDN, seeding), cand("p1", bm(1, 2), dl), cand("p2", bm(1), dl)}, max: 2,
			want: []string{"p1", "cdn"},
		},
		{
			name:  "cdn offering nothing the child lacks is dropped when peers are chosen",
			child: emptyKid, cands: []Candidate{cand("cdn", nil, isCDN), cand("p1", nil, dl)}, max: 5,
			want: []string{"p1"},
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

// A current parent keeps its slot against a stranger only slightly better
// (Weights.Sticky), not against a much better one.
func TestChooseParentsSticky(t *testing.T) {
	cur := func(c *Candidate) { c.Current = true }
	tests := []struct {
		name   string
		sticky float64
		cands  []Candidate
		want   string
	}{
		{"current kept over a slightly better stranger", 30, []Candidate{cand("old", bm(span(0, 9)...), cur), cand("new", bm(span(0, 10)...))}, "old"},
		{"without stickiness the better one wins", 0, []Candidate{cand("old", bm(span(0, 9)...), cur), cand("new", bm(span(0, 10)...))}, "new"},
		{"current dropped for a much better stranger", 30, []Candidate{cand("old", bm(span(0, 2)...), cur), cand("new", bm(span(0, 10)...))}, "new"},
		{"current dropped for a much less loaded stranger", 30, []Candidate{cand("old", bm(span(0, 10)...), cur, load(3)), cand("new", bm(span(0, 10)...))}, "new"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wt := DefaultWeights()
			wt.Sticky = tt.sticky
			if got := ids(ChooseParents(emptyKid, tt.cands, 1, wt)); !slices.Equal(got, []string{tt.want}) {
				t.Fatalf("got %v, want [%s]", got, tt.want)
			}
		})
	}
}

func TestCDNOffer(t *testing.T) {
	tests := []struct {
		name                string
		child, cdn, granted piece.Bitmap
		superSeed           bool
		want                []int
	}{
		{"no super-seeding: all the child lacks", bm(0, 1), bm(span(0, 5)...), nil, false, []int{2, 3, 4}},
		{"super-seeding: only what was handed to the child", bm(0), bm(span(0, 12)...), bm(0, 3, 9), true, []int{3, 9}},
		{"nothing handed: nothing offered", nil, bm(span(0, 8)...), nil, true, nil},
		{"a grant the CDN does not hold yet is not offered", nil, bm(1), bm(1, 2), true, []int{1}},
		{"the child already holds its grant", bm(5), bm(5), bm(5), true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cdn := tt.cdn.Clone()
			got := CDNOffer(tt.child, tt.cdn, tt.granted, tt.superSeed)
			if !slices.Equal(tt.cdn, cdn) {
				t.Fatal("CDNOffer modified its input")
			}
			var ns []int
			for n := range len(got) * 8 {
				if got.Has(n) {
					ns = append(ns, n)
				}
			}
			if !slices.Equal(ns, tt.want) {
				t.Fatalf("got %v, want %v", ns, tt.want)
			}
		})
	}
}

func TestNextGrants(t *testing.T) {
	tests := []struct {
		name   string
		copies []int32
		fanout int
		budget int
		want   []int
	}{
		{"first copies of all before any second copy", []int32{0, 0, 1, 2}, 2, 10, []int{0, 1, 0, 1, 2}},
		{"budget cuts in order", []int32{0, 0, 1, 2}, 2, 3, []int{0, 1, 0}},
		{"fanout 1: first copies only", []int32{0, 1, 0}, 1, 10, []int{0, 2}},
		{"pieces at fanout (or not held: set to fanout) are skipped", []int32{2, 2, 3}, 2, 10, nil},
		{"three copies", []int32{0}, 3, 10, []int{0, 0, 0}},
		{"zero budget", []int32{0}, 2, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NextGrants(tt.copies, tt.fanout, tt.budget); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRarestMissing(t *testing.T) {
	known := bm(span(0, 8)...)
	tests := []struct {
		name    string
		child   piece.Bitmap
		known   piece.Bitmap
		holders []int32
		m       int
		want    []int
	}{
		{"fewest holders first", nil, known, []int32{5, 1, 3, 2, 9, 9, 9, 9}, 3, []int{1, 3, 2}},
		{"held pieces are skipped", bm(1, 3), known, []int32{5, 1, 3, 2, 9, 9, 9, 9}, 2, []int{2, 0}},
		{"nobody holds it: skipped (only the CDN can help)", nil, known, []int32{0, 4, 0, 0, 0, 0, 0, 0}, 3, []int{1}},
		{"unknown digests are skipped", nil, bm(2), []int32{1, 1, 1}, 3, []int{2}},
		{"m zero", nil, known, []int32{1}, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RarestMissing(tt.child, tt.known, tt.holders, tt.m, 7); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
	// Ties are broken by the key: children spread over equally rare pieces.
	flat := make([]int32, 64)
	for i := range flat {
		flat[i] = 1
	}
	firsts := map[int]bool{}
	for key := range uint64(50) {
		firsts[RarestMissing(nil, bm(span(0, 64)...), flat, 1, key)[0]] = true
	}
	if len(firsts) < 20 {
		t.Fatalf("50 keys picked only %d distinct rarest pieces among 64 equal ones", len(firsts))
	}
}

func TestSampleIndexes(t *testing.T) {
	if got := SampleIndexes(5, 8, 1); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("k >= n: got %v, want every index", got)
	}
	if got := SampleIndexes(0, 3, 1); len(got) != 0 {
		t.Fatalf("n = 0: got %v", got)
	}
	if got := SampleIndexes(10, 0, 1); len(got) != 0 {
		t.Fatalf("k = 0: got %v", got)
	}
	hits := make([]int, 100)
	for seed := range uint64(2000) {
		got := SampleIndexes(100, 10, seed)
		if len(got) != 10 {
			t.Fatalf("seed %d: %d indexes, want 10", seed, len(got))
		}
		seen := map[int]bool{}
		for _, i := range got {
			if i < 0 || i >= 100 || seen[i] {
				t.Fatalf("seed %d: bad or repeated index in %v", seed, got)
			}
			seen[i] = true
			hits[i]++
		}
		if again := SampleIndexes(100, 10, seed); !slices.Equal(again, got) {
			t.Fatalf("seed %d: not deterministic: %v then %v", seed, got, again)
		}
	}
	// Uniform: each index drawn 2000 × 10/100 = 200 times, give or take.
	for i, h := range hits {
		if h < 120 || h > 280 {
			t.Fatalf("index %d drawn %d times, want about 200", i, h)
		}
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
		func(c *Config) { c.Weights.Sticky = -1 },
		func(c *Config) { c.CDNGrants = 0 },
		func(c *Config) { c.CandidateSample = -1 },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if c.Validate() == nil {
			t.Errorf("case %d: invalid config accepted", i)
		}
	}
}

func BenchmarkSampleIndexes(b *testing.B) {
	for b.Loop() {
		SampleIndexes(10000, 24, 42)
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
