// Package preheat prefetches images (or plain URLs) to hosts before they
// need them: a Manager resolves an image reference to its configs and
// layers (registry /v2/ API, token auth), has the supernode's CDN seed
// them, orders the selected agents over their sessions to download them
// (scheduler.Prefetch) and follows each host's progress in the scheduler's
// snapshots until every selected host holds every blob.
//
// Credentials given for the upstream are used to resolve the image and
// travel with the prefetch orders (as the registry token they earned) to
// the CDN and the agents, as any registration's headers do. A job never
// keeps them after its orders are sent, never logs them, and never shows
// them in its JSON.
//
// Cancelling a job stops what it has not done yet (resolving, seeding,
// orders not yet sent) and its tracking; agents finish the downloads they
// were already ordered, and the CDN finishes the seeds it started.
package preheat

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
)

// Job states.
const (
	StateResolving = "resolving"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// Per-host states in a job.
const (
	HostPending = "pending" // ordered, not registered yet
	HostRunning = "running"
	HostDone    = "done"
	HostFailed  = "failed" // left a task without finishing it
	HostGone    = "gone"   // not connected any more
)

// Sources of jobs.
const (
	SourceAPI     = "api"
	SourceWebhook = "webhook"
)

// ErrFinished is returned when cancelling a job that already ended.
var ErrFinished = errors.New("job already finished")

// Scheduler is what a Manager needs of the scheduler
// (*scheduler.Scheduler).
type Scheduler interface {
	Snapshot() scheduler.Snapshot
	Preseed(req scheduler.SeedRequest) (bool, error)
	Prefetch(hostID string, p *schedulerv1.Prefetch) error
}

var _ Scheduler = (*scheduler.Scheduler)(nil)

// CDNStatFunc reports the CDN store's state of a task (piece.Store.Stat).
type CDNStatFunc func(ctx context.Context, taskID string) (piece.Stat, error)

// Options are a Manager's optional dependencies.
type Options struct {
	// Client talks to registries; nil: http.DefaultClient.
	Client *http.Client
	// CDNStat reads the CDN's store; nil means the supernode has no CDN
	// (scope "cdn" is refused, hosts fetch from the origin).
	CDNStat CDNStatFunc
	// Clock defaults to the wall clock.
	Clock clock.Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics defaults to NewMetrics().
	Metrics *Metrics
}

// Request asks for a preheat: Image (a reference such as
// "registry:5000/app:v1") or URL (a plain HTTP(S) URL, with an optional
// Digest), Platforms (os/arch[/variant]; empty: every platform of an
// index), Scope ("all", the default, or "cdn") and Selector (k=v,…; with
// scope all).
type Request struct {
	Image       string       `json:"image,omitempty"`
	URL         string       `json:"url,omitempty"`
	Digest      string       `json:"digest,omitempty"`
	Platforms   []string     `json:"platforms,omitempty"`
	Scope       string       `json:"scope,omitempty"`
	Selector    string       `json:"selector,omitempty"`
	Credentials *Credentials `json:"credentials,omitempty"`
}

// LogValue keeps credentials out of logs.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(slog.String("image", r.Image), slog.String("url", redact(r.URL)),
		slog.String("scope", r.Scope), slog.String("selector", r.Selector), slog.Any("platforms", r.Platforms))
}

