// Package peer is the host agent: one session to the supernode, task
// downloads from parents (rarest-first, pipelined, endgame), an upload
// server, back-to-source, a local store with garbage collection, and the
// local API that dfget and the registry mirror use.
package peer

import (
	"fmt"
	"net"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/internal/tlsconfig"
	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/piece"
)

// Config is the peer agent's configuration (the `peer:` section of
// dfget.yaml). DefaultConfig gives working values for one host.
type Config struct {
	// HostID identifies the host to the supernode; empty: derived from the
	// hostname and a random suffix kept in DataDir.
	HostID string `yaml:"host_id"`
	// IP is the address other peers use to reach the upload server; empty:
	// the upload listener's address, or the local address towards the
	// supernode when listening on all interfaces.
	IP string `yaml:"ip"`
	// UploadListen is the upload server's listen address.
	UploadListen string `yaml:"upload_listen"`
	// Zone is this host's locality label (rack, AZ); parents in the same
	// zone are preferred.
	Zone string `yaml:"zone"`
	// Labels are free key=value labels used by preheat selectors.
	Labels map[string]string `yaml:"labels"`
	// Supernodes lists host:port of supernodes, tried in order.
	Supernodes []string `yaml:"supernodes"`
	// DataDir holds the piece store and the host ID.
	DataDir string `yaml:"data_dir"`
	// Socket is the unix socket of the local API (dfget, registry mirror).
	Socket string `yaml:"socket"`
	// UploadRate caps upload bytes/s for the whole host (0: no cap).
	UploadRate units.Bytes `yaml:"upload_rate"`
	// DownloadRate caps download bytes/s for the whole host (0: no cap).
	DownloadRate units.Bytes `yaml:"download_rate"`
	// MaxUploads caps concurrent piece uploads; more get 503.
	MaxUploads int `yaml:"max_uploads"`
	// BackSource allows fetching from the origin when no supernode answers
	// or the scheduler says so.
	BackSource bool `yaml:"back_source"`
	// MaxParallelPieces caps piece downloads in flight per task.
	MaxParallelPieces int `yaml:"max_parallel_pieces"`
	// PerParentPieces caps piece downloads in flight from one parent.
	PerParentPieces int `yaml:"per_parent_pieces"`
	// CDNParallelPieces caps piece downloads in flight from the supernode's
	// CDN while other peers are parents too (the rest is traded).
	CDNParallelPieces int `yaml:"cdn_parallel_pieces"`
	// HeartbeatInterval is how often the agent reports its load (and that
	// it is alive) to the supernode; keep it well under the supernode's
	// host_timeout.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// PieceTimeout bounds one piece download.
	PieceTimeout time.Duration `yaml:"piece_timeout"`
	// SlowPieceRate and SlowPieceGrace catch a parent that trickles: a
	// piece download from a peer that has run for SlowPieceGrace at under
	// SlowPieceRate bytes/s, and at under a tenth of the rate this task's
	// recent pieces came at, is cancelled and reported as a slow piece.
	// Both bounds must hold, so a host whose own link is slow does not
	// blame its parents. The supernode counts a slow piece like a corrupt
	// one (quarantine after quarantine_bad_pieces) only when the parent
	// delivered nothing to anyone meanwhile, so a busy parent is only
	// replaced. 0 rate: off.
	SlowPieceRate  units.Bytes   `yaml:"slow_piece_rate"`
	SlowPieceGrace time.Duration `yaml:"slow_piece_grace"`
	// TaskTimeout bounds a whole task.
	TaskTimeout time.Duration `yaml:"task_timeout"`
	// SupernodeWait is how long a task waits for a supernode session before
	// going back to source (or failing without BackSource).
	SupernodeWait time.Duration `yaml:"supernode_wait"`
	// StallTimeout fails a task that makes no progress for this long.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// DiskLimit caps the store; GC removes least recently used tasks above
	// it (0: no cap).
	DiskLimit units.Bytes `yaml:"disk_limit"`
	// TaskTTL removes tasks not accessed for this long.
	TaskTTL time.Duration `yaml:"task_ttl"`
	// GCInterval is how often GC runs.
	GCInterval time.Duration `yaml:"gc_interval"`
	// FilterQuery lists URL query keys ignored in task identity
	// (signatures, expiry). The supernode accepts a URL task only under
	// the ID of its URL with none or its own scheduler.filter_query keys
	// dropped: keep both lists equal.
	FilterQuery []string `yaml:"filter_query"`
	// UploadServer bounds the upload server's connections: header read
	// deadline (slowloris), keep-alive idle time, header size.
	UploadServer httpserver.Limits `yaml:"upload_server"`
	// UploadClientRate is how many piece requests per second one client
	// (remote IP) may make to the upload server, UploadClientBurst how
	// many at once; beyond, 429 with Retry-After. 0: no per-client limit.
	UploadClientRate  float64 `yaml:"upload_client_rate"`
	UploadClientBurst int     `yaml:"upload_client_burst"`
	// UploadClientMaxConcurrent caps one client's uploads in flight (429
	// beyond), so that one host cannot hold every max_uploads slot.
	UploadClientMaxConcurrent int `yaml:"upload_client_max_concurrent"`
	// TLS secures the session to the supernode, piece fetches and the
	// upload server (cluster-wide: set it on the supernode and every
	// agent, or nowhere). Empty: plaintext.
	TLS tlsconfig.AgentConfig `yaml:"tls"`
}

