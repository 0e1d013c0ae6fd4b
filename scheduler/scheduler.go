// Package scheduler holds the supernode's state — hosts, tasks, piece
// bitmaps, quarantine — and chooses parents. It has no network code: the
// supernode's session layer feeds it the hosts' packets and delivers what it
// sends through a Sender.
//
// All state changes go through one mutex; every packet to a host is handed
// to the Sender while it is held, so a host's packets keep their order (the
// proto's ordering contract: a piece's digest precedes any message naming a
// parent that holds it). Parent choice itself is the pure ChooseParents.
package scheduler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/piece"
)

// Input bounds checked by Register and Held.
const (
	MaxURLLen       = 8 << 10
	MaxHeaders      = 64
	MaxHeaderBytes  = 64 << 10
	MaxRangeLen     = 256
	MaxFailedList   = 64
	MaxReportBatch  = 1 << 16
	maxIDLen        = 256
	sha256Len       = 32
	defaultAvailCap = 64
)

// HostInfo describes a host, from its Hello (or the CDN's configuration).
type HostInfo struct {
	ID         string
	Hostname   string
	IP         string
	UploadPort int
	Zone       string
	Labels     map[string]string
	// CDN marks the supernode's own seeder; it never times out, is never
	// quarantined and receives no packets.
	CDN     bool
	Version string
}

// Sender delivers packets to a host's session. Send must not block for
// long: it is called with the scheduler's lock held, in the order packets
// must reach the host. Packets may be shared between hosts and must not be
// modified.
type Sender interface {
	Send(hostID string, p *schedulerv1.SchedulerPacket)
}

// Disconnecter is optionally implemented by a Sender: the scheduler calls
// Disconnect (without its lock held) after dropping a host that timed out,
// so the session ends and the host reconnects.
type Disconnecter interface {
	Disconnect(hostID string)
}

// Seeder starts, or joins, the CDN fetch of a task. Seed must not block and
// is called without the scheduler's lock held; progress comes back through
// SeedMeta, SeedPieces/SeedPiece, SeedDone and SeedFailed. A seeder must
// check the requester's credentials against the origin even when it serves
// the task from its cache.
type Seeder interface {
	Seed(ctx context.Context, req SeedRequest)
}

// Authorizer is optionally implemented by a Seeder. When present, a host
// registering a task that another host's credentials started (and that
// carried headers, i.e. may be private) is held back — no token, digests or
// parents — until Authorize's answer arrives through Scheduler.Admit.
// Authorize must not block (it is called without the lock held).
type Authorizer interface {
	Authorize(ctx context.Context, req SeedRequest)
}

// SeedRequest asks the seeder for a task. Headers carry credentials: never
// log them.
type SeedRequest struct {
	TaskID  string
	HostID  string // the registering host
	URL     string
	Headers map[string]string
	Digest  string
	Range   string
}

// LogValue keeps headers out of logs.
func (r SeedRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("task", r.TaskID), slog.String("peer", r.HostID),
		slog.Int("headers", len(r.Headers)))
}

// Scheduler is the supernode's state. Its methods are safe for concurrent
// use and do not block on I/O.
type Scheduler struct {
	cfg     Config
	sender  Sender
	seeder  Seeder
	auth    Authorizer
	signer  *tasktoken.Signer
	clk     clock.Clock
	log     *slog.Logger
	metrics *Metrics

	mu    sync.Mutex
	ctx   context.Context
	hosts map[string]*host
	tasks map[string]*task
	// banned remembers quarantined host IDs across reconnects (a host
	// cannot shed its quarantine by opening a new session), until
	// Release; at most maxBanned, the oldest forgotten first.
	banned  map[string]ban
	cdnID   string
	after   []func() // run after mu is released
	scratch []Candidate
	pool    []*peer
	copies  []int32
	// epoch marks the candidates of one decision (peer.mark); draws
	// seeds the candidate samples.
	epoch, draws uint64
}

// New returns a scheduler. seeder may be nil (no CDN). It starts no
// goroutine: call Run.
// SetLogger replaces the logger (default slog.Default()); call before use.
func (s *Scheduler) SetLogger(l *slog.Logger) { s.log = l.With("component", "scheduler") }

func New(cfg Config, sender Sender, seeder Seeder, signer *tasktoken.Signer, clk clock.Clock) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sender == nil || signer == nil {
		return nil, fmt.Errorf("scheduler: sender and signer are required: %w", errdefs.ErrInvalid)
	}
	if clk == nil {
		clk = clock.Real{}
	}
	s := &Scheduler{
		cfg: cfg, sender: sender, seeder: seeder, signer: signer, clk: clk,
		log:     slog.Default().With("component", "scheduler"),
		metrics: NewMetrics(),
		ctx:     context.Background(),
		hosts:   map[string]*host{},
		banned:  map[string]ban{},
		tasks:   map[string]*task{},
	}
	if a, ok := seeder.(Authorizer); ok {
		s.auth = a
	}
	return s, nil
}

// Metrics returns the scheduler's collectors (unregistered).
func (s *Scheduler) Metrics() *Metrics { return s.metrics }

// Config returns the configuration in use.
func (s *Scheduler) Config() Config { return s.cfg }

func (s *Scheduler) lock() { s.mu.Lock() }