// Job is a job's JSON view. List omits Layers and Hosts.
type Job struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Source string `json:"source"`
	// Image is the normalized reference, URL the redacted URL (no user
	// info, no query).
	Image string `json:"image,omitempty"`
	URL   string `json:"url,omitempty"`
	// Digest and MediaType of what Image resolved to.
	Digest    string     `json:"digest,omitempty"`
	MediaType string     `json:"media_type,omitempty"`
	Platforms []string   `json:"platforms,omitempty"`
	Scope     string     `json:"scope"`
	Selector  string     `json:"selector,omitempty"`
	Error     string     `json:"error,omitempty"`
	Created   time.Time  `json:"created"`
	Updated   time.Time  `json:"updated"`
	Finished  *time.Time `json:"finished,omitempty"`
	// Percent is the size-weighted share of (host, blob) pairs held,
	// 0–100 (for scope cdn: of the CDN's copy).
	Percent float64 `json:"percent"`
	// Bytes is the size of one copy of every blob.
	Bytes     int64 `json:"bytes"`
	BlobCount int   `json:"blob_count"`
	HostCount int   `json:"host_count"`
	HostsDone int   `json:"hosts_done"`
	// Layers (configs and layers) with the CDN's progress.
	Layers []LayerStatus `json:"layers,omitempty"`
	// Hosts with their per-blob progress.
	Hosts []HostStatus `json:"hosts,omitempty"`
}

// LayerStatus is one blob of a job.
type LayerStatus struct {
	Blob
	// TaskID is the blob's task (its digest for images).
	TaskID string `json:"task_id"`
	// PieceCount is 0 while unknown.
	PieceCount int `json:"piece_count"`
	// CDN is the supernode's copy.
	CDN Progress `json:"cdn"`
	// HostsDone counts selected hosts holding the blob.
	HostsDone int `json:"hosts_done"`
}

// HostStatus is one selected host's progress.
type HostStatus struct {
	ID       string     `json:"id"`
	Hostname string     `json:"hostname,omitempty"`
	Zone     string     `json:"zone,omitempty"`
	State    string     `json:"state"`
	Percent  float64    `json:"percent"`
	Layers   []Progress `json:"layers"`
}

// Progress is one copy of one blob.
type Progress struct {
	Digest     string `json:"digest,omitempty"`
	Pieces     int    `json:"pieces"`
	PieceCount int    `json:"piece_count"`
	Done       bool   `json:"done"`
	// State: pending, running, done or failed.
	State string `json:"state"`
}

// Manager runs preheat jobs. Create it with New, start Run, then Create
// jobs. Its methods are safe for concurrent use.
type Manager struct {
	cfg     Config
	sched   Scheduler
	res     *resolver
	cdnStat CDNStatFunc
	clk     clock.Clock
	log     *slog.Logger
	metrics *Metrics

	mu     sync.Mutex
	ctx    context.Context
	jobs   map[string]*job
	order  []*job // by creation
	dedupe map[string]time.Time
	wg     sync.WaitGroup
}

type job struct {
	id, source string
	image, url string
	scope      string
	selector   Selector
	platforms  []string
	created    time.Time
	cancel     context.CancelFunc

	state, err        string
	digest, mediaType string
	updated, finished time.Time
	layers            []*layer
	hosts             []*hostProgress
	stuckSince        time.Time
	orderedAt         time.Time
	resolvedPlatforms []string
}

type layer struct {
	Blob
	taskID string
	count  int
	cdn    progress
}

type hostProgress struct {
	id, hostname, zone string
	gone               bool
	layers             []progress
}

type progress struct {
	pieces, count      int
	seen, done, failed bool
}

// New returns a manager; it starts nothing until Run.
func New(cfg Config, sched Scheduler, opts Options) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sched == nil {
		return nil, fmt.Errorf("preheat: scheduler is required: %w", errdefs.ErrInvalid)
	}
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	return &Manager{cfg: cfg, sched: sched, res: newResolver(opts.Client, cfg), cdnStat: opts.CDNStat, clk: opts.Clock,
		log: opts.Logger.With("component", "preheat"), metrics: opts.Metrics, jobs: map[string]*job{}, dedupe: map[string]time.Time{}}, nil
}

// Metrics returns the manager's collectors.
func (m *Manager) Metrics() *Metrics { return m.metrics }

// Run follows running jobs until ctx ends, then waits for the jobs'
// goroutines and returns nil.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	tk := time.NewTicker(m.cfg.PollInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			m.wg.Wait()
			return nil
		case <-tk.C:
			m.Poll()
		}
	}
}

