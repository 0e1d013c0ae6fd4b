package scheduler

import (
	"slices"

	"github.com/pouchfly/pouchfly/piece"
)

// Candidate is what parent choice knows about a host on a task: a possible
// parent, or the child itself (then only Bitmap, Zone and Tiebreak matter).
type Candidate struct {
	// ID is the host ID.
	ID string
	// Bitmap holds the pieces the host has whose digests are known.
	Bitmap piece.Bitmap
	// Load is the host's current upload load: children across all tasks, or
	// its reported active uploads if higher.
	Load int
	// Throughput is the host's measured upload throughput in bytes/s (0:
	// not measured yet).
	Throughput float64
	// Failures counts recent failures of the host (as seen by this child,
	// plus a decaying host-wide count).
	Failures int
	// Zone is the host's locality label.
	Zone string
	// CDN marks the supernode's seeder host.
	CDN bool
	// Seeding is true for a CDN still fetching the task: it will get the
	// pieces it lacks.
	Seeding bool
	// Downloading is true for a peer still downloading the task: it may
	// be chosen even while it holds nothing the child lacks, because it
	// will (its new pieces reach the child as PieceAvailable). This lets a
	// swarm that starts at once trade pieces from the first second.
	Downloading bool
	// Current is true for one of the child's current parents: it gets
	// Weights.Sticky, so a set is not reshuffled for small differences.
	Current bool
	// Quarantined hosts are never chosen.
	Quarantined bool
	// Tiebreak orders candidates of equal score (mixed with the child's
	// Tiebreak, so different children break ties differently). Typically a
	// hash of ID.
	Tiebreak uint64
}

// ChooseParents returns at most max parents for child among cands, best
// first. It is a pure function of its inputs and does not modify them.
//
// Excluded: the child itself, quarantined hosts, and peers holding nothing
// the child lacks (unless they are Downloading the task too). Peers are scored (higher is better):
//
//	w.Useful × useful/maxUseful  (pieces it holds that the child lacks)
//	+ w.Zone if in the child's zone
//	+ w.Throughput × throughput/maxThroughput (unmeasured: half)
//	− w.Load × load − w.Failure × failures
//	+ w.Sticky if it is a current parent
//
// and ties are broken by Tiebreak mixed with the child's, then ID.
//
// The CDN never competes with peers for a slot: one CDN candidate (the best
// scored) is added last when no peer was chosen, or when it holds a piece
// the child lacks that no chosen peer holds (replacing the weakest peer if
// the set is full), or — without displacing a peer — while it is still
// seeding and the set has room. So peers serve whatever they can and the
// CDN fills the gaps. The caller sets the CDN candidate's Bitmap to what
// the CDN offers this child (see CDNOffer), so with super-seeding a gap is
// a piece the CDN handed to this child.
func ChooseParents(child Candidate, cands []Candidate, max int, w Weights) []Candidate {
	if max <= 0 {
		return nil
	}
	type scored struct {
		i      int
		useful int
		score  float64
		key    uint64
	}
	maxUseful, maxTp := 0, 0.0
	for i := range cands {
		c := &cands[i]
		if c.ID == child.ID || c.Quarantined || c.CDN {
			continue
		}
		if c.Throughput > maxTp {
			maxTp = c.Throughput
		}
	}
	// top holds the best peers, best first; len(top) <= max.
	top := make([]scored, 0, max+1)
	var cdn *scored
	less := func(a, b *scored) bool { // a ranks before b
		if a.score != b.score {
			return a.score > b.score
		}
		if a.key != b.key {
			return a.key < b.key
		}
		return cands[a.i].ID < cands[b.i].ID
	}
	// Usefulness first (its maximum normalises the scores).
	useful := make([]int32, len(cands))
	for i := range cands {
		c := &cands[i]
		if c.ID == child.ID || c.Quarantined {
			useful[i] = -1
			continue
		}
		u := c.Bitmap.CountMissingFrom(child.Bitmap)
		useful[i] = int32(u)
		if !c.CDN && u > maxUseful {
			maxUseful = u
		}
	}
	for i := range cands {
		c := &cands[i]
		u := int(useful[i])
		if u < 0 || (u == 0 && !(c.CDN && c.Seeding) && !(c.Downloading && !c.CDN)) {
			continue
		}
		s := scored{i: i, useful: u, key: mix(c.Tiebreak ^ mix(child.Tiebreak))}
		if maxUseful > 0 {
			s.score = w.Useful * float64(u) / float64(maxUseful)
		}
		if child.Zone != "" && c.Zone == child.Zone {
			s.score += w.Zone
		}
		if c.Throughput > 0 && maxTp > 0 {
			s.score += w.Throughput * c.Throughput / maxTp
		} else {
			s.score += w.Throughput / 2
		}
		s.score -= w.Load*float64(c.Load) + w.Failure*float64(c.Failures)
		if c.Current {
			s.score += w.Sticky
		}
		if c.CDN {
			if cdn == nil || less(&s, cdn) {
				cp := s
				cdn = &cp
			}
			continue
		}
		// Insert into top (small: insertion keeps this O(n·max)).
		if len(top) == max && !less(&s, &top[max-1]) {
			continue
		}
		j := len(top)
		for j > 0 && less(&s, &top[j-1]) {
			j--
		}
		top = slices.Insert(top, j, s)
		if len(top) > max {
			top = top[:max]
		}
	}
	idx := make([]int, len(top))
	for k := range top {
		idx[k] = top[k].i
	}
	if cdn != nil {
		seedingRoom := cands[cdn.i].Seeding && len(top) < max
		if seedingRoom || len(top) == 0 || hasGap(child.Bitmap, cands[cdn.i].Bitmap, cands, idx) {
			if len(top) == max {
				top = top[:max-1]
			}
			top = append(top, *cdn)
		}
	}
	out := make([]Candidate, len(top))
	for k, s := range top {
		out[k] = cands[s.i]
	}
	return out
}

