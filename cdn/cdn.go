// Package cdn is the supernode's seeder. It fetches each task's content
// from the origin once, however many peers ask at the same time, cuts the
// stream into pieces while it streams, hashes every piece (and the whole
// content) in the same pass, writes each piece to a piece.Store and
// announces it at once, so peers start on piece 0 while the rest is still
// arriving. Broken or stalled bodies resume with Range requests; complete
// tasks stay in the store, evicted least recently used first.
//
// The package knows nothing of the scheduler: progress goes to a Reporter
// that the supernode's wiring forwards.
package cdn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Reporter receives seeding progress; the supernode wiring forwards it to
// the scheduler. Calls for one task are sequential and in order; calls for
// different tasks may be concurrent. The CDN calls it from its own
// goroutines (never from inside Seed) and waits for each call, so a method
// should not block for long.
type Reporter interface {
	// SeedMeta is called once the origin answered (or a stored task is
	// replayed): length is -1 while unknown.
	SeedMeta(taskID string, length int64, pieceSize int32)
	// SeedPiece is called when piece n is stored and readable in the store;
	// sum is its SHA-256. Pieces are reported in order.
	SeedPiece(taskID string, n int, sum []byte)
	// SeedDone is called when every piece is stored and the task is complete
	// in the store, after the whole content was verified against the
	// requested digest if one was given; digest is the computed
	// "sha256:<hex>" of the content.
	SeedDone(taskID string, length int64, digest string)
	// SeedFailed ends a seed that could not complete; the task's pieces are
	// deleted from the store. err is an *OriginError or wraps an errdefs
	// class (ErrUnavailable, ErrInvalid, ErrDigestMismatch, ErrNoSpace, …).
	SeedFailed(taskID string, err error)
}

// EvictionReporter is implemented by a Reporter that wants to know when
// the LRU collector removed a complete task from the store (so the
// scheduler stops offering the CDN as its parent). It is called in order
// with the task's other Reporter calls.
type EvictionReporter interface {
	SeedEvicted(taskID string)
}

// Request asks for a task to be seeded.
type Request struct {
	// TaskID is the task's identity; empty derives it with piece.TaskID
	// from URL, Digest and Range.
	TaskID string
	// URL is the origin URL (http or https).
	URL string
	// Header is sent to the origin (Authorization included, but never
	// across a redirect to another origin). It is never logged or stored.
	Header http.Header
	// Digest is the expected "sha256:<hex>" of the content, if known.
	Digest string
	// Range is a single HTTP byte range ("bytes=0-99") when the task is a
	// part of the URL's content.
	Range string
}

// LogValue keeps headers out of logs.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("task", r.TaskID),
		slog.String("url", redactURL(r.URL)),
		slog.String("digest", r.Digest),
		slog.String("range", r.Range),
	)
}

// Stats is a snapshot of the CDN's counters.
type Stats struct {
	// OriginBytes is the body bytes received from origins.
	OriginBytes int64
	// OriginRequests is the number of origin requests sent.
	OriginRequests int64
	// Retries is the number of origin attempts retried.
	Retries int64
	// TasksSeeding is the number of tasks being seeded (fetching, waiting
	// for a fetch slot, or replayed from the store).
	TasksSeeding int
	// TasksWaiting is the number of tasks waiting for a fetch slot.
	TasksWaiting int
	// CacheBytes is the store's size at the last check.
	CacheBytes int64
	// CacheHits is the number of seeds answered from the store.
	CacheHits int64
	// Evictions is the number of tasks the LRU collector removed.
	Evictions int64
	// Done and Failed count finished seeds.
	Done, Failed int64
}

// Option changes an optional dependency of New.
type Option func(*CDN)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *CDN) { c.log = l } }

// CDN seeds tasks from their origins into a piece.Store. It is safe for
// concurrent use.
type CDN struct {
	cfg     Config
	store   piece.Store
	client  *http.Client
	rep     Reporter
	clk     clock.Clock
	log     *slog.Logger
	metrics *metrics

	sem    chan struct{}
	gcKick chan struct{}
	base   context.Context
	stop   context.CancelFunc
	runs   atomic.Bool

	mu     sync.Mutex
	tasks  map[string]*task
	closed bool
	wg     sync.WaitGroup

	originBytes, originReqs, retries, cacheHits, evictions, done, failed atomic.Int64
	waiting, cacheBytes                                                  atomic.Int64
}

