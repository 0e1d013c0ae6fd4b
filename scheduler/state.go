package scheduler

import (
	"math"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/piece"
)

// host is a connected host (peer agent or CDN). Hosts are global; a host's
// per-task state lives in its peers.
type host struct {
	info HostInfo
	hash uint64
	addr string

	lastSeen      time.Time
	activeUploads int
	children      int              // children across all tasks
	peers         map[string]*peer // by task ID

	tp        float64 // upload throughput EWMA, bytes/s
	failScore float64 // decaying count of network failures
	failAt    time.Time

	badPieces int
	// quarantinedAt is badPieces when the host was quarantined.
	quarantinedAt int
	badSeen       map[string]struct{} // task|piece|reporter already counted
	quarantined   bool

	bytesServed, bytesReceived uint64
	// lastServed and lastReceived are when a report last said this host
	// delivered a piece (as a parent) and received one (as a child): a
	// slow piece counts against a parent only if it delivered nothing to
	// anyone while the reporter received from others (ReportPieces).
	lastServed, lastReceived time.Time
}

const failHalfLife = 30 * time.Second

// failures returns the decayed host-wide failure count.
func (h *host) failures(now time.Time) int {
	if h.failScore == 0 {
		return 0
	}
	dt := now.Sub(h.failAt)
	return int(h.failScore * math.Exp2(-float64(dt)/float64(failHalfLife)))
}

func (h *host) addFailure(now time.Time) {
	if h.failScore > 0 {
		h.failScore *= math.Exp2(-float64(now.Sub(h.failAt)) / float64(failHalfLife))
	}
	h.failScore++
	h.failAt = now
}

type seedState int

const (
	seedNone seedState = iota
	seedRunning
	seedDone
	seedFailed
)

func (s seedState) String() string {
	return [...]string{"none", "seeding", "done", "failed"}[s]
}

// task is one swarm. It owns its peers, so a task can later be owned by one
// supernode of a cluster (sharding by task ID).
type task struct {
	id        string
	length    int64 // -1 while unknown
	pieceSize int32 // 0 while unknown
	digest    string
	sums      [][]byte
	known     piece.Bitmap // pieces whose digest is known
	nKnown    int
	complete  bool
	public    bool   // first seed request carried no headers
	seedCreds string // hash of the headers of the last seed request
	// heldSums: some digests came from a host (HeldTask), not our seed.
	heldSums bool
	// sumsVerified: every digest comes from our seed, which matched the
	// task's whole digest (TaskInfo.sums_verified).
	sumsVerified bool

	seed     seedState
	failure  *schedulerv1.TaskError
	failedAt time.Time

	peers     map[string]*peer // by host ID, CDN included
	list      []*peer          // same peers, for cheap iteration
	cdn       *peer
	doneCount int // non-CDN peers holding the whole task
	created   time.Time

	// holders counts, per piece, the non-CDN peers holding it; recent
	// keeps, per piece, the last recentHolders peers that got it (a ring;
	// entries may have left since), so that a child can be offered holders
	// of its rarest missing pieces without a scan of the swarm.
	holders    []int32
	recent     [][recentHolders]*peer
	recentNext []uint8
	// grants lists, per piece, the children the CDN handed the piece to
	// (super-seeding, see grantLocked); fulfilled ones are pruned lazily.
	grants [][]cdnGrant
	// grantNext is where the search for the next grant target resumes in
	// list, so grants rotate over the swarm.
	grantNext int
	// hungry lists the downloading peers with fewer than MaxParents
	// parents (peer.hungryIdx is the index), the ones that adopt a
	// newcomer at once.
	hungry []*peer
}

// recentHolders is the size of a piece's ring of recent holders.
const recentHolders = 4

// cdnGrant is one CDN piece handed to one child.
type cdnGrant struct {
	to *peer
	at time.Time
}

// count is the number of pieces, -1 while unknown.
func (t *task) count() int {
	if t.length < 0 || t.pieceSize <= 0 {
		return -1
	}
	return piece.Count(t.length, t.pieceSize)
}

// allKnown reports whether every piece's digest is known.
func (t *task) allKnown() bool {
	n := t.count()
	return n >= 0 && t.nKnown >= n
}

// peer is a host's membership in a task.
type peer struct {
	host *host
	task *task
	idx  int // in task.list

	req      *SeedRequest // the host's registration (headers in memory only)
	admitted bool
	done     bool
	gone     bool
	bitmap   piece.Bitmap

	parents  []*peer
	children map[*peer]struct{}
	links    map[string]*LinkStats // by parent host ID
	avoid    map[string]time.Time  // parent host ID -> until

	tokenExpiry time.Time

	// granted lists the CDN pieces handed to this peer that it may still
	// lack (pruned lazily).
	granted []int32
	// hungryIdx is the index in task.hungry, -1 when not there.
	hungryIdx int
	// mark dedupes candidates within one decision (Scheduler.epoch).
	mark uint64
}

func (p *peer) link(parent string) *LinkStats {
	if p.links == nil {
		p.links = map[string]*LinkStats{}
	}
	l := p.links[parent]
	if l == nil {
		l = &LinkStats{}
		p.links[parent] = l
	}
	return l
}

func (p *peer) isCDN() bool { return p.host.info.CDN }

// ewma folds sample x into avg (0: no value yet).
func ewma(avg, x float64) float64 {
	if avg == 0 {
		return x
	}
	return 0.7*avg + 0.3*x
}