func (s *Scheduler) unlock() {
	fs := s.after
	s.after = nil
	s.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Run does housekeeping every HousekeepingInterval (host timeouts, token
// refresh, task garbage collection) until ctx is done; seeder calls made
// from then on get ctx. It returns ctx.Err().
func (s *Scheduler) Run(ctx context.Context) error {
	s.lock()
	s.ctx = ctx
	s.unlock()
	t := time.NewTicker(s.cfg.HousekeepingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			s.Housekeep()
		}
	}
}

func (s *Scheduler) send(h *host, p *schedulerv1.SchedulerPacket) {
	if h.info.CDN {
		return
	}
	s.sender.Send(h.info.ID, p)
}

// ---------------------------------------------------------------- hosts

// AddHost adds a host. Re-adding an ID replaces the old host, which is
// removed from all its tasks first (a reconnect); a non-CDN host may not
// replace the CDN host (errdefs.ErrForbidden). A host with CDN set becomes
// the parent that seeding tasks get their pieces from (the last one added
// wins). An empty or oversized ID is errdefs.ErrInvalid.
func (s *Scheduler) AddHost(info HostInfo) error {
	if info.ID == "" || len(info.ID) > maxIDLen {
		return fmt.Errorf("host id %q: %w", trunc(info.ID, 80), errdefs.ErrInvalid)
	}
	h := &host{
		info:     info,
		hash:     HashID(info.ID),
		addr:     net.JoinHostPort(info.IP, strconv.Itoa(info.UploadPort)),
		lastSeen: s.clk.Now(),
		peers:    map[string]*peer{},
	}
	s.lock()
	defer s.unlock()
	if old := s.hosts[info.ID]; old != nil {
		if old.info.CDN && !info.CDN {
			return fmt.Errorf("host id %q is the CDN's: %w", info.ID, errdefs.ErrForbidden)
		}
		s.log.Info("host reconnected, replacing", "peer", info.ID)
		s.removeHostLocked(old)
	}
	if b, ok := s.banned[info.ID]; ok && !info.CDN {
		h.quarantined, h.badPieces, h.quarantinedAt = true, b.badPieces, b.badPieces
		s.log.Warn("quarantined host reconnected: still quarantined", "peer", info.ID, "since", b.at)
	}
	s.hosts[info.ID] = h
	if info.CDN {
		s.cdnID = info.ID
	}
	s.metrics.Hosts.Set(float64(len(s.hosts)))
	s.log.Debug("host added", "peer", info.ID, "zone", info.Zone, "cdn", info.CDN)
	return nil
}

// RemoveHost removes a host from every task; its children get new parents.
// Removing an unknown host does nothing.
func (s *Scheduler) RemoveHost(id string) {
	s.lock()
	defer s.unlock()
	if h := s.hosts[id]; h != nil {
		s.removeHostLocked(h)
	}
}

func (s *Scheduler) removeHostLocked(h *host) {
	ps := make([]*peer, 0, len(h.peers))
	for _, p := range h.peers {
		ps = append(ps, p)
	}
	s.removePeersLocked(ps)
	delete(s.hosts, h.info.ID)
	if s.cdnID == h.info.ID {
		s.cdnID = ""
	}
	s.metrics.Hosts.Set(float64(len(s.hosts)))
	s.log.Debug("host removed", "peer", h.info.ID)
}

// touch looks a host up and records that it is alive.
func (s *Scheduler) touch(id string) *host {
	h := s.hosts[id]
	if h != nil {
		h.lastSeen = s.clk.Now()
	}
	return h
}

// Heartbeat records a host's load and liveness.
func (s *Scheduler) Heartbeat(id string, hb *schedulerv1.Heartbeat) {
	s.lock()
	defer s.unlock()
	h := s.touch(id)
	if h == nil || hb == nil {
		return
	}
	h.activeUploads = int(min(hb.GetActiveUploads(), 1<<20))
}

// Welcome returns the answer to a host's Hello.
func (s *Scheduler) Welcome(hostID string) *schedulerv1.Welcome {
	return &schedulerv1.Welcome{
		HostId:           hostID,
		TokenPublicKey:   s.signer.Public(),
		ReportIntervalMs: uint32(s.cfg.ReportInterval / time.Millisecond),
		SupernodeId:      s.cfg.SupernodeID,
	}
}

// ---------------------------------------------------------------- tasks

func validateRegister(r *schedulerv1.RegisterTask) error {
	if err := piece.ValidTaskID(r.GetTaskId()); err != nil {
		return err
	}
	if r.GetUrl() == "" || len(r.GetUrl()) > MaxURLLen {
		return fmt.Errorf("url empty or longer than %d: %w", MaxURLLen, errdefs.ErrInvalid)
	}
	if r.GetDigest() != "" {
		if err := piece.ValidDigest(r.GetDigest()); err != nil {
			return err
		}
	}
	if len(r.GetRange()) > MaxRangeLen || (r.GetRange() != "" && !strings.HasPrefix(r.GetRange(), "bytes=")) {
		return fmt.Errorf("range %q: %w", trunc(r.GetRange(), 40), errdefs.ErrInvalid)
	}
	if len(r.GetHeaders()) > MaxHeaders {
		return fmt.Errorf("more than %d headers: %w", MaxHeaders, errdefs.ErrInvalid)
	}
	n := 0
	for k, v := range r.GetHeaders() {
		n += len(k) + len(v)
	}
	if n > MaxHeaderBytes {
		return fmt.Errorf("headers larger than %d bytes: %w", MaxHeaderBytes, errdefs.ErrInvalid)
	}
	return nil
}

// validateIdentity binds a task ID to what it names, so that a host
// cannot register one URL's (or digest's) ID with other content: a URL
// task's ID (64 hex) must be piece.TaskID of the URL, digest and range,
// with none or the filter's query keys dropped; a digest ID must not come
// with another digest. (The content of a digest task is checked against
// its digest by every reader, so its URL may be any mirror of it.)
func validateIdentity(r *schedulerv1.RegisterTask, filter []string) error {
	id := r.GetTaskId()
	if strings.Contains(id, ":") {
		if r.GetRange() == "" && r.GetDigest() != "" && r.GetDigest() != id {
			return fmt.Errorf("task %s registered with digest %s: %w", trunc(id, 80), trunc(r.GetDigest(), 80), errdefs.ErrInvalid)
		}
		return nil
	}
	for _, f := range [][]string{nil, filter} {
		if want, err := piece.TaskID(r.GetUrl(), r.GetDigest(), f, r.GetRange()); err == nil && want == id {
			return nil
		}
	}
	return fmt.Errorf("task id %s is not the identity of its url, digest and range: %w", trunc(id, 80), errdefs.ErrInvalid)
}

// Register adds a host to a task's swarm. Invalid requests get a TaskError
// (ERROR_INVALID) and an error wrapping errdefs.ErrInvalid; an unknown host
// is errdefs.ErrNotFound; too many tasks on one host is
// errdefs.ErrUnavailable (with a TaskError). Otherwise the host receives,
// in order: TaskInfo (with a fresh token and every digest known) and a
// ParentSet — or the task's cached failure, or BackToSource. Registering
// again resends them.
func (s *Scheduler) Register(hostID string, r *schedulerv1.RegisterTask) error {
	s.lock()
	defer s.unlock()
	h := s.touch(hostID)
	if h == nil {
		return fmt.Errorf("register: host %q: %w", trunc(hostID, 80), errdefs.ErrNotFound)
	}
	err := validateRegister(r)
	if err == nil {
		err = validateIdentity(r, s.cfg.FilterQuery)
	}
	if err != nil {
		s.send(h, errPacket(&schedulerv1.TaskError{TaskId: trunc(r.GetTaskId(), maxIDLen),
			Code: schedulerv1.ErrorCode_ERROR_INVALID, Message: err.Error()}))
		return fmt.Errorf("register: %w", err)
	}
	now := s.clk.Now()
	req := &SeedRequest{TaskID: r.TaskId, HostID: hostID, URL: r.Url, Headers: r.Headers, Digest: r.Digest, Range: r.Range}
	if req.Digest == "" && req.Range == "" && strings.HasPrefix(req.TaskID, "sha256:") {
		// A digest task is seeded against its digest, whatever URL the
		// registrant gave: other content fails the seed (digest mismatch)
		// instead of being offered under the digest.
		req.Digest = req.TaskID
	}
	log := s.log.With("task", r.TaskId, "peer", hostID)
	t := s.tasks[r.TaskId]
	if t == nil {
		// The registrant's digest goes to the seeder only: a task's digest
		// is its ID (OCI blob) or what the seeder computed.
		t = &task{id: r.TaskId, length: -1, peers: map[string]*peer{}, created: now}
		if strings.HasPrefix(t.id, "sha256:") {
			t.digest = t.id
		}
		s.tasks[t.id] = t
		s.metrics.Tasks.Set(float64(len(s.tasks)))
	}
	p := t.peers[hostID]
	if p != nil && !p.isCDN() {
		p.req = req
		if p.admitted {
			log.Debug("re-register")
			s.sendFullInfoLocked(p)
			s.assignLocked(p)
		}
		return nil
	}
	if len(h.peers) >= s.cfg.MaxTasksPerHost {
		s.send(h, errPacket(&schedulerv1.TaskError{TaskId: t.id, Code: schedulerv1.ErrorCode_ERROR_UNAVAILABLE,
			Message: "too many tasks registered by this host"}))
		s.gcTaskLocked(t)
		return fmt.Errorf("register: host %q has %d tasks: %w", trunc(hostID, 80), len(h.peers), errdefs.ErrUnavailable)
	}
	p = s.addPeerLocked(t, h)
	p.req = req

	if s.hasSourceLocked(t) || t.seed == seedRunning {
		// Join: sources exist or are coming.
		if s.auth != nil && !t.public {
			log.Debug("register pending authorization")
			ctx := s.ctx
			s.after = append(s.after, func() { s.auth.Authorize(ctx, *req) })
			return nil
		}
		s.admitLocked(p)
		return nil
	}
	if s.failureCachedLocked(t, req) {
		log.Debug("replaying cached seed failure", "code", t.failure.GetCode())
		s.failPeersLocked(t, []*peer{p}, t.failure)
		return nil
	}
	// Nobody has it and nobody fetches it: start the seeder, or send the
	// host to the origin.
	if s.seeder == nil {
		p.admitted = true
		s.sendFullInfoLocked(p)
		s.noSeederLocked(p)
		return nil
	}
	s.startSeedLocked(t, req)
	s.admitLocked(p)
	return nil
}

// noSeederLocked handles a host that needs a source when there is no seeder.
func (s *Scheduler) noSeederLocked(p *peer) {
	if s.cfg.BackToSourceWhenNoSeeder {
		s.metrics.BackToSource.Inc()
		s.send(p.host, &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_BackToSource{
			BackToSource: &schedulerv1.BackToSource{TaskId: p.task.id, Reason: "no seeder and no peer holds the task"}}})
		return
	}
	s.failPeersLocked(p.task, []*peer{p}, &schedulerv1.TaskError{TaskId: p.task.id,
		Code: schedulerv1.ErrorCode_ERROR_UNAVAILABLE, Message: "no seeder and no peer holds the task"})
}

func (s *Scheduler) addPeerLocked(t *task, h *host) *peer {
	p := &peer{host: h, task: t, idx: len(t.list), children: map[*peer]struct{}{}, hungryIdx: -1}
	t.peers[h.info.ID] = p
	t.list = append(t.list, p)
	h.peers[t.id] = p
	return p
}

// hasSourceLocked reports whether some host holds the whole task in a form
// peers can use (every digest known).
func (s *Scheduler) hasSourceLocked(t *task) bool {
	return (t.doneCount > 0 && t.allKnown()) || (t.seed == seedDone && t.cdn != nil)
}