// DefaultConfig returns the defaults `dfget config default` prints.
func DefaultConfig() Config {
	return Config{
		UploadListen:      "0.0.0.0:65002",
		Supernodes:        []string{"127.0.0.1:8002"},
		DataDir:           "/var/lib/pouchfly/dfget",
		Socket:            "/run/pouchfly/dfget.sock",
		MaxUploads:        64,
		BackSource:        true,
		MaxParallelPieces: 16,
		PerParentPieces:   4,
		CDNParallelPieces: 2,
		HeartbeatInterval: 5 * time.Second,
		PieceTimeout:      60 * time.Second,
		SlowPieceRate:     32 << 10,
		SlowPieceGrace:    2 * time.Second,
		TaskTimeout:       time.Hour,
		SupernodeWait:     5 * time.Second,
		StallTimeout:      60 * time.Second,
		TaskTTL:           6 * time.Hour,
		GCInterval:        time.Minute,
		FilterQuery:       append([]string(nil), piece.DefaultFilterQuery...),

		UploadServer:              httpserver.DefaultLimits(),
		UploadClientRate:          1000,
		UploadClientBurst:         2000,
		UploadClientMaxConcurrent: 32,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	bad := func(f string, args ...any) error {
		return fmt.Errorf("peer config: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	if _, _, err := net.SplitHostPort(c.UploadListen); err != nil {
		return bad("upload_listen %q: %v", c.UploadListen, err)
	}
	if c.IP != "" && net.ParseIP(c.IP) == nil {
		return bad("ip %q is not an IP address", c.IP)
	}
	for _, s := range c.Supernodes {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return bad("supernode %q: want host:port", s)
		}
	}
	if c.DataDir == "" {
		return bad("data_dir is empty")
	}
	switch {
	case c.MaxUploads < 1:
		return bad("max_uploads must be ≥ 1")
	case c.MaxParallelPieces < 1 || c.MaxParallelPieces > 256:
		return bad("max_parallel_pieces must be 1..256")
	case c.PerParentPieces < 1 || c.CDNParallelPieces < 1:
		return bad("per_parent_pieces and cdn_parallel_pieces must be ≥ 1")
	case c.SlowPieceRate < 0 || c.SlowPieceRate > 0 && c.SlowPieceGrace <= 0:
		return bad("slow_piece_rate must not be negative, slow_piece_grace > 0 with a rate")
	case c.PieceTimeout <= 0 || c.TaskTimeout <= 0 || c.SupernodeWait <= 0 || c.StallTimeout <= 0 || c.HeartbeatInterval <= 0:
		return bad("timeouts must be positive")
	case c.UploadRate < 0 || c.DownloadRate < 0 || c.DiskLimit < 0:
		return bad("rates and limits must not be negative")
	case c.GCInterval <= 0:
		return bad("gc_interval must be positive")
	case len(c.Labels) > 32:
		return bad("at most 32 labels")
	case c.UploadClientRate < 0 || c.UploadClientMaxConcurrent < 0 || (c.UploadClientRate > 0 && c.UploadClientBurst < 1):
		return bad("upload_client_rate and upload_client_max_concurrent must not be negative, upload_client_burst ≥ 1 with a rate")
	}
	if err := c.UploadServer.Validate(); err != nil {
		return bad("upload_server: %v", err)
	}
	if err := c.TLS.Validate(); err != nil {
		return bad("%v", err)
	}
	return nil
}
