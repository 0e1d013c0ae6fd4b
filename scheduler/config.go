package scheduler

import (
	"fmt"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Config tunes the scheduler. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	// SupernodeID names this supernode in Welcome (dashboard, logs).
	SupernodeID string `yaml:"supernode_id"`
	// MaxParents is the number of parents given to a downloading peer.
	MaxParents int `yaml:"max_parents"`
	// QuarantineBadPieces is the number of pieces that failed verification,
	// counted across all tasks and children, after which a host is
	// quarantined cluster-wide: it is never chosen as a parent again.
	QuarantineBadPieces int `yaml:"quarantine_bad_pieces"`
	// SlowParentRatio: a parent whose measured throughput to a child falls
	// below this ratio of the median of its siblings is replaced.
	SlowParentRatio float64 `yaml:"slow_parent_ratio"`
	// SlowParentMinSamples is the number of pieces a parent must have served
	// to a child before it may be judged slow.
	SlowParentMinSamples int `yaml:"slow_parent_min_samples"`
	// ParentFailureLimit is the number of network/refused/not-found failures
	// of one parent seen by one child after which that parent is replaced
	// for that child.
	ParentFailureLimit int `yaml:"parent_failure_limit"`
	// AvoidTTL is how long a replaced (slow, failing or given-up) parent is
	// kept out of that child's parent sets.
	AvoidTTL time.Duration `yaml:"avoid_ttl"`
	// TokenTTL is the lifetime of task tokens; a downloading peer gets a
	// fresh token (a new TaskInfo) once its token is past half its life.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// ReportInterval is told to hosts in Welcome: how long they may batch
	// piece reports.
	ReportInterval time.Duration `yaml:"report_interval"`
	// HostTimeout: a host silent (no heartbeat nor any packet) for this long
	// is removed. CDN hosts never time out.
	HostTimeout time.Duration `yaml:"host_timeout"`
	// HousekeepingInterval is the period of Run's loop (host timeouts,
	// token refresh, task garbage collection).
	HousekeepingInterval time.Duration `yaml:"housekeeping_interval"`
	// BackToSourceWhenNoSeeder: with no seeder (or when the seeder reports
	// the origin unavailable to it) hosts are told to fetch from the origin
	// themselves instead of failing.
	BackToSourceWhenNoSeeder bool `yaml:"back_to_source_when_no_seeder"`
	// FailureCacheTTL is how long a seed failure is replayed to new
	// registrations before the task is seeded again (at most 5m).
	FailureCacheTTL time.Duration `yaml:"failure_cache_ttl"`
	// MaxTasksPerHost bounds the tasks one host may have registered.
	MaxTasksPerHost int `yaml:"max_tasks_per_host"`
	// CDNFanout is how many downloading hosts the CDN hands each piece to
	// (super-seeding): only they see it in the CDN's bitmap, and the swarm
	// spreads it from them. Another host gets a piece from the CDN only
	// while fewer than CDNFanout hosts hold it or are about to, so the
	// CDN sends about CDNFanout × the content whatever the swarm's size.
	// 0: no super-seeding, every child may fetch every CDN piece.
	CDNFanout int `yaml:"cdn_fanout"`
	// CDNFreshness is how long a piece handed to a host counts as a copy
	// on its way: after that, while the host still lacks it, the piece is
	// stalled and the CDN may hand it to another host.
	CDNFreshness time.Duration `yaml:"cdn_freshness"`
	// CDNGrants is how many pieces handed to hosts by the CDN may be
	// being sent at once (super-seeding; a grant counts for the CDN's
	// measured time per piece): more would share the supernode's
	// bandwidth so thinly that every first copy lands late.
	CDNGrants int `yaml:"cdn_grants"`
	// CandidateSample bounds the work of one parent choice in a large
	// swarm: besides the child's current parents and recent holders of
	// its rarest missing pieces, this many peers drawn at random are
	// scored (every peer when the swarm has at most twice as many; 0:
	// always every peer).
	CandidateSample int `yaml:"candidate_sample"`
	// Weights tune parent scoring.
	Weights Weights `yaml:"weights"`
	// FilterQuery lists the URL query keys agents leave out of task
	// identity (their peer.filter_query; keep both equal). A URL task
	// (no digest) is accepted only under the ID its URL, digest and range
	// give with none or these keys dropped, so that no host can bind an
	// ID to other content.
	FilterQuery []string `yaml:"filter_query"`
}