// failureCachedLocked reports whether t's last seed failure still stands
// for req. A refusal (401/403) stands only for the same credentials: a
// host with other credentials gets its own try at the origin.
func (s *Scheduler) failureCachedLocked(t *task, req *SeedRequest) bool {
	if t.seed != seedFailed || !s.clk.Now().Before(t.failedAt.Add(s.cfg.FailureCacheTTL)) {
		return false
	}
	return t.failure.GetCode() != schedulerv1.ErrorCode_ERROR_FORBIDDEN || t.seedCreds == headersKey(req.Headers)
}

// headersKey hashes a request's headers (credentials) for comparison.
func headersKey(h map[string]string) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, strings.ToLower(k))
	}
	slices.Sort(keys)
	sum := sha256.New()
	for _, k := range keys {
		for hk, v := range h {
			if strings.ToLower(hk) == k {
				sum.Write([]byte(k + "\x00" + v + "\x00"))
			}
		}
	}
	return string(sum.Sum(nil))
}

func (s *Scheduler) startSeedLocked(t *task, req *SeedRequest) {
	t.seed = seedRunning
	t.failure = nil
	t.public = len(req.Headers) == 0
	t.seedCreds = headersKey(req.Headers)
	if s.cdnPeerLocked(t) == nil {
		s.log.Warn("seeding without a CDN host: peers will have no parent", "task", t.id)
	}
	s.metrics.Seeds.Inc()
	s.log.Info("seed started", "task", t.id, "peer", req.HostID)
	ctx, sd, r := s.ctx, s.seeder, *req
	s.after = append(s.after, func() { sd.Seed(ctx, r) })
}

// cdnPeerLocked returns the CDN's peer on t, adding the CDN host to the
// task if needed (nil without a CDN host).
func (s *Scheduler) cdnPeerLocked(t *task) *peer {
	if t.cdn == nil {
		if h := s.hosts[s.cdnID]; h != nil {
			t.cdn = s.addPeerLocked(t, h)
			t.cdn.admitted = true
		}
	}
	return t.cdn
}

// maybeSeedLocked restarts seeding for a starving task when nothing holds
// it any more, on behalf of p (with p's own request).
func (s *Scheduler) maybeSeedLocked(p *peer) {
	t := p.task
	if s.hasSourceLocked(t) || t.seed == seedRunning || p.req == nil || s.seeder == nil {
		return
	}
	if s.failureCachedLocked(t, p.req) {
		return
	}
	s.startSeedLocked(t, p.req)
}

// Admit answers an Authorizer: a nil e admits the host to the task (it gets
// its TaskInfo and parents), otherwise it gets e as a TaskError and leaves
// the task. Unknown or already admitted registrations are ignored.
func (s *Scheduler) Admit(taskID, hostID string, e *schedulerv1.TaskError) {
	s.lock()
	defer s.unlock()
	t := s.tasks[taskID]
	if t == nil {
		return
	}
	p := t.peers[hostID]
	if p == nil || p.admitted {
		return
	}
	if e != nil {
		s.log.Info("registration denied", "task", taskID, "peer", hostID, "code", e.GetCode())
		s.failPeersLocked(t, []*peer{p}, e)
		return
	}
	s.admitLocked(p)
}

// admitLocked sends a peer everything it needs: metadata, token, digests,
// then parents.
func (s *Scheduler) admitLocked(p *peer) {
	p.admitted = true
	s.sendFullInfoLocked(p)
	if !p.host.info.CDN {
		s.grantLocked(p.task, p) // a newcomer may take a piece the CDN still owes
	}
	s.assignLocked(p)
	// Downloading peers with a free parent slot take the newcomer too, so
	// the first hosts of a swarm (whose only parent was the CDN) trade with
	// later ones at once instead of at their next refresh. At most
	// maxAdopters of them (the others ask again within a second: fewer
	// than two parents is starving), so a registration costs O(1)
	// decisions whatever the swarm's size.
	if p.host.info.CDN {
		return
	}
	t := p.task
	var adopters [maxAdopters]*peer
	k := 0
	for _, q := range t.hungry {
		if k == len(adopters) {
			break
		}
		if q != p {
			if _, already := p.children[q]; !already {
				adopters[k] = q
				k++
			}
		}
	}
	for _, q := range adopters[:k] {
		if q.hungryIdx >= 0 {
			s.assignLocked(q)
		}
	}
}

// maxAdopters bounds the hungry peers re-assigned when a host joins.
const maxAdopters = 16

func errPacket(e *schedulerv1.TaskError) *schedulerv1.SchedulerPacket {
	return &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Error{Error: e}}
}

func infoPacket(ti *schedulerv1.TaskInfo) *schedulerv1.SchedulerPacket {
	return &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Task{Task: ti}}
}

// baseInfo is a TaskInfo with the task's metadata and no digests.
func baseInfo(t *task) *schedulerv1.TaskInfo {
	return &schedulerv1.TaskInfo{TaskId: t.id, ContentLength: t.length, PieceSize: uint32(t.pieceSize),
		Complete: t.complete, Digest: t.digest, SumsVerified: t.sumsVerified,
		SeedVerifying: t.seed == seedRunning && !t.heldSums && t.digest != ""}
}

// sendFullInfoLocked sends p a fresh token and every digest known: one
// TaskInfo per contiguous run of known digests (the first carries the token).
func (s *Scheduler) sendFullInfoLocked(p *peer) {
	t := p.task
	first := baseInfo(t)
	s.refreshTokenLocked(p, first)
	sent := false
	for i := 0; i < len(t.sums); {
		if t.sums[i] == nil {
			i++
			continue
		}
		j := i
		for j < len(t.sums) && t.sums[j] != nil {
			j++
		}
		ti := first
		if sent {
			ti = baseInfo(t)
		}
		ti.FirstPiece = uint32(i)
		ti.PieceSha256 = t.sums[i:j:j]
		s.send(p.host, infoPacket(ti))
		sent = true
		i = j
	}
	if !sent {
		s.send(p.host, infoPacket(first))
	}
}

func (s *Scheduler) refreshTokenLocked(p *peer, ti *schedulerv1.TaskInfo) {
	exp := s.clk.Now().Add(s.cfg.TokenTTL)
	p.tokenExpiry = exp
	ti.Token = s.signer.Sign(p.task.id, p.host.info.ID, exp)
	ti.TokenExpiryUnix = exp.Unix()
}

// broadcastLocked sends pkt to every admitted, downloading host of t.
func (s *Scheduler) broadcastLocked(t *task, pkt *schedulerv1.SchedulerPacket) {
	for _, q := range t.list {
		if q.admitted && !q.done && !q.isCDN() {
			s.send(q.host, pkt)
		}
	}
}

// availableLocked tells p's children that p now holds pieces (only pieces
// whose digests are known: the children got them already). The CDN's new
// pieces are handed out by grantLocked instead (super-seeding).
func (s *Scheduler) availableLocked(p *peer, pieces []uint32) {
	if len(pieces) == 0 {
		return
	}
	if p.isCDN() && s.cfg.CDNFanout > 0 {
		s.grantLocked(p.task, nil)
		return
	}
	if len(p.children) == 0 {
		return
	}
	pkt := &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Available{Available: &schedulerv1.PieceAvailable{
		TaskId: p.task.id, HostId: p.host.info.ID, Pieces: pieces}}}
	for c := range p.children {
		s.send(c.host, pkt)
	}
}

// grantLocked is super-seeding. The CDN hands each piece it holds to
// CDNFanout downloading hosts (fewer when the swarm already has copies),
// first copies of every piece before second ones, with at most CDNGrants
// of them being sent at once so that they do not all crawl together; only
// a grantee sees the piece in the CDN's bitmap, and the swarm spreads it
// from there. A grantee that has the CDN
// as a parent gets a PieceAvailable; one that has not is re-assigned (the
// grant is a gap only the CDN fills, so the CDN joins its set). It runs
// when the CDN gets pieces and when grants land, stall (CDNFreshness) or
// lose their grantee. Grants to next are only recorded: the caller
// assigns next's parents right after.
func (s *Scheduler) grantLocked(t *task, next *peer) {
	c := t.cdn
	if c == nil || c.gone || s.cfg.CDNFanout <= 0 {
		return
	}
	now := s.clk.Now()
	held := piece.Bitmap(maskedBitmap(c))
	// A grant counts as being sent for as long as the CDN recently took
	// per piece (its measured throughput): reports arrive in batches, up
	// to a report interval after a piece landed, and waiting for them
	// would leave the CDN idle meanwhile. Until something is measured, a
	// grant counts until it lands or stalls.
	busyFor := s.cfg.CDNFreshness
	if tp := c.host.tp; tp > 0 && t.pieceSize > 0 {
		busyFor = min(busyFor, time.Duration(float64(t.pieceSize)/tp*float64(time.Second)))
	}
	copies := s.copies[:0]
	busy := 0
	for n := range len(held) * 8 {
		k, live := s.copiesLocked(t, n, now, busyFor)
		busy += live
		if !held.Has(n) {
			k = int32(s.cfg.CDNFanout)
		}
		copies = append(copies, k)
	}
	s.copies = copies[:0]
	if busy >= s.cfg.CDNGrants {
		return
	}
	var order []*peer
	per := map[*peer][]uint32{}
	var reassign []*peer
	for _, n := range NextGrants(copies, s.cfg.CDNFanout, s.cfg.CDNGrants-busy) {
		q := s.grantTargetLocked(t, n)
		if q == nil {
			continue
		}
		s.addGrantLocked(q, n, now)
		if q == next {
			continue
		}
		if _, ok := c.children[q]; ok {
			if per[q] == nil {
				order = append(order, q)
			}
			per[q] = append(per[q], uint32(n))
		} else if !slices.Contains(reassign, q) {
			reassign = append(reassign, q)
		}
	}
	for _, q := range order {
		s.send(q.host, &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Available{Available: &schedulerv1.PieceAvailable{
			TaskId: t.id, HostId: c.host.info.ID, Pieces: per[q]}}})
	}
	for _, q := range reassign {
		s.assignLocked(q)
	}
}