// task is the one owner of a task ID's work (a seed, or an eviction);
// every Reporter call for the ID comes from it.
type task struct {
	req   Request
	evict bool // owned by the collector, not a seed
	// ending is set under CDN.mu once the owner is about to make its final
	// report; a Seed arriving then queues next instead of joining.
	ending bool
	next   *Request
}

// New returns a CDN seeding into store. client is used for every origin
// request (nil: a client with http.DefaultTransport); it is copied so that
// credentials never follow a redirect to another origin. clk stamps
// durations (nil: wall clock). No goroutine starts before Seed or Run.
func New(cfg Config, store piece.Store, client *http.Client, rep Reporter, clk clock.Clock, opts ...Option) (*CDN, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || rep == nil {
		return nil, fmt.Errorf("cdn: nil store or reporter: %w", errdefs.ErrInvalid)
	}
	if client == nil {
		client = &http.Client{}
	}
	if clk == nil {
		clk = clock.Real{}
	}
	cl := *client
	cl.CheckRedirect = stripCredentialsOnRedirect(client.CheckRedirect)
	c := &CDN{
		cfg:    cfg,
		store:  store,
		client: &cl,
		rep:    rep,
		clk:    clk,
		log:    slog.Default(),
		sem:    make(chan struct{}, cfg.MaxConcurrent),
		gcKick: make(chan struct{}, 1),
		tasks:  map[string]*task{},
	}
	for _, o := range opts {
		o(c)
	}
	c.log = c.log.With("component", "cdn")
	c.base, c.stop = context.WithCancel(context.Background())
	c.metrics = newMetrics(c)
	return c, nil
}

// stripCredentialsOnRedirect drops Authorization, Proxy-Authorization and
// Cookie from a redirected request whose origin (scheme, host and port)
// differs from the first request's. Go's client strips them only when the
// host name changes, not the port or scheme. next is the client's own
// policy, if any.
func stripCredentialsOnRedirect(next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		first := via[0].URL
		if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
			req.Header.Del("Authorization")
			req.Header.Del("Proxy-Authorization")
			req.Header.Del("Cookie")
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
}

// Seed starts seeding req, or joins the seed of the same task already under
// way, and returns at once. Progress and the outcome go to the Reporter. A
// task complete in the store is replayed from it (SeedMeta, SeedPiece for
// every piece, SeedDone) without touching the origin. When several
// requests join one seed, the origin sees the first one's headers; if that
// seed fails, the next Seed call starts afresh with its own.
//
// ctx is not retained: a seed is shared by every requester and lives until
// it ends or Run's context is done. After Run returned, Seed does nothing.
func (c *CDN) Seed(ctx context.Context, req Request) {
	if req.TaskID == "" {
		if id, err := piece.TaskID(req.URL, req.Digest, nil, req.Range); err == nil {
			req.TaskID = id
		}
	}
	req.Header = req.Header.Clone()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.log.WarnContext(ctx, "seed after shutdown ignored", "task", req.TaskID)
		return
	}
	if t := c.tasks[req.TaskID]; t != nil {
		if t.ending || t.evict {
			r := req
			t.next = &r
		}
		c.log.DebugContext(ctx, "seed joined", "task", req.TaskID)
		return
	}
	t := &task{req: req}
	c.tasks[req.TaskID] = t
	c.wg.Add(1)
	go c.runTask(t)
}

// runTask seeds t's request, then any request queued while it ended.
func (c *CDN) runTask(t *task) {
	defer c.wg.Done()
	for {
		c.seedOnce(t)
		if !c.release(t) {
			return
		}
	}
}

// release ends t's ownership of its ID, or hands it the queued request
// (true: run again).
func (c *CDN) release(t *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.next != nil && !c.closed {
		t.req, t.next, t.ending, t.evict = *t.next, nil, false, false
		return true
	}
	delete(c.tasks, t.req.TaskID)
	return false
}

// ending marks t as making its final report.
func (c *CDN) ending(t *task) {
	c.mu.Lock()
	t.ending = true
	c.mu.Unlock()
}