func newID() string {
	var b [6]byte
	rand.Read(b[:])
	return "ph-" + hex.EncodeToString(b[:])
}

// Create validates req and starts a job; source is SourceAPI or
// SourceWebhook. Resolution, seeding and orders run in the background: the
// returned view is the job as created (state resolving). Invalid requests
// wrap errdefs.ErrInvalid; too many jobs, a manager not running, or scope
// cdn without a CDN wrap errdefs.ErrUnavailable.
func (m *Manager) Create(req Request, source string) (Job, error) {
	var creds Credentials
	if req.Credentials != nil {
		creds = *req.Credentials
	}
	bad := func(f string, args ...any) (Job, error) {
		return Job{}, fmt.Errorf("preheat: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	switch {
	case (req.Image == "") == (req.URL == ""):
		return bad("give exactly one of image and url")
	case creds.Token != "" && (creds.Username != "" || creds.Password != ""):
		return bad("credentials: give a token or a username and password, not both")
	case creds.Password != "" && creds.Username == "":
		return bad("credentials: password without username")
	case len(creds.Username)+len(creds.Password)+len(creds.Token) > 16<<10:
		return bad("credentials too long")
	case strings.ContainsAny(creds.Token+creds.Username, "\r\n") || strings.Contains(creds.Username, ":"):
		return bad("credentials: bad characters")
	case len(req.Platforms) > 64:
		return bad("more than 64 platforms")
	}
	if req.Scope == "" {
		req.Scope = ScopeAll
	}
	if req.Scope != ScopeAll && req.Scope != ScopeCDN {
		return bad("scope %q: want %s or %s", req.Scope, ScopeAll, ScopeCDN)
	}
	sel, err := ParseSelector(req.Selector)
	if err != nil {
		return Job{}, fmt.Errorf("preheat: %w", err)
	}
	if req.Scope == ScopeCDN && len(sel) > 0 {
		return bad("a selector needs scope %s", ScopeAll)
	}
	if req.Scope == ScopeCDN && m.cdnStat == nil {
		return Job{}, fmt.Errorf("preheat: scope cdn: this supernode has no CDN: %w", errdefs.ErrUnavailable)
	}
	var plats []ocispec.Platform
	for _, p := range req.Platforms {
		pl, err := ParsePlatform(p)
		if err != nil {
			return Job{}, fmt.Errorf("preheat: %w", err)
		}
		plats = append(plats, pl)
	}
	j := &job{id: newID(), source: source, scope: req.Scope, selector: sel, created: m.clk.Now(), state: StateResolving}
	j.updated = j.created
	var ref reference.Named
	if req.Image != "" {
		if ref, err = ParseReference(req.Image); err != nil {
			return Job{}, fmt.Errorf("preheat: %w", err)
		}
		j.image = ref.String()
		j.platforms = formatPlatforms(plats)
	} else {
		if len(plats) > 0 {
			return bad("platforms apply to images only")
		}
		u, err := url.Parse(req.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(req.URL) > scheduler.MaxURLLen {
			return bad("url %q: want an absolute http(s) URL", redact(req.URL))
		}
		if u.User != nil {
			return bad("url: put credentials in credentials, not in the URL")
		}
		if req.Digest != "" {
			if err := piece.ValidDigest(req.Digest); err != nil {
				return Job{}, fmt.Errorf("preheat: %w", err)
			}
		}
		j.url = redact(req.URL)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.ctx.Err() != nil {
		return Job{}, fmt.Errorf("preheat: manager not running: %w", errdefs.ErrUnavailable)
	}
	if m.activeLocked() >= m.cfg.MaxActiveJobs {
		return Job{}, fmt.Errorf("preheat: %d jobs running (max_active_jobs): %w", m.cfg.MaxActiveJobs, errdefs.ErrUnavailable)
	}
	for len(m.order) >= m.cfg.MaxJobs {
		i := slices.IndexFunc(m.order, func(o *job) bool { return o.finished != (time.Time{}) })
		if i < 0 {
			return Job{}, fmt.Errorf("preheat: %d jobs kept (max_jobs): %w", m.cfg.MaxJobs, errdefs.ErrUnavailable)
		}
		delete(m.jobs, m.order[i].id)
		m.order = slices.Delete(m.order, i, i+1)
	}
	ctx, cancel := context.WithCancel(m.ctx)
	j.cancel = cancel
	m.jobs[j.id] = j
	m.order = append(m.order, j)
	m.metrics.Active.Set(float64(m.activeLocked()))
	m.log.Info("preheat job created", "job", j.id, "source", source, "request", req)
	m.wg.Add(1)
	go m.execute(ctx, j, ref, plats, req.URL, req.Digest, creds)
	return m.viewLocked(j, true), nil
}

func (m *Manager) activeLocked() int {
	n := 0
	for _, j := range m.order {
		if j.finished.IsZero() {
			n++
		}
	}
	return n
}

// execute resolves, seeds and orders; creds die with it.
func (m *Manager) execute(ctx context.Context, j *job, ref reference.Named, plats []ocispec.Platform, rawURL, digest string, creds Credentials) {
	defer m.wg.Done()
	log := m.log.With("job", j.id)
	var (
		layers []*layer
		urls   = map[string]string{}
		authz  string
		mt     string
		dgst   string
		rplats []string
	)
	if ref != nil {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.ResolveTimeout)
		img, err := m.res.resolve(rctx, ref, plats, creds)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.finish(j, StateFailed, "resolve "+j.image+": "+err.Error())
			}
			return
		}
		authz, mt, dgst, rplats = img.authorization, img.MediaType, img.Digest, img.Platforms
		for _, b := range img.Blobs {
			layers = append(layers, &layer{Blob: b, taskID: b.Digest})
			urls[b.Digest] = img.BlobURL(b.Digest)
		}
		log.Info("image resolved", "image", j.image, "digest", dgst, "blobs", len(layers))
	} else {
		id, err := piece.TaskID(rawURL, digest, m.cfg.FilterQuery, "")
		if err != nil {
			m.finish(j, StateFailed, err.Error())
			return
		}
		layers = []*layer{{Blob: Blob{Digest: digest, Size: -1}, taskID: id}}
		urls[id] = rawURL
		switch {
		case creds.Token != "":
			authz = "Bearer " + creds.Token
		case creds.Username != "":
			authz = "Basic " + base64.StdEncoding.EncodeToString([]byte(creds.Username+":"+creds.Password))
		}
	}
	creds = Credentials{}
	var headers map[string]string
	if authz != "" {
		headers = map[string]string{"Authorization": authz}
	}

	// Hosts.
	var targets []*hostProgress
	if j.scope == ScopeAll {
		for _, h := range m.sched.Snapshot().Hosts {
			if h.CDN || h.State != "active" || !j.selector.Matches(h) {
				continue
			}
			targets = append(targets, &hostProgress{id: h.ID, hostname: h.Hostname, zone: h.Zone, layers: make([]progress, len(layers))})
		}
	}
	m.mu.Lock()
	if j.state != StateResolving {
		m.mu.Unlock()
		return // cancelled
	}
	j.layers, j.hosts, j.mediaType, j.digest, j.resolvedPlatforms = layers, targets, mt, dgst, rplats
	if j.scope == ScopeAll && len(targets) == 0 {
		m.finishLocked(j, StateFailed, "no active host matches the selector")
		m.mu.Unlock()
		return
	}
	j.state, j.updated = StateRunning, m.clk.Now()
	m.mu.Unlock()

	// Seed.
	tasks := make([]*schedulerv1.RegisterTask, 0, len(layers))
	for _, l := range layers {
		d := l.Digest
		if ctx.Err() != nil {
			return
		}
		if m.cdnStat != nil {
			started, err := m.sched.Preseed(scheduler.SeedRequest{TaskID: l.taskID, URL: urls[l.taskID], Headers: headers, Digest: d})
			switch {
			case err != nil && j.scope == ScopeCDN:
				m.finish(j, StateFailed, "seed: "+err.Error())
				return
			case err != nil:
				log.Warn("preheat seed not started; hosts will fetch the origin", "task", l.taskID, "err", err)
			case started:
				m.metrics.Seeds.Inc()
			}
		}
		tasks = append(tasks, &schedulerv1.RegisterTask{TaskId: l.taskID, Url: urls[l.taskID], Headers: headers, Digest: d, Prefetch: true})
	}
	// Orders.
	order := &schedulerv1.Prefetch{JobId: j.id, Tasks: tasks}
	sent := 0
	for _, h := range targets {
		if ctx.Err() != nil {
			log.Info("preheat cancelled while ordering", "ordered", sent, "hosts", len(targets))
			return
		}
		if err := m.sched.Prefetch(h.id, order); err != nil {
			m.mu.Lock()
			h.gone = true
			m.mu.Unlock()
			log.Warn("prefetch order not sent", "peer", h.id, "err", err)
			continue
		}
		sent++
		m.metrics.Orders.Inc()
	}
	m.mu.Lock()
	j.orderedAt = m.clk.Now()
	m.mu.Unlock()
	log.Info("preheat ordered", "hosts", sent, "blobs", len(tasks))
}