// grantScan bounds the peers looked at for one grant.
const grantScan = 64

// grantTargetLocked picks the downloading peer to hand piece n to: among
// at most grantScan eligible peers from where the last search ended, the
// one with the fewest grants on their way, then the most children (they
// hear of the piece as soon as it lands, so it spreads at once). nil when
// none is eligible.
func (s *Scheduler) grantTargetLocked(t *task, n int) *peer {
	var best *peer
	bestKey, bestAt := 0, 0
	for i, seen := 0, 0; i < len(t.list) && seen < grantScan; i++ {
		j := (t.grantNext + i) % len(t.list)
		q := t.list[j]
		if q.isCDN() || !q.admitted || q.gone || q.done || q.host.quarantined || q.bitmap.Has(n) || slices.Contains(q.granted, int32(n)) {
			continue
		}
		seen++
		key := s.outstandingLocked(q)*1000 - min(len(q.children), 999)
		if best == nil || key < bestKey {
			best, bestKey, bestAt = q, key, j
		}
	}
	if best != nil {
		t.grantNext = bestAt + 1
	}
	return best
}

// addGrantLocked records that the CDN hands piece n to q.
func (s *Scheduler) addGrantLocked(q *peer, n int, now time.Time) {
	t := q.task
	for len(t.grants) <= n {
		t.grants = append(t.grants, nil)
	}
	t.grants[n] = append(t.grants[n], cdnGrant{to: q, at: now})
	q.granted = append(q.granted, int32(n))
	s.metrics.CDNGrants.Inc()
}

// outstandingLocked prunes q's grants of pieces it holds and returns how
// many remain.
func (s *Scheduler) outstandingLocked(q *peer) int {
	kept := q.granted[:0]
	for _, n := range q.granted {
		if !q.bitmap.Has(int(n)) {
			kept = append(kept, n)
		}
	}
	q.granted = kept
	return len(kept)
}

// copiesLocked returns the copies of piece n the swarm has or is about to
// have — the peers holding it plus the CDN's grants of it still on their
// way (the grantee downloads and lacks the piece, and the grant is younger
// than CDNFreshness: an older one has stalled) — and how many of those
// grants are younger than busyFor (the CDN is likely still sending them).
// It prunes grants that no longer matter.
func (s *Scheduler) copiesLocked(t *task, n int, now time.Time, busyFor time.Duration) (int32, int) {
	var c int32
	if n < len(t.holders) {
		c = t.holders[n]
	}
	if n >= len(t.grants) {
		return c, 0
	}
	gs := t.grants[n]
	kept := gs[:0]
	live, busy := 0, 0
	for _, g := range gs {
		if g.to.gone || g.to.done || g.to.host.quarantined || g.to.bitmap.Has(n) {
			continue
		}
		kept = append(kept, g)
		if age := now.Sub(g.at); age < s.cfg.CDNFreshness {
			live++
			if age < busyFor {
				busy++
			}
		}
	}
	clear(gs[len(kept):])
	t.grants[n] = kept
	return c + int32(live), busy
}

// grantedBitmap returns the CDN pieces handed to p that it lacks.
func (s *Scheduler) grantedBitmap(p *peer) piece.Bitmap {
	s.outstandingLocked(p)
	var b piece.Bitmap
	for _, n := range p.granted {
		b.Set(int(n))
	}
	return b
}

// cdnOfferLocked is what the CDN (cdn) offers child p, whose bitmap as
// parent choice sees it is view: see CDNOffer.
func (s *Scheduler) cdnOfferLocked(cdn, p *peer, view piece.Bitmap) piece.Bitmap {
	if s.cfg.CDNFanout <= 0 {
		return CDNOffer(view, maskedBitmap(cdn), nil, false)
	}
	return CDNOffer(view, maskedBitmap(cdn), s.grantedBitmap(p), true)
}

// gainLocked records that p holds piece n, and reports whether that is
// news.
func (s *Scheduler) gainLocked(p *peer, n int) bool {
	if p.bitmap.Has(n) {
		return false
	}
	p.bitmap.Set(n)
	if p.isCDN() || p.host.quarantined {
		return true // not a copy others may fetch (holders)
	}
	addHolder(p, n)
	return true
}

// addHolder counts p's piece n as a copy others may fetch.
func addHolder(p *peer, n int) {
	t := p.task
	for len(t.holders) <= n {
		t.holders = append(t.holders, 0)
		t.recent = append(t.recent, [recentHolders]*peer{})
		t.recentNext = append(t.recentNext, 0)
	}
	t.holders[n]++
	i := t.recentNext[n]
	t.recent[n][i] = p
	t.recentNext[n] = (i + 1) % recentHolders
}

// updateHungryLocked keeps p's membership of task.hungry current.
func (s *Scheduler) updateHungryLocked(p *peer) {
	t := p.task
	want := !p.isCDN() && p.admitted && !p.gone && !p.done && len(p.parents) < s.cfg.MaxParents
	if want == (p.hungryIdx >= 0) {
		return
	}
	if want {
		p.hungryIdx = len(t.hungry)
		t.hungry = append(t.hungry, p)
		return
	}
	last := t.hungry[len(t.hungry)-1]
	t.hungry[p.hungryIdx] = last
	last.hungryIdx = p.hungryIdx
	t.hungry[len(t.hungry)-1] = nil
	t.hungry = t.hungry[:len(t.hungry)-1]
	p.hungryIdx = -1
}

// ---------------------------------------------------------------- parents

// childView is the child's bitmap as parent choice must see it: pieces
// whose digests are unknown count as held (nobody may offer them yet).
func childView(p *peer, width int) piece.Bitmap {
	t := p.task
	if t.allKnown() {
		return p.bitmap
	}
	v := make(piece.Bitmap, max(width, len(p.bitmap)))
	for i := range v {
		var b, k byte
		if i < len(p.bitmap) {
			b = p.bitmap[i]
		}
		if i < len(t.known) {
			k = t.known[i]
		}
		v[i] = b | ^k
	}
	return v
}

// parentBitmapLocked is parent q's bitmap as child sees it: limited to
// known digests and, for the CDN under super-seeding, to the pieces handed
// to the child (grants).
func (s *Scheduler) parentBitmapLocked(q, child *peer) []byte {
	b := maskedBitmap(q)
	if !q.isCDN() || s.cfg.CDNFanout <= 0 {
		return b
	}
	g := s.grantedBitmap(child)
	for i := range b {
		if i < len(g) {
			b[i] &= g[i]
		} else {
			b[i] = 0
		}
	}
	return b
}

// maskedBitmap returns a copy of q's bitmap limited to known digests.
func maskedBitmap(q *peer) []byte {
	t := q.task
	b := q.bitmap.Clone()
	if t.allKnown() {
		return b
	}
	for i := range b {
		if i < len(t.known) {
			b[i] &= t.known[i]
		} else {
			b[i] = 0
		}
	}
	return b
}

func (s *Scheduler) candidateLocked(q, child *peer, now time.Time) Candidate {
	h := q.host
	// The load a parent would have with this child: a current parent
	// already counts it.
	children := h.children
	_, current := q.children[child]
	if current {
		children--
	}
	load := max(children, h.activeUploads)
	fails := h.failures(now)
	if l := child.links[h.info.ID]; l != nil {
		fails += l.Failures
	}
	return Candidate{
		ID: h.info.ID, Bitmap: q.bitmap, Load: load, Throughput: h.tp, Failures: fails, Current: current,
		Zone: h.info.Zone, CDN: h.info.CDN, Seeding: h.info.CDN && q.task.seed == seedRunning,
		Downloading: !h.info.CDN && !q.done, Quarantined: h.quarantined, Tiebreak: h.hash,
	}
}