// hasGap reports whether src holds a piece that child lacks and none of the
// chosen candidates holds.
func hasGap(child, src piece.Bitmap, cands []Candidate, chosen []int) bool {
	for b, x := range src {
		if b < len(child) {
			x &^= child[b]
		}
		if x == 0 {
			continue
		}
		for _, i := range chosen {
			if bm := cands[i].Bitmap; b < len(bm) {
				x &^= bm[b]
			}
		}
		if x != 0 {
			return true
		}
	}
	return false
}

// CDNOffer returns the pieces the CDN offers a child: of those the CDN
// holds (cdn) and the child lacks, the ones granted to it (granted) under
// super-seeding, or every one without. It is a pure function and does not
// modify its inputs.
func CDNOffer(child, cdn, granted piece.Bitmap, superSeed bool) piece.Bitmap {
	out := make(piece.Bitmap, len(cdn))
	for b, x := range cdn {
		if b < len(child) {
			x &^= child[b]
		}
		if superSeed {
			if b < len(granted) {
				x &= granted[b]
			} else {
				x = 0
			}
		}
		out[b] = x
	}
	return out
}

// NextGrants returns, in order, the pieces the CDN should hand out next
// under super-seeding, at most budget of them: every piece with fewer than
// fanout copies (copies[n]: peers holding piece n plus grants of it on
// their way; set it to fanout for pieces the CDN cannot hand out), first
// copies of all before second copies, and so on, each round in piece
// order. A piece appears once per copy it is owed. It is a pure function.
func NextGrants(copies []int32, fanout, budget int) []int {
	var out []int
	for level := int32(0); level < int32(fanout) && len(out) < budget; level++ {
		for n, c := range copies {
			if len(out) == budget {
				break
			}
			if c <= level {
				out = append(out, n)
			}
		}
	}
	return out
}

// RarestMissing returns up to m pieces that child lacks, whose digests are
// known and that at least one peer holds (holders[n] > 0), fewest holders
// first; ties are broken by key mixed with the piece number, so children
// with the same view spread over different pieces. It is a pure function.
// The scheduler recruits recent holders of these pieces as candidates, so
// that a child finds the few peers holding what it still needs without
// scanning the whole swarm.
func RarestMissing(child, known piece.Bitmap, holders []int32, m int, key uint64) []int {
	if m <= 0 {
		return nil
	}
	type rp struct {
		n int
		h int32
		k uint64
	}
	best := make([]rp, 0, m+1)
	for n, h := range holders {
		if h <= 0 || child.Has(n) || !known.Has(n) {
			continue
		}
		c := rp{n, h, mix(key ^ uint64(n))}
		lessRP := func(a, b rp) bool { return a.h < b.h || a.h == b.h && a.k < b.k }
		if len(best) == m && !lessRP(c, best[m-1]) {
			continue
		}
		j := len(best)
		for j > 0 && lessRP(c, best[j-1]) {
			j--
		}
		best = slices.Insert(best, j, c)
		if len(best) > m {
			best = best[:m]
		}
	}
	out := make([]int, len(best))
	for i, c := range best {
		out[i] = c.n
	}
	return out
}

// SampleIndexes returns k distinct indexes in [0, n), drawn uniformly from
// seed (Floyd's algorithm: O(k²) time, no O(n) state); every index, in
// order, when k >= n. It is a pure function: the same arguments give the
// same sample.
func SampleIndexes(n, k int, seed uint64) []int {
	if n <= 0 || k <= 0 {
		return nil
	}
	if k >= n {
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	out := make([]int, 0, k)
	x := seed
	for j := n - k; j < n; j++ {
		x += 0x9e3779b97f4a7c15
		r := int(mix(x) % uint64(j+1))
		if slices.Contains(out, r) {
			r = j
		}
		out = append(out, r)
	}
	return out
}

// mix is splitmix64's finaliser: a cheap, well-spread hash of x.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// HashID returns the Tiebreak of a host ID (FNV-1a 64).
func HashID(id string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h
}

// LinkStats is what a child measured of one of its parents.
type LinkStats struct {
	// Failures counts network/refused/not-found failures.
	Failures int
	// Samples counts pieces measured.
	Samples int
	// Throughput is the moving average in bytes/s.
	Throughput float64
}

// Reparent reasons returned by ShouldReparent.
const (
	ReasonNone     = ""
	ReasonFailures = "failures"
	ReasonSlow     = "slow"
)

// ShouldReparent reports whether a child should drop a parent, and why: the
// parent failed ParentFailureLimit times, or it served at least
// SlowParentMinSamples pieces at a throughput below SlowParentRatio × the
// median throughput of the child's other measured parents (siblings). It is
// a pure function.
func ShouldReparent(link LinkStats, siblings []float64, cfg Config) string {
	if link.Failures >= cfg.ParentFailureLimit {
		return ReasonFailures
	}
	if link.Samples < cfg.SlowParentMinSamples || len(siblings) == 0 || cfg.SlowParentRatio <= 0 {
		return ReasonNone
	}
	if link.Throughput < cfg.SlowParentRatio*median(siblings) {
		return ReasonSlow
	}
	return ReasonNone
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