// finish ends a job (if still active).
func (m *Manager) finish(j *job, state, msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finishLocked(j, state, msg)
}

func (m *Manager) finishLocked(j *job, state, msg string) {
	if !j.finished.IsZero() {
		return
	}
	now := m.clk.Now()
	j.state, j.err, j.finished, j.updated = state, msg, now, now
	j.cancel()
	m.metrics.Jobs.WithLabelValues(state).Inc()
	m.metrics.Active.Set(float64(m.activeLocked()))
	if state == StateFailed {
		m.log.Warn("preheat job failed", "job", j.id, "err", msg)
	} else {
		m.log.Info("preheat job "+state, "job", j.id, "elapsed", now.Sub(j.created))
	}
}

// Cancel stops a job: no further orders, no more tracking. Agents finish
// downloads they were ordered. Unknown jobs are errdefs.ErrNotFound, ended
// ones ErrFinished.
func (m *Manager) Cancel(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	if j == nil {
		return Job{}, fmt.Errorf("preheat job %q: %w", trunc(id, 80), errdefs.ErrNotFound)
	}
	if !j.finished.IsZero() {
		return m.viewLocked(j, true), fmt.Errorf("preheat job %s is %s: %w", id, j.state, ErrFinished)
	}
	m.finishLocked(j, StateCancelled, "cancelled")
	return m.viewLocked(j, true), nil
}