// candidatesLocked returns the peers parent choice scores for p: the CDN
// and, in a swarm of at most 2 × CandidateSample peers (or with
// CandidateSample 0), every other peer; in a larger one p's current
// parents, recent holders of p's rarest missing pieces, and
// CandidateSample peers drawn at random — so a decision costs the same
// whatever the swarm's size. Avoided parents are left out.
func (s *Scheduler) candidatesLocked(p *peer, now time.Time) []*peer {
	t := p.task
	s.epoch++
	pool := s.pool[:0]
	add := func(q *peer) {
		if q == p || q.mark == s.epoch || !q.admitted || q.gone {
			return
		}
		q.mark = s.epoch
		if until, ok := p.avoid[q.host.info.ID]; ok {
			if now.Before(until) {
				return
			}
			delete(p.avoid, q.host.info.ID)
		}
		pool = append(pool, q)
	}
	if t.cdn != nil {
		add(t.cdn)
	}
	k := s.cfg.CandidateSample
	if k <= 0 || len(t.list) <= 2*k {
		for _, q := range t.list {
			add(q)
		}
		s.pool = pool
		return pool
	}
	for _, q := range p.parents {
		add(q)
	}
	for _, n := range RarestMissing(p.bitmap, t.known, t.holders, rarePieces, p.host.hash^s.draws) {
		for _, q := range t.recent[n] {
			if q != nil && q.bitmap.Has(n) {
				add(q)
			}
		}
	}
	s.draws++
	for _, i := range SampleIndexes(len(t.list), k, mix(p.host.hash^s.draws)) {
		add(t.list[i])
	}
	s.pool = pool
	return pool
}

// rarePieces is how many of a child's rarest missing pieces recruit their
// recent holders as candidates.
const rarePieces = 4

// assignLocked chooses p's parents and sends them as a ParentSet.
func (s *Scheduler) assignLocked(p *peer) {
	if p.gone || !p.admitted || p.isCDN() {
		return
	}
	start := time.Now()
	t := p.task
	var chosen []*peer
	if !p.done {
		now := s.clk.Now()
		pool := s.candidatesLocked(p, now)
		width := 0
		for _, q := range pool {
			width = max(width, len(q.bitmap))
		}
		child := Candidate{ID: p.host.info.ID, Bitmap: childView(p, width), Zone: p.host.info.Zone, Tiebreak: p.host.hash}
		cands := s.scratch[:0]
		cdnAt := -1
		for _, q := range pool {
			c := s.candidateLocked(q, p, now)
			if q.isCDN() {
				c.Bitmap = s.cdnOfferLocked(q, p, child.Bitmap)
				cdnAt = len(cands)
			}
			cands = append(cands, c)
		}
		picked := ChooseParents(child, cands, s.cfg.MaxParents, s.cfg.Weights)
		if len(picked) == 0 && cdnAt >= 0 && s.cfg.CDNFanout > 0 {
			// Nobody to trade with and nothing rare left: the CDN offers
			// the child whatever it lacks rather than leave it stuck.
			cands[cdnAt].Bitmap = CDNOffer(child.Bitmap, maskedBitmap(t.cdn), nil, false)
			picked = ChooseParents(child, cands, s.cfg.MaxParents, s.cfg.Weights)
		}
		var offer piece.Bitmap
		for _, c := range picked {
			q := t.peers[c.ID]
			if q.isCDN() {
				offer = c.Bitmap
			}
			chosen = append(chosen, q)
		}
		if offer != nil && s.cfg.CDNFanout > 0 {
			s.grantGapLocked(p, offer, chosen, now)
		}
		clear(cands)
		s.scratch = cands[:0]
		clear(pool)
	}
	s.setParentsLocked(p, chosen)
	ps := &schedulerv1.ParentSet{TaskId: t.id, Parents: make([]*schedulerv1.Parent, 0, len(chosen))}
	for _, q := range chosen {
		ps.Parents = append(ps.Parents, &schedulerv1.Parent{HostId: q.host.info.ID, Addr: q.host.addr,
			Bitmap: s.parentBitmapLocked(q, p), Cdn: q.host.info.CDN, Zone: q.host.info.Zone})
	}
	s.send(p.host, &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Parents{Parents: ps}})
	s.metrics.Decision.Observe(time.Since(start).Seconds())
}

// grantGapLocked hands child p the pieces the CDN offered it (offer) that
// were not granted to it yet and that none of its chosen peers holds:
// only those will it fetch from the CDN.
func (s *Scheduler) grantGapLocked(p *peer, offer piece.Bitmap, chosen []*peer, now time.Time) {
	g := s.grantedBitmap(p)
	for n := range len(offer) * 8 {
		if !offer.Has(n) || g.Has(n) {
			continue
		}
		covered := false
		for _, q := range chosen {
			if !q.isCDN() && q.bitmap.Has(n) {
				covered = true
				break
			}
		}
		if !covered {
			s.addGrantLocked(p, n, now)
		}
	}
}

// setParentsLocked replaces p's parents, keeping children sets and host
// loads in step.
func (s *Scheduler) setParentsLocked(p *peer, parents []*peer) {
	for _, q := range p.parents {
		if _, ok := q.children[p]; ok {
			delete(q.children, p)
			q.host.children--
		}
	}
	for _, q := range parents {
		if _, ok := q.children[p]; !ok {
			q.children[p] = struct{}{}
			q.host.children++
		}
	}
	p.parents = parents
	s.updateHungryLocked(p)
}

// removePeersLocked removes peers from their tasks; their children (not
// removed themselves) get new parents once all are gone.
func (s *Scheduler) removePeersLocked(ps []*peer) {
	for _, p := range ps {
		p.gone = true
	}
	orphans := map[*peer]struct{}{}
	for _, p := range ps {
		t := p.task
		s.setParentsLocked(p, nil)
		for c := range p.children {
			if !c.gone {
				orphans[c] = struct{}{}
			}
			kept := c.parents[:0:0]
			for _, q := range c.parents {
				if q != p {
					kept = append(kept, q)
				}
			}
			c.parents = kept
		}
		p.host.children -= len(p.children)
		p.children = nil
		if !p.isCDN() && !p.host.quarantined { // a quarantined host's pieces left holders already
			for n := range t.holders {
				if p.bitmap.Has(n) {
					t.holders[n]--
				}
			}
		}
		s.updateHungryLocked(p)
		delete(t.peers, p.host.info.ID)
		last := t.list[len(t.list)-1]
		t.list[p.idx] = last
		last.idx = p.idx
		t.list[len(t.list)-1] = nil
		t.list = t.list[:len(t.list)-1]
		delete(p.host.peers, t.id)
		if t.cdn == p {
			t.cdn = nil
		}
		if p.done && !p.isCDN() {
			t.doneCount--
		}
	}
	for c := range orphans {
		s.assignLocked(c)
	}
	var last *task
	for _, p := range ps {
		if p.task != last {
			last = p.task
			s.gcTaskLocked(p.task)
		}
	}
}

// gcTaskLocked forgets a task nobody downloads or holds, once no seed is
// running and no failure is cached.
func (s *Scheduler) gcTaskLocked(t *task) {
	n := len(t.list)
	if t.cdn != nil {
		n--
	}
	if n > 0 {
		return
	}
	if t.seed == seedRunning || (t.seed == seedFailed && s.clk.Now().Before(t.failedAt.Add(s.cfg.FailureCacheTTL))) {
		return
	}
	if s.tasks[t.id] == t {
		if t.cdn != nil {
			delete(t.cdn.host.peers, t.id)
			t.cdn.gone = true
		}
		delete(s.tasks, t.id)
		s.metrics.Tasks.Set(float64(len(s.tasks)))
	}
}

// failPeersLocked ends a task for peers: BackToSource when e says the
// origin is unavailable to the seeder and the config allows it (the peers
// stay registered), else a TaskError (they leave the task).
func (s *Scheduler) failPeersLocked(t *task, ps []*peer, e *schedulerv1.TaskError) {
	e = cloneErr(e, t.id)
	bts := e.Code == schedulerv1.ErrorCode_ERROR_UNAVAILABLE && s.cfg.BackToSourceWhenNoSeeder
	var leave []*peer
	for _, p := range ps {
		if bts {
			p.admitted = true
			s.metrics.BackToSource.Inc()
			s.send(p.host, &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_BackToSource{
				BackToSource: &schedulerv1.BackToSource{TaskId: t.id, Reason: e.Message}}})
			continue
		}
		s.send(p.host, errPacket(e))
		leave = append(leave, p)
	}
	s.removePeersLocked(leave)
}