// seedOnce runs one seed of t.req to its final report.
func (c *CDN) seedOnce(t *task) {
	req := t.req
	log := c.log.With("task", req.TaskID)
	start := c.clk.Now()
	fail := func(err error) {
		c.failed.Add(1)
		c.metrics.seeds.WithLabelValues("failed").Inc()
		// A failed seed leaves nothing behind: its pieces were never
		// verified as a whole.
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if derr := c.store.Delete(dctx, req.TaskID); derr != nil {
			log.Warn("delete failed task", "err", derr)
		}
		cancel()
		log.Warn("seed failed", "url", redactURL(req.URL), "err", err, "elapsed", c.clk.Now().Sub(start))
		c.ending(t)
		c.rep.SeedFailed(req.TaskID, err)
	}
	if err := validate(req); err != nil {
		c.ending(t)
		c.failed.Add(1)
		c.metrics.seeds.WithLabelValues("failed").Inc()
		log.Warn("invalid seed request", "err", err)
		c.rep.SeedFailed(req.TaskID, err)
		return
	}
	ctx := c.base
	switch replayed, err := c.replay(ctx, t, log); {
	case err != nil:
		fail(err)
		return
	case replayed:
		return
	}

	c.waiting.Add(1)
	select {
	case c.sem <- struct{}{}:
		c.waiting.Add(-1)
	case <-ctx.Done():
		c.waiting.Add(-1)
		fail(fmt.Errorf("cdn shutting down: %w", errdefs.ErrUnavailable))
		return
	}
	f := newFetch(c, req, log)
	hctx, stopHash := context.WithCancel(ctx)
	f.whole.start(hctx)
	err := f.run(ctx)
	<-c.sem
	if err == nil {
		err = f.finish(ctx)
	}
	stopHash()
	f.whole.wait()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("cdn shutting down: %w", errdefs.ErrUnavailable)
		}
		fail(err)
		return
	}
	c.done.Add(1)
	c.metrics.seeds.WithLabelValues("done").Inc()
	log.Info("seed done", "length", f.length, "pieces", f.next, "attempts", f.attempts, "elapsed", c.clk.Now().Sub(start))
	c.ending(t)
	c.rep.SeedDone(req.TaskID, f.length, f.digest)
	c.kickGC()
}

func validate(req Request) error {
	if err := piece.ValidTaskID(req.TaskID); err != nil {
		return err
	}
	if _, err := piece.NormalizeURL(req.URL, nil); err != nil {
		return err
	}
	if req.Digest != "" {
		if err := piece.ValidDigest(req.Digest); err != nil {
			return err
		}
	}
	if req.Range != "" {
		if _, err := parseRange(req.Range); err != nil {
			return err
		}
	}
	return nil
}

// replay reports a task complete in the store (true) without touching the
// origin. An incomplete leftover (from a crash or an earlier run) is
// deleted so the fetch starts clean.
func (c *CDN) replay(ctx context.Context, t *task, log *slog.Logger) (bool, error) {
	id := t.req.TaskID
	st, err := c.store.Stat(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: %w", err)
	}
	if !st.Complete {
		log.Info("deleting incomplete leftover", "pieces", st.Bitmap.Count())
		return false, c.store.Delete(ctx, id)
	}
	sums, err := c.store.PieceSums(ctx, id)
	if err != nil {
		return false, fmt.Errorf("store: %w", err)
	}
	n := st.Count()
	ok := len(sums) >= n
	for i := 0; ok && i < n; i++ {
		ok = len(sums[i]) == sha256.Size
	}
	digest := st.Digest
	if ok && digest == "" {
		digest, err = c.digestFromStore(ctx, id, st.ContentLength)
		ok = err == nil
	}
	if !ok {
		log.Warn("complete task is inconsistent in the store; fetching again", "err", err)
		return false, c.store.Delete(ctx, id)
	}
	c.cacheHits.Add(1)
	c.metrics.cacheHits.Inc()
	log.Debug("seed from cache", "length", st.ContentLength, "pieces", n)
	c.rep.SeedMeta(id, st.ContentLength, st.PieceSize)
	for i := 0; i < n; i++ {
		c.rep.SeedPiece(id, i, sums[i])
	}
	c.done.Add(1)
	c.metrics.seeds.WithLabelValues("done").Inc()
	c.ending(t)
	c.rep.SeedDone(id, st.ContentLength, digest)
	return true, nil
}

// digestFromStore hashes a stored task's content (for tasks stored without
// their digest).
func (c *CDN) digestFromStore(ctx context.Context, id string, length int64) (string, error) {
	r, err := c.store.ReadAt(ctx, id, 0, length)
	if err != nil {
		return "", err
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", err
	}
	if n != length {
		return "", fmt.Errorf("store gave %d of %d bytes: %w", n, length, errdefs.ErrNotFound)
	}
	d := "sha256:" + hex.EncodeToString(h.Sum(nil))
	// Keep it for the next replay (Create fills in a missing digest).
	if st, err := c.store.Stat(ctx, id); err == nil {
		_ = c.store.Create(ctx, piece.Meta{TaskID: id, ContentLength: length, PieceSize: st.PieceSize, Digest: d})
	}
	return d, nil
}