// Get returns a job with its per-host, per-blob progress; unknown jobs are
// errdefs.ErrNotFound.
func (m *Manager) Get(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	if j == nil {
		return Job{}, fmt.Errorf("preheat job %q: %w", trunc(id, 80), errdefs.ErrNotFound)
	}
	return m.viewLocked(j, true), nil
}

// List returns every job kept, newest first, without layers and hosts.
func (m *Manager) List() []Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Job, 0, len(m.order))
	for i := len(m.order) - 1; i >= 0; i-- {
		out = append(out, m.viewLocked(m.order[i], false))
	}
	return out
}

// Poll reads the scheduler's state into the running jobs and ends those
// that completed, failed or timed out. Run calls it every PollInterval.
func (m *Manager) Poll() {
	m.mu.Lock()
	var running []*job
	cdnTasks := map[string]bool{}
	for _, j := range m.order {
		if j.state == StateRunning {
			running = append(running, j)
			for _, l := range j.layers {
				if !l.cdn.done {
					cdnTasks[l.taskID] = false
				}
			}
		}
	}
	ctx := m.ctx
	m.mu.Unlock()
	if len(running) == 0 {
		return
	}
	snap := m.sched.Snapshot()
	if m.cdnStat != nil {
		for id := range cdnTasks {
			if st, err := m.cdnStat(ctx, id); err == nil && st.Complete {
				cdnTasks[id] = true
			}
		}
	}
	tasks := make(map[string]*scheduler.TaskSnapshot, len(snap.Tasks))
	for i := range snap.Tasks {
		tasks[snap.Tasks[i].ID] = &snap.Tasks[i]
	}
	hosts := make(map[string]bool, len(snap.Hosts))
	for _, h := range snap.Hosts {
		hosts[h.ID] = true
	}
	now := m.clk.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, j := range running {
		if j.state == StateRunning {
			m.updateLocked(j, tasks, hosts, cdnTasks, now)
		}
	}
}