func cloneErr(e *schedulerv1.TaskError, taskID string) *schedulerv1.TaskError {
	if e == nil {
		return &schedulerv1.TaskError{TaskId: taskID, Code: schedulerv1.ErrorCode_ERROR_UNKNOWN}
	}
	c := &schedulerv1.TaskError{TaskId: taskID, Code: e.Code, Message: e.Message, OriginStatus: e.OriginStatus}
	if len(e.OriginHeaders) > 0 {
		c.OriginHeaders = make(map[string]string, len(e.OriginHeaders))
		for k, v := range e.OriginHeaders {
			c.OriginHeaders[k] = v
		}
	}
	return c
}

// ---------------------------------------------------------------- reports

// ReportPieces records a batch of piece outcomes of hostID. Successes set
// bits, update the parent's measured throughput and byte counters, and are
// forwarded to the reporter's children as PieceAvailable. FAILURE_VERIFY
// counts a bad piece against the parent, and so does FAILURE_SLOW (a
// trickled piece) when the parent delivered nothing to anyone during that
// download while the reporter received other pieces (quarantine at
// QuarantineBadPieces) and drops it for this child; network, refused and
// not-found failures count against the parent for this child and replace it
// at ParentFailureLimit — except "not found" for a piece the parent
// reported holding while it still takes part in the task, which is a bad
// piece like a failed verification; FAILURE_LOCAL is ignored. A parent
// much slower than its siblings is replaced too.
func (s *Scheduler) ReportPieces(hostID string, r *schedulerv1.PieceReports) {
	s.lock()
	defer s.unlock()
	h := s.touch(hostID)
	if h == nil || r == nil {
		return
	}
	p := h.peers[r.TaskId]
	if p == nil || !p.admitted || p.isCDN() {
		return
	}
	t := p.task
	now := s.clk.Now()
	count := t.count()
	var avail []uint32
	replace := map[string]string{}
	// A grantee's report may land a CDN grant: hand out the next ones.
	regrant := len(p.granted) > 0
	results := r.Results
	if len(results) > MaxReportBatch {
		results = results[:MaxReportBatch]
	}
	// Deliveries first, so that a slow piece in the same batch is judged
	// with them.
	for _, res := range results {
		if res.GetFailure() == schedulerv1.Failure_FAILURE_NONE && res.GetBytes() > 0 {
			h.lastReceived = now
			if par := s.hosts[res.GetParentId()]; par != nil && par != h {
				par.lastServed = now
			}
		}
	}
	for _, res := range results {
		n := int(res.GetPiece())
		if n >= piece.MaxCount || (count >= 0 && n >= count) {
			continue
		}
		var par *host
		if id := res.GetParentId(); id != "" && id != hostID {
			par = s.hosts[id]
		}
		switch res.GetFailure() {
		case schedulerv1.Failure_FAILURE_NONE:
			if s.gainLocked(p, n) && t.known.Has(n) {
				avail = append(avail, uint32(n))
			}
			h.bytesReceived += res.GetBytes()
			src := "origin"
			if par != nil {
				src = "p2p"
				if par.info.CDN {
					src = "cdn"
					regrant = true
				}
				par.bytesServed += res.GetBytes()
				if res.GetCostMs() > 0 && res.GetBytes() > 0 {
					tp := float64(res.GetBytes()) * 1000 / float64(res.GetCostMs())
					par.tp = ewma(par.tp, tp)
					l := p.link(par.info.ID)
					l.Throughput = ewma(l.Throughput, tp)
					l.Samples++
				}
			}
			s.metrics.BytesReported.WithLabelValues(src).Add(float64(res.GetBytes()))
		case schedulerv1.Failure_FAILURE_VERIFY:
			if par != nil {
				if !par.info.CDN {
					replace[par.info.ID] = "bad piece"
				}
				s.badPieceLocked(par, p, n)
			}
		case schedulerv1.Failure_FAILURE_SLOW:
			if par == nil || par.info.CDN {
				break
			}
			// A trickler delivers nothing to anyone while the reporter
			// gets its other pieces. A parent that delivered meanwhile is
			// busy (its uploads queue behind its rate limit), and a
			// reporter that received nothing is itself stalled: neither
			// is a bad piece, nor a failure (the reporter asks for other
			// parents itself when it gave up on one).
			started := now.Add(-time.Duration(res.GetCostMs()) * time.Millisecond)
			if busy, stalled := par.lastServed.After(started), !h.lastReceived.After(started); busy || stalled {
				s.metrics.SlowPieces.WithLabelValues("excused").Inc()
				s.log.Debug("slow piece excused", "task", t.id, "peer", hostID, "parent", par.info.ID, "piece", n,
					"parent_delivered_meanwhile", busy, "reporter_stalled", stalled)
				break
			}
			replace[par.info.ID] = "slow piece"
			s.metrics.SlowPieces.WithLabelValues("bad").Inc()
			s.badPieceLocked(par, p, n)
		case schedulerv1.Failure_FAILURE_NOT_FOUND:
			if par == nil {
				break
			}
			if pp := par.peers[t.id]; pp != nil && !pp.gone && pp.admitted && !par.info.CDN && pp.bitmap.Has(n) {
				// It told us it holds the piece and still takes part in
				// the task (a host that drops a task leaves it first):
				// serving "not held" for it is a lie, a bad piece.
				replace[par.info.ID] = "piece not held"
				s.badPieceLocked(par, p, n)
				break
			}
			p.link(par.info.ID).Failures++
			par.addFailure(now)
		case schedulerv1.Failure_FAILURE_NETWORK, schedulerv1.Failure_FAILURE_REFUSED:
			if par != nil {
				p.link(par.info.ID).Failures++
				par.addFailure(now)
			}
		}
	}
	s.availableLocked(p, avail)
	if regrant {
		s.grantLocked(t, nil)
	}
	if p.done || p.gone {
		return
	}
	// Re-parent on failures or slowness (never away from the CDN: it is the
	// source of last resort and only fills gaps anyway).
	for _, q := range p.parents {
		id := q.host.info.ID
		if q.isCDN() {
			continue
		}
		l := p.links[id]
		if l == nil {
			continue
		}
		var sib []float64
		for _, o := range p.parents {
			if o != q && !o.isCDN() {
				if ol := p.links[o.host.info.ID]; ol != nil && ol.Samples > 0 {
					sib = append(sib, ol.Throughput)
				}
			}
		}
		if why := ShouldReparent(*l, sib, s.cfg); why != ReasonNone {
			replace[id] = why
		}
	}
	if len(replace) > 0 {
		for id, why := range replace {
			s.avoidLocked(p, id, now)
			s.metrics.Reparents.WithLabelValues(why).Inc()
			s.log.Info("replacing parent", "task", t.id, "peer", hostID, "parent", id, "reason", why)
		}
		s.assignLocked(p)
	}
}

func (s *Scheduler) avoidLocked(p *peer, parent string, now time.Time) {
	if p.avoid == nil {
		p.avoid = map[string]time.Time{}
	}
	p.avoid[parent] = now.Add(s.cfg.AvoidTTL)
	delete(p.links, parent)
}

// badPieceLocked counts a piece that failed verification against par, once
// per (task, piece, reporter), and quarantines par at the threshold.
func (s *Scheduler) badPieceLocked(par *host, reporter *peer, n int) {
	log := s.log.With("task", reporter.task.id, "peer", reporter.host.info.ID, "parent", par.info.ID, "piece", n)
	if par.info.CDN {
		log.Warn("piece from the CDN failed verification")
		return
	}
	key := reporter.task.id + "|" + strconv.Itoa(n) + "|" + reporter.host.info.ID
	if par.badSeen == nil {
		par.badSeen = map[string]struct{}{}
	}
	if _, dup := par.badSeen[key]; dup {
		return
	}
	par.badSeen[key] = struct{}{}
	par.badPieces++
	log.Warn("bad piece", "bad_pieces", par.badPieces)
	if par.badPieces >= s.cfg.QuarantineBadPieces && !par.quarantined {
		par.quarantinedAt = par.badPieces
		s.quarantineLocked(par)
	}
}

// ban is a quarantine remembered by host ID.
type ban struct {
	at        time.Time
	badPieces int
}

// maxBanned bounds the quarantines remembered.
const maxBanned = 4096