// Run collects garbage (LRU eviction beyond MaxBytes) every GCInterval and
// after each completed seed, until ctx is done. Then it cancels every seed
// in flight (each reports SeedFailed), waits for them and returns nil. It
// may be called once.
func (c *CDN) Run(ctx context.Context) error {
	if !c.runs.CompareAndSwap(false, true) {
		return fmt.Errorf("cdn: Run called twice: %w", errdefs.ErrInvalid)
	}
	defer func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.stop()
		c.wg.Wait()
	}()
	tick := time.NewTicker(c.cfg.GCInterval)
	defer tick.Stop()
	for {
		if _, err := c.GC(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("cache gc", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-c.gcKick:
		}
	}
}

func (c *CDN) kickGC() {
	select {
	case c.gcKick <- struct{}{}:
	default:
	}
}

// GC evicts complete tasks, least recently accessed first, until the store
// holds at most MaxBytes, and deletes incomplete leftovers no seed owns. A
// task being seeded is never evicted. It returns the number of tasks
// removed. Run calls it; it is safe to call concurrently with everything
// else.
func (c *CDN) GC(ctx context.Context) (int, error) {
	list, err := c.store.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	var total int64
	for _, st := range list {
		total += st.Bytes
	}
	c.cacheBytes.Store(total)
	if total <= c.cfg.MaxBytes {
		return 0, nil
	}
	// Incomplete leftovers first (they can never be served), then LRU.
	slices.SortFunc(list, func(a, b piece.Stat) int {
		if a.Complete != b.Complete {
			if !a.Complete {
				return -1
			}
			return 1
		}
		return a.LastAccess.Compare(b.LastAccess)
	})
	evicted := 0
	for _, st := range list {
		if total <= c.cfg.MaxBytes || ctx.Err() != nil {
			break
		}
		t := c.claimForEviction(st.TaskID)
		if t == nil {
			continue // being seeded
		}
		ok := c.evict(ctx, t, st)
		if ok {
			total -= st.Bytes
			evicted++
		}
		c.mu.Lock()
		if t.next != nil && !c.closed {
			t.req, t.next, t.evict = *t.next, nil, false
			c.wg.Add(1)
			go c.runTask(t)
		} else {
			delete(c.tasks, st.TaskID)
		}
		c.mu.Unlock()
	}
	c.cacheBytes.Store(total)
	return evicted, ctx.Err()
}

// claimForEviction makes the collector the owner of id, or returns nil if a
// seed owns it.
func (c *CDN) claimForEviction(id string) *task {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tasks[id] != nil {
		return nil
	}
	t := &task{req: Request{TaskID: id}, evict: true}
	c.tasks[id] = t
	return t
}

// evict deletes a task the collector owns, re-checking its state (it may
// have been completed since the listing).
func (c *CDN) evict(ctx context.Context, t *task, listed piece.Stat) bool {
	id := listed.TaskID
	st, err := c.store.Stat(ctx, id)
	if err != nil || st.Complete != listed.Complete {
		return false
	}
	if err := c.store.Delete(ctx, id); err != nil {
		c.log.Warn("evict", "task", id, "err", err)
		return false
	}
	if st.Complete {
		c.evictions.Add(1)
		c.metrics.evictions.Inc()
		c.log.Info("evicted", "task", id, "bytes", st.Bytes, "last_access", st.LastAccess)
		if er, ok := c.rep.(EvictionReporter); ok {
			er.SeedEvicted(id)
		}
	} else {
		c.log.Info("deleted incomplete leftover", "task", id, "bytes", st.Bytes)
	}
	return true
}

// Stats returns a snapshot of the counters.
func (c *CDN) Stats() Stats {
	c.mu.Lock()
	seeding := 0
	for _, t := range c.tasks {
		if !t.evict {
			seeding++
		}
	}
	c.mu.Unlock()
	return Stats{
		OriginBytes:    c.originBytes.Load(),
		OriginRequests: c.originReqs.Load(),
		Retries:        c.retries.Load(),
		TasksSeeding:   seeding,
		TasksWaiting:   int(c.waiting.Load()),
		CacheBytes:     c.cacheBytes.Load(),
		CacheHits:      c.cacheHits.Load(),
		Evictions:      c.evictions.Load(),
		Done:           c.done.Load(),
		Failed:         c.failed.Load(),
	}
}