func findPeer(ts *scheduler.TaskSnapshot, host string) *scheduler.PeerSnapshot {
	i := sort.Search(len(ts.Peers), func(i int) bool { return ts.Peers[i].HostID >= host })
	if i < len(ts.Peers) && ts.Peers[i].HostID == host {
		return &ts.Peers[i]
	}
	return nil
}

func (m *Manager) updateLocked(j *job, tasks map[string]*scheduler.TaskSnapshot, hosts map[string]bool, cdnDone map[string]bool, now time.Time) {
	j.updated = now
	for _, l := range j.layers {
		ts := tasks[l.taskID]
		if ts != nil {
			if ts.PieceCount > 0 {
				l.count = ts.PieceCount
			}
			if l.Size < 0 && ts.ContentLength >= 0 {
				l.Size = ts.ContentLength
			}
			if !l.cdn.done {
				for _, p := range ts.Peers {
					if p.CDN {
						l.cdn.seen, l.cdn.pieces = true, p.Pieces
					}
				}
			}
		}
		if cdnDone[l.taskID] || (l.count > 0 && l.cdn.pieces >= l.count) {
			l.cdn.done, l.cdn.pieces = true, max(l.count, l.cdn.pieces)
		}
		l.cdn.count = l.count
	}
	allDone, stuck := true, true
	for _, h := range j.hosts {
		h.gone = !hosts[h.id]
		hostDone := true
		for i, l := range j.layers {
			p := &h.layers[i]
			p.count = l.count
			if p.done {
				p.pieces = max(p.pieces, l.count)
				continue
			}
			hostDone = false
			var ps *scheduler.PeerSnapshot
			if ts := tasks[l.taskID]; ts != nil {
				ps = findPeer(ts, h.id)
			}
			switch {
			case ps != nil:
				p.seen, p.failed, p.pieces = true, false, ps.Pieces
				if ps.Done || (l.count > 0 && ps.Pieces >= l.count) {
					p.done, p.pieces = true, max(ps.Pieces, l.count)
				}
			case p.seen:
				p.failed = true
			case !j.orderedAt.IsZero() && now.Sub(j.orderedAt) >= m.cfg.FailureGrace:
				// Ordered, never registered (the agent could not start it).
				p.failed = true
			}
		}
		if hostDone {
			h.gone = false
			continue
		}
		allDone = false
		if st := hostState(h); st != HostFailed && st != HostGone {
			stuck = false
		}
	}
	if j.scope == ScopeCDN {
		allDone, stuck = true, false
		for _, l := range j.layers {
			allDone = allDone && l.cdn.done
		}
	}
	switch {
	case allDone:
		m.finishLocked(j, StateSucceeded, "")
	case now.Sub(j.created) >= m.cfg.JobTimeout:
		m.finishLocked(j, StateFailed, fmt.Sprintf("timed out after %v (job_timeout)", m.cfg.JobTimeout))
	case stuck:
		if j.stuckSince.IsZero() {
			j.stuckSince = now
		} else if now.Sub(j.stuckSince) >= m.cfg.FailureGrace {
			n := 0
			for _, h := range j.hosts {
				if st := hostState(h); st == HostFailed || st == HostGone {
					n++
				}
			}
			m.finishLocked(j, StateFailed, fmt.Sprintf("%d of %d hosts failed or left", n, len(j.hosts)))
		}
	default:
		j.stuckSince = time.Time{}
	}
}