// quarantineLocked takes a host out of every parent set until an operator
// releases it (Release), across reconnects.
func (s *Scheduler) quarantineLocked(h *host) {
	h.quarantined = true
	if len(s.banned) >= maxBanned {
		oldest := ""
		for id, b := range s.banned {
			if oldest == "" || b.at.Before(s.banned[oldest].at) {
				oldest = id
			}
		}
		delete(s.banned, oldest)
	}
	s.banned[h.info.ID] = ban{at: s.clk.Now(), badPieces: h.badPieces}
	s.metrics.Quarantines.Inc()
	s.log.Warn("host quarantined", "peer", h.info.ID, "bad_pieces", h.badPieces)
	var orphans []*peer
	var tasks []*task
	for _, q := range h.peers {
		for c := range q.children {
			orphans = append(orphans, c)
		}
		// Its pieces are no copies anyone may fetch: the CDN hands them
		// out again (grantLocked counts holders).
		if !q.isCDN() {
			t := q.task
			for n := range t.holders {
				if q.bitmap.Has(n) {
					t.holders[n]--
				}
			}
			tasks = append(tasks, t)
		}
	}
	for _, c := range orphans {
		s.assignLocked(c)
	}
	for _, t := range tasks {
		s.grantLocked(t, nil)
	}
}

// Release lifts a host's quarantine (an operator's decision, say after its
// disk was repaired): it may be a parent again, its pieces count as copies
// again, and its bad-piece count starts over. It reports whether the host
// was quarantined (connected or remembered).
func (s *Scheduler) Release(hostID string) bool {
	s.lock()
	defer s.unlock()
	_, banned := s.banned[hostID]
	delete(s.banned, hostID)
	h := s.hosts[hostID]
	if h == nil || !h.quarantined {
		return banned
	}
	h.quarantined, h.badPieces, h.quarantinedAt, h.badSeen = false, 0, 0, nil
	s.log.Warn("host released from quarantine", "peer", hostID)
	for _, q := range h.peers {
		if q.isCDN() || q.gone {
			continue
		}
		for n := range len(q.bitmap) * 8 {
			if q.bitmap.Has(n) {
				addHolder(q, n)
			}
		}
	}
	return true
}

// Done records the end of a host's download. Success makes it a seed of
// the task (its children learn the pieces it did not report); failure is a
// Leave.
func (s *Scheduler) Done(hostID string, d *schedulerv1.TaskDone) {
	s.lock()
	defer s.unlock()
	h := s.touch(hostID)
	if h == nil || d == nil {
		return
	}
	p := h.peers[d.TaskId]
	if p == nil || p.isCDN() {
		return
	}
	if !d.Success {
		s.log.Info("peer gave up", "task", d.TaskId, "peer", hostID, "back_to_source", d.BackToSource)
		s.removePeersLocked([]*peer{p})
		return
	}
	s.markDoneLocked(p)
}

func (s *Scheduler) markDoneLocked(p *peer) {
	t := p.task
	if !p.done {
		p.done = true
		t.doneCount++
	}
	s.setParentsLocked(p, nil)
	if n := t.count(); n >= 0 {
		var avail []uint32
		for i := 0; i < n; i++ {
			if s.gainLocked(p, i) && t.known.Has(i) {
				avail = append(avail, uint32(i))
			}
		}
		s.availableLocked(p, avail)
	}
}

// NeedParents recomputes a host's parents for a task, leaving out those it
// gave up on (for AvoidTTL), and sends the ParentSet. A starving task with
// no source left is seeded again.
func (s *Scheduler) NeedParents(hostID string, r *schedulerv1.NeedParents) {
	s.lock()
	defer s.unlock()
	h := s.touch(hostID)
	if h == nil || r == nil {
		return
	}
	p := h.peers[r.TaskId]
	if p == nil || !p.admitted || p.isCDN() {
		return
	}
	now := s.clk.Now()
	failed := r.Failed
	if len(failed) > MaxFailedList {
		failed = failed[:MaxFailedList]
	}
	for _, id := range failed {
		if q := p.task.peers[id]; q != nil && !q.isCDN() {
			s.avoidLocked(p, id, now)
		}
	}
	if !p.done {
		s.maybeSeedLocked(p)
	}
	s.assignLocked(p)
}

// Leave removes a host from a task; its children get new parents.
func (s *Scheduler) Leave(hostID, taskID string) {
	s.lock()
	defer s.unlock()
	h := s.touch(hostID)
	if h == nil {
		return
	}
	if p := h.peers[taskID]; p != nil && !p.isCDN() {
		s.removePeersLocked([]*peer{p})
	}
}

// Held offers a task the host holds completely (after its restart) as a
// seed. An unknown task is created from the host's metadata and digests;
// for a known one they must agree with what is known (else ErrInvalid and
// nothing changes). Digests the task lacked are sent to its downloading
// hosts first. Only digest tasks can be offered: readers check their
// content against the digest, while nothing could check a URL task's
// digests that a host made up.
func (s *Scheduler) Held(hostID string, ht *schedulerv1.HeldTask) error {
	if err := validateHeld(ht); err != nil {
		return fmt.Errorf("held task: %w", err)
	}
	if !strings.HasPrefix(ht.TaskId, "sha256:") {
		return fmt.Errorf("held task %s: only digest tasks can be offered: %w", trunc(ht.TaskId, 80), errdefs.ErrInvalid)
	}
	s.lock()
	defer s.unlock()
	h := s.touch(hostID)
	if h == nil {
		return fmt.Errorf("held task: host %q: %w", trunc(hostID, 80), errdefs.ErrNotFound)
	}
	t := s.tasks[ht.TaskId]
	ps := int32(ht.PieceSize)
	if t == nil {
		t = &task{id: ht.TaskId, length: -1, peers: map[string]*peer{}, created: s.clk.Now()}
		if strings.HasPrefix(t.id, "sha256:") {
			t.digest = t.id
		}
		s.tasks[t.id] = t
		s.metrics.Tasks.Set(float64(len(s.tasks)))
	} else {
		if (t.length >= 0 && t.length != ht.ContentLength) || (t.pieceSize > 0 && t.pieceSize != ps) {
			return fmt.Errorf("held task %s: length/piece size disagree with the known ones: %w", t.id, errdefs.ErrInvalid)
		}
		for i, sum := range ht.PieceSha256 {
			if i < len(t.sums) && t.sums[i] != nil && !bytes.Equal(t.sums[i], sum) {
				return fmt.Errorf("held task %s: digest of piece %d disagrees: %w", t.id, i, errdefs.ErrInvalid)
			}
		}
	}
	if t.length < 0 {
		t.length, t.pieceSize = ht.ContentLength, ps
		s.broadcastLocked(t, infoPacket(baseInfo(t)))
	}
	t.heldSums = true // digests a host offered: never "verified by our seed"
	s.learnSumsLocked(t, 0, ht.PieceSha256)
	p := t.peers[hostID]
	if p == nil {
		p = s.addPeerLocked(t, h)
	}
	p.admitted = true
	s.markDoneLocked(p)
	return nil
}

func validateHeld(ht *schedulerv1.HeldTask) error {
	if ht == nil {
		return fmt.Errorf("nil: %w", errdefs.ErrInvalid)
	}
	if err := piece.ValidTaskID(ht.TaskId); err != nil {
		return err
	}
	if ht.PieceSize == 0 || ht.PieceSize > piece.MaxSize || ht.ContentLength < 0 {
		return fmt.Errorf("task %s: bad length %d or piece size %d: %w", ht.TaskId, ht.ContentLength, ht.PieceSize, errdefs.ErrInvalid)
	}
	n := piece.Count(ht.ContentLength, int32(ht.PieceSize))
	if n > piece.MaxCount || len(ht.PieceSha256) != n {
		return fmt.Errorf("task %s: %d digests for %d pieces: %w", ht.TaskId, len(ht.PieceSha256), n, errdefs.ErrInvalid)
	}
	for _, sum := range ht.PieceSha256 {
		if len(sum) != sha256Len {
			return fmt.Errorf("task %s: digest of %d bytes: %w", ht.TaskId, len(sum), errdefs.ErrInvalid)
		}
	}
	return nil
}

// ---------------------------------------------------------------- seeder

// SeedMeta records the content length and piece size the seeder settled on
// and tells the task's hosts. A later different value is ignored.
func (s *Scheduler) SeedMeta(taskID string, length int64, pieceSize int32) {
	s.lock()
	defer s.unlock()
	t := s.tasks[taskID]
	if t == nil || t.seed != seedRunning {
		return
	}
	if pieceSize <= 0 || pieceSize > piece.MaxSize || length < -1 || (length >= 0 && piece.Count(length, pieceSize) > piece.MaxCount) {
		s.log.Error("seeder sent bad metadata", "task", taskID, "length", length, "piece_size", pieceSize)
		return
	}
	if t.pieceSize > 0 && t.pieceSize != pieceSize {
		s.log.Error("seeder changed the piece size", "task", taskID, "old", t.pieceSize, "new", pieceSize)
		return
	}
	if t.length >= 0 && length != t.length {
		return
	}
	t.pieceSize, t.length = pieceSize, length
	s.broadcastLocked(t, infoPacket(baseInfo(t)))
}