// Weights are the terms of a candidate parent's score (see ChooseParents).
type Weights struct {
	// Useful is the score of a candidate holding the most missing pieces
	// among the candidates; others get it pro rata. It should dominate.
	Useful float64 `yaml:"useful"`
	// Zone is added when the candidate is in the child's zone.
	Zone float64 `yaml:"zone"`
	// Throughput is the score of the fastest measured candidate; others pro
	// rata, unmeasured ones half of it.
	Throughput float64 `yaml:"throughput"`
	// Load is subtracted per current child (or active upload) of the
	// candidate.
	Load float64 `yaml:"load"`
	// Failure is subtracted per recent failure of the candidate.
	Failure float64 `yaml:"failure"`
	// Sticky is added to a current parent of the child, so that a refresh
	// keeps parents that still serve instead of trading them for slightly
	// better-scored strangers (every new parent starts without in-flight
	// pieces or throughput history).
	Sticky float64 `yaml:"sticky"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		SupernodeID:              "supernode",
		MaxParents:               5,
		CDNFanout:                2,
		CDNFreshness:             3 * time.Second,
		CDNGrants:                16,
		CandidateSample:          24,
		QuarantineBadPieces:      3,
		SlowParentRatio:          0.2,
		SlowParentMinSamples:     3,
		ParentFailureLimit:       3,
		AvoidTTL:                 30 * time.Second,
		TokenTTL:                 10 * time.Minute,
		ReportInterval:           100 * time.Millisecond,
		HostTimeout:              30 * time.Second,
		HousekeepingInterval:     time.Second,
		BackToSourceWhenNoSeeder: true,
		FailureCacheTTL:          5 * time.Second,
		MaxTasksPerHost:          10000,
		Weights:                  DefaultWeights(),
		FilterQuery:              append([]string(nil), piece.DefaultFilterQuery...),
	}
}

// DefaultWeights returns the default scoring weights.
func DefaultWeights() Weights {
	return Weights{Useful: 100, Zone: 20, Throughput: 10, Load: 40, Failure: 15, Sticky: 30}
}

// Validate checks the configuration; errors wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	bad := func(f string, args ...any) error {
		return fmt.Errorf("scheduler config: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	switch {
	case c.MaxParents < 1 || c.MaxParents > 64:
		return bad("max_parents %d not in 1..64", c.MaxParents)
	case c.QuarantineBadPieces < 1:
		return bad("quarantine_bad_pieces %d < 1", c.QuarantineBadPieces)
	case c.CDNFanout < 0 || c.CDNFreshness < 0:
		return bad("cdn_fanout and cdn_freshness must not be negative")
	case c.CDNGrants < 1:
		return bad("cdn_grants %d < 1", c.CDNGrants)
	case c.CandidateSample < 0 || c.CandidateSample > 4096:
		return bad("candidate_sample %d not in 0..4096", c.CandidateSample)
	case c.SlowParentRatio < 0 || c.SlowParentRatio >= 1:
		return bad("slow_parent_ratio %v not in [0,1)", c.SlowParentRatio)
	case c.SlowParentMinSamples < 1:
		return bad("slow_parent_min_samples %d < 1", c.SlowParentMinSamples)
	case c.ParentFailureLimit < 1:
		return bad("parent_failure_limit %d < 1", c.ParentFailureLimit)
	case c.AvoidTTL < 0:
		return bad("avoid_ttl %v < 0", c.AvoidTTL)
	case c.TokenTTL < 10*time.Second:
		return bad("token_ttl %v < 10s", c.TokenTTL)
	case c.ReportInterval <= 0 || c.ReportInterval > time.Minute:
		return bad("report_interval %v not in (0,1m]", c.ReportInterval)
	case c.HostTimeout <= 0:
		return bad("host_timeout %v <= 0", c.HostTimeout)
	case c.HousekeepingInterval <= 0:
		return bad("housekeeping_interval %v <= 0", c.HousekeepingInterval)
	case c.FailureCacheTTL < 0 || c.FailureCacheTTL > 5*time.Minute:
		return bad("failure_cache_ttl %v not in [0,5m]", c.FailureCacheTTL)
	case c.MaxTasksPerHost < 1:
		return bad("max_tasks_per_host %d < 1", c.MaxTasksPerHost)
	case c.Weights.Useful <= 0 || c.Weights.Zone < 0 || c.Weights.Throughput < 0 || c.Weights.Load < 0 || c.Weights.Failure < 0 || c.Weights.Sticky < 0:
		return bad("weights must be >= 0 (useful > 0)")
	}
	return nil
}