func hostState(h *hostProgress) string {
	done, seen, failed, running := true, false, false, false
	for _, p := range h.layers {
		done = done && p.done
		seen = seen || p.seen
		failed = failed || p.failed
		running = running || (p.seen && !p.done && !p.failed)
	}
	switch {
	case done:
		return HostDone
	case h.gone:
		return HostGone
	case failed && !running:
		return HostFailed
	case seen:
		return HostRunning
	}
	return HostPending
}

func (p progress) state() string {
	switch {
	case p.done:
		return HostDone
	case p.failed:
		return HostFailed
	case p.seen:
		return HostRunning
	}
	return HostPending
}

func (p progress) frac() float64 {
	switch {
	case p.done:
		return 1
	case p.count > 0:
		return min(1, float64(p.pieces)/float64(p.count))
	}
	return 0
}

func (m *Manager) viewLocked(j *job, detail bool) Job {
	v := Job{ID: j.id, State: j.state, Source: j.source, Image: j.image, URL: j.url, Digest: j.digest, MediaType: j.mediaType,
		Platforms: j.platforms, Scope: j.scope, Selector: j.selector.String(), Error: j.err, Created: j.created, Updated: j.updated,
		BlobCount: len(j.layers), HostCount: len(j.hosts)}
	if len(v.Platforms) == 0 {
		v.Platforms = j.resolvedPlatforms
	}
	if !j.finished.IsZero() {
		f := j.finished
		v.Finished = &f
	}
	var wsum float64
	weights := make([]float64, len(j.layers))
	for i, l := range j.layers {
		weights[i] = float64(max(l.Size, 1))
		wsum += weights[i]
		if l.Size > 0 {
			v.Bytes += l.Size
		}
	}
	var got float64
	complete := len(j.layers) > 0
	if j.scope == ScopeCDN {
		for i, l := range j.layers {
			got += weights[i] * l.cdn.frac()
			complete = complete && l.cdn.done
		}
		if wsum > 0 {
			v.Percent = 100 * got / wsum
		}
	} else {
		complete = complete && len(j.hosts) > 0
	}
	hostsDone := make([]int, len(j.layers))
	for _, h := range j.hosts {
		var hg float64
		for i, p := range h.layers {
			hg += weights[i] * p.frac()
			if p.done {
				hostsDone[i]++
			}
		}
		got += hg
		st := hostState(h)
		if st == HostDone {
			v.HostsDone++
		} else {
			complete = false
		}
		if detail {
			hs := HostStatus{ID: h.id, Hostname: h.hostname, Zone: h.zone, State: st, Layers: make([]Progress, len(h.layers))}
			if wsum > 0 {
				hs.Percent = percent(100*hg/wsum, st == HostDone)
			}
			for i, p := range h.layers {
				hs.Layers[i] = Progress{Digest: j.layers[i].Digest, Pieces: p.pieces, PieceCount: p.count, Done: p.done, State: p.state()}
			}
			v.Hosts = append(v.Hosts, hs)
		}
	}
	if j.scope == ScopeAll && wsum > 0 && len(j.hosts) > 0 {
		v.Percent = 100 * got / (wsum * float64(len(j.hosts)))
	}
	v.Percent = percent(v.Percent, complete)
	if detail {
		for i, l := range j.layers {
			v.Layers = append(v.Layers, LayerStatus{Blob: l.Blob, TaskID: l.taskID, PieceCount: l.count, HostsDone: hostsDone[i],
				CDN: Progress{Pieces: l.cdn.pieces, PieceCount: l.count, Done: l.cdn.done, State: l.cdn.state()}})
		}
	}
	return v
}

// percent rounds down to 0.1, so that 100 means complete.
func percent(f float64, complete bool) float64 {
	if complete {
		return 100
	}
	return min(99.9, math.Floor(f*10)/10)
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