// SeedPiece records that the CDN holds piece n with SHA-256 sum; see
// SeedPieces.
func (s *Scheduler) SeedPiece(taskID string, n int, sum []byte) {
	s.SeedPieces(taskID, n, [][]byte{sum})
}

// SeedPieces records that the CDN holds pieces first.. with the given
// SHA-256 sums: the task's hosts get the digests (one TaskInfo), then the
// CDN's children get a PieceAvailable.
func (s *Scheduler) SeedPieces(taskID string, first int, sums [][]byte) {
	s.lock()
	defer s.unlock()
	t := s.tasks[taskID]
	if t == nil || t.seed != seedRunning || first < 0 || first+len(sums) > piece.MaxCount {
		return
	}
	if n := t.count(); n >= 0 && first+len(sums) > n {
		s.log.Error("seeder sent pieces beyond the content", "task", taskID, "piece", first+len(sums)-1)
		return
	}
	for _, sum := range sums {
		if len(sum) != sha256Len {
			s.log.Error("seeder sent a bad digest", "task", taskID)
			return
		}
	}
	s.learnSumsLocked(t, first, sums)
	if c := s.cdnPeerLocked(t); c != nil {
		var avail []uint32
		for i := range sums {
			if n := first + i; !c.bitmap.Has(n) && t.known.Has(n) {
				c.bitmap.Set(n)
				avail = append(avail, uint32(n))
			}
		}
		s.availableLocked(c, avail)
	}
}

// learnSumsLocked records digests and sends the new ones to the task's
// downloading hosts. Conflicting digests are ignored.
func (s *Scheduler) learnSumsLocked(t *task, first int, sums [][]byte) {
	lo, hi := -1, -1
	for i, sum := range sums {
		n := first + i
		for len(t.sums) <= n {
			t.sums = append(t.sums, nil)
		}
		if t.sums[n] != nil {
			if !bytes.Equal(t.sums[n], sum) {
				s.log.Error("conflicting digest ignored", "task", t.id, "piece", n)
			}
			continue
		}
		t.sums[n] = bytes.Clone(sum)
		t.known.Set(n)
		t.nKnown++
		if lo < 0 {
			lo = n
		}
		hi = n
	}
	wasComplete := t.complete
	t.complete = t.allKnown()
	if lo < 0 {
		if t.complete != wasComplete {
			s.broadcastLocked(t, infoPacket(baseInfo(t)))
		}
		return
	}
	// One TaskInfo covering lo..hi (all known now, old ones resent).
	ti := baseInfo(t)
	ti.FirstPiece = uint32(lo)
	ti.PieceSha256 = t.sums[lo : hi+1 : hi+1]
	s.broadcastLocked(t, infoPacket(ti))
}

// SeedDone records that the CDN holds the whole task with its final length
// and digest; the task's hosts get a final TaskInfo (complete when every
// digest is known).
func (s *Scheduler) SeedDone(taskID string, length int64, digest string) {
	s.lock()
	defer s.unlock()
	t := s.tasks[taskID]
	if t == nil || t.seed != seedRunning {
		return
	}
	if length >= 0 && t.pieceSize > 0 && t.length < 0 {
		t.length = length
	}
	if digest != "" && t.digest == "" && piece.ValidDigest(digest) == nil {
		t.digest = digest
	}
	t.seed = seedDone
	n := t.count()
	t.complete = t.allKnown()
	// Our own seed hashed every piece and the whole content in one pass and
	// the whole matched the task's digest: peers that verified each piece
	// against these digests hold the task's content.
	t.sumsVerified = t.complete && !t.heldSums && t.digest != "" && digest == t.digest
	if !t.complete {
		s.log.Error("seeder done without every digest", "task", taskID, "known", t.nKnown, "pieces", n)
	}
	if c := s.cdnPeerLocked(t); c != nil && n >= 0 {
		for i := 0; i < n; i++ {
			if t.known.Has(i) {
				c.bitmap.Set(i)
			}
		}
	}
	s.log.Info("seed done", "task", taskID, "length", t.length)
	s.broadcastLocked(t, infoPacket(baseInfo(t)))
	s.grantLocked(t, nil)
}

// SeedFailed records the seeder's failure: every host of the task that has
// not finished gets e as a TaskError and leaves the task — or BackToSource
// when e is ERROR_UNAVAILABLE and BackToSourceWhenNoSeeder is set. The
// failure is replayed to new registrations for FailureCacheTTL; after that
// a registration seeds again.
func (s *Scheduler) SeedFailed(taskID string, e *schedulerv1.TaskError) {
	s.lock()
	defer s.unlock()
	t := s.tasks[taskID]
	if t == nil || t.seed != seedRunning {
		return
	}
	s.metrics.SeedFailures.Inc()
	t.seed = seedFailed
	t.failure = cloneErr(e, taskID)
	t.failedAt = s.clk.Now()
	s.log.Info("seed failed", "task", taskID, "code", t.failure.Code, "origin_status", t.failure.OriginStatus)
	if t.failure.Code == schedulerv1.ErrorCode_ERROR_DIGEST_MISMATCH {
		// The seed's piece digests describe content that is not the task's:
		// forget them and every bitmap built on them, so a later seed (the
		// origin repaired) starts clean.
		t.sums, t.known, t.nKnown, t.complete, t.sumsVerified = nil, nil, 0, false, false
		t.holders, t.recent, t.recentNext, t.grants = nil, nil, nil, nil
		for _, p := range t.list {
			p.bitmap, p.granted = nil, nil
		}
	}
	var ps []*peer
	for _, p := range t.list {
		if !p.isCDN() && !p.done {
			ps = append(ps, p)
		}
	}
	s.failPeersLocked(t, ps, t.failure)
}

// Prefetch sends a prefetch (preheat) order to a host; unknown hosts are
// errdefs.ErrNotFound.
func (s *Scheduler) Prefetch(hostID string, p *schedulerv1.Prefetch) error {
	s.lock()
	defer s.unlock()
	h := s.hosts[hostID]
	if h == nil || h.info.CDN {
		return fmt.Errorf("prefetch: host %q: %w", trunc(hostID, 80), errdefs.ErrNotFound)
	}
	s.send(h, &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Prefetch{Prefetch: p}})
	return nil
}

// SeedEvicted records that the CDN dropped a complete task from its cache:
// it stops being a parent (its children get new parents) and a starving
// child will have the task seeded again.
func (s *Scheduler) SeedEvicted(taskID string) {
	s.lock()
	defer s.unlock()
	t := s.tasks[taskID]
	if t == nil || t.seed == seedRunning {
		return
	}
	if t.seed == seedDone {
		t.seed = seedNone
	}
	if t.cdn != nil {
		s.removePeersLocked([]*peer{t.cdn})
	}
}

// ---------------------------------------------------------------- housekeeping

// Housekeep removes hosts silent for HostTimeout (disconnecting them when
// the Sender is a Disconnecter), refreshes tokens past half their life,
// and forgets idle tasks. Run calls it; tests call it with a fake clock.
func (s *Scheduler) Housekeep() {
	s.lock()
	defer s.unlock()
	now := s.clk.Now()
	for id, h := range s.hosts {
		if h.info.CDN || now.Sub(h.lastSeen) < s.cfg.HostTimeout {
			continue
		}
		s.log.Info("host timed out", "peer", id, "silent", now.Sub(h.lastSeen))
		s.removeHostLocked(h)
		if d, ok := s.sender.(Disconnecter); ok {
			s.after = append(s.after, func() { d.Disconnect(id) })
		}
	}
	for _, t := range s.tasks {
		for _, p := range t.list {
			if p.admitted && !p.done && !p.isCDN() && p.tokenExpiry.Sub(now) < s.cfg.TokenTTL/2 {
				ti := baseInfo(t)
				s.refreshTokenLocked(p, ti)
				s.send(p.host, infoPacket(ti))
			}
		}
		// Grants that stalled or lost their grantee free their slots.
		s.grantLocked(t, nil)
		s.gcTaskLocked(t)
	}
	s.metrics.Hosts.Set(float64(len(s.hosts)))
	s.metrics.Tasks.Set(float64(len(s.tasks)))
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
