package cdn

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/piece"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// event is one Reporter call.
type event struct {
	kind      string // meta, piece, done, failed, evicted
	task      string
	n         int
	sum       []byte
	length    int64
	pieceSize int32
	digest    string
	err       error
}

// recorder is a Reporter that keeps every call and checks that calls for
// one task never overlap.
type recorder struct {
	t       *testing.T
	mu      sync.Mutex
	events  []event
	changed chan struct{}
	active  map[string]bool
	onPiece func(task string, n int)
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{t: t, changed: make(chan struct{}), active: map[string]bool{}}
}

func (r *recorder) add(e event) {
	r.mu.Lock()
	if r.active[e.task] {
		r.t.Errorf("overlapping reporter calls for task %s", e.task)
	}
	r.active[e.task] = true
	r.mu.Unlock()
	if e.kind == "piece" && r.onPiece != nil {
		r.onPiece(e.task, e.n)
	}
	time.Sleep(time.Microsecond)
	r.mu.Lock()
	r.active[e.task] = false
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) SeedMeta(task string, length int64, ps int32) {
	r.add(event{kind: "meta", task: task, length: length, pieceSize: ps})
}
func (r *recorder) SeedPiece(task string, n int, sum []byte) {
	r.add(event{kind: "piece", task: task, n: n, sum: sum})
}
func (r *recorder) SeedDone(task string, length int64, digest string) {
	r.add(event{kind: "done", task: task, length: length, digest: digest})
}
func (r *recorder) SeedFailed(task string, err error) {
	r.add(event{kind: "failed", task: task, err: err})
}
func (r *recorder) SeedEvicted(task string) { r.add(event{kind: "evicted", task: task}) }

var _ EvictionReporter = (*recorder)(nil)

// of returns the events of one task.
func (r *recorder) of(task string) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event
	for _, e := range r.events {
		if e.task == task {
			out = append(out, e)
		}
	}
	return out
}

// wait waits until some event of task satisfies ok and returns it.
func (r *recorder) wait(task string, ok func(event) bool) event {
	r.t.Helper()
	return r.waitList(task, func(evs []event) (event, bool) {
		for _, e := range evs {
			if ok(e) {
				return e, true
			}
		}
		return event{}, false
	})
}

// waitList waits until found returns true on the events of task.
func (r *recorder) waitList(task string, found func([]event) (event, bool)) event {
	r.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		if e, ok := found(r.of(task)); ok {
			return e
		}
		select {
		case <-ch:
		case <-deadline:
			r.t.Fatalf("timed out waiting for an event of %s; have %v", task, kinds(r.of(task)))
		}
	}
}

// waitEnd waits for the nth (1-based) final event (done or failed) of task.
func (r *recorder) waitEnd(task string, nth int) event {
	r.t.Helper()
	return r.waitList(task, func(evs []event) (event, bool) {
		seen := 0
		for _, e := range evs {
			if e.kind == "done" || e.kind == "failed" {
				if seen++; seen == nth {
					return e, true
				}
			}
		}
		return event{}, false
	})
}

func kinds(evs []event) []string {
	var out []string
	for _, e := range evs {
		k := e.kind
		if k == "piece" {
			k += strconv.Itoa(e.n)
		}
		out = append(out, k)
	}
	return out
}

// checkSeed asserts that evs is exactly a successful seed of blob: meta,
// every piece in order with its SHA-256, done with the digest.
func checkSeed(t *testing.T, evs []event, blob []byte, knownLength bool) {
	t.Helper()
	if len(evs) == 0 || evs[0].kind != "meta" {
		t.Fatalf("events %v: want meta first", kinds(evs))
	}
	wantLen := int64(len(blob))
	if !knownLength {
		wantLen = -1
	}
	if evs[0].length != wantLen {
		t.Fatalf("meta length %d, want %d", evs[0].length, wantLen)
	}
	ps := evs[0].pieceSize
	if knownLength && ps != piece.SizeFor(int64(len(blob))) {
		t.Fatalf("piece size %d, want %d", ps, piece.SizeFor(int64(len(blob))))
	}
	count := piece.Count(int64(len(blob)), ps)
	if len(evs) != count+2 {
		t.Fatalf("events %v: want meta, %d pieces, done", kinds(evs), count)
	}
	for i := 0; i < count; i++ {
		e := evs[1+i]
		off, size := piece.Range(i, int64(len(blob)), ps)
		want := sha256.Sum256(blob[off : off+size])
		if e.kind != "piece" || e.n != i || !bytes.Equal(e.sum, want[:]) {
			t.Fatalf("event %d = %s %d %x, want piece %d %x", 1+i, e.kind, e.n, e.sum, i, want)
		}
	}
	d := evs[len(evs)-1]
	if d.kind != "done" || d.length != int64(len(blob)) || d.digest != digestOf(blob) {
		t.Fatalf("last event %+v, want done %d %s", d, len(blob), digestOf(blob))
	}
}

// checkStored asserts the store holds blob complete under task.
func checkStored(t *testing.T, s piece.Store, task string, blob []byte) {
	t.Helper()
	ctx := context.Background()
	st, err := s.Stat(ctx, task)
	if err != nil || !st.Complete || st.ContentLength != int64(len(blob)) {
		t.Fatalf("stat %s: %+v, %v", task, st, err)
	}
	r, err := s.ReadAt(ctx, task, 0, int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var buf bytes.Buffer
	buf.ReadFrom(r)
	if !bytes.Equal(buf.Bytes(), blob) {
		t.Fatalf("stored content differs (%d bytes, want %d)", buf.Len(), len(blob))
	}
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func randBlob(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.OriginTimeout = 2 * time.Second
	cfg.StallTimeout = 300 * time.Millisecond
	cfg.Retries = 3
	cfg.BackoffBase = 5 * time.Millisecond
	cfg.BackoffMax = 20 * time.Millisecond
	cfg.GCInterval = time.Hour
	cfg.MaxConcurrent = 4
	return cfg
}

// origin is an httptest server that counts requests and body bytes and
// keeps each request's headers.
type origin struct {
	*httptest.Server
	requests atomic.Int64
	bytes    atomic.Int64
	mu       sync.Mutex
	headers  []http.Header
}

type countingWriter struct {
	http.ResponseWriter
	o *origin
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.o.bytes.Add(int64(n))
	return n, err
}

func (w countingWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

// newOrigin serves h on addr ("" for 127.0.0.1:0); h gets the request's
// 0-based sequence number.
func newOrigin(t *testing.T, addr string, h func(w http.ResponseWriter, r *http.Request, seq int)) *origin {
	t.Helper()
	o := &origin{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seq := int(o.requests.Add(1) - 1)
		o.mu.Lock()
		o.headers = append(o.headers, r.Header.Clone())
		o.mu.Unlock()
		h(countingWriter{w, o}, r, seq)
	}))
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("cannot listen on %s: %v", addr, err)
		}
		srv.Listener.Close()
		srv.Listener = l
	}
	srv.Start()
	o.Server = srv
	t.Cleanup(srv.Close)
	return o
}

func (o *origin) header(i int) http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	if i >= len(o.headers) {
		return nil
	}
	return o.headers[i]
}

// serveBlob serves blob with Range support (http.ServeContent).
func serveBlob(blob []byte) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, r *http.Request, _ int) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}
}

// cutAt sends the headers of the full blob and its first n bytes, then
// aborts the connection.
func cutAt(w http.ResponseWriter, blob []byte, n int) {
	w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
	w.WriteHeader(http.StatusOK)
	w.Write(blob[:n])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

// harness is a CDN under test with its store, reporter and client.
type harness struct {
	cdn   *CDN
	store *piece.MemoryStore
	rep   *recorder
	clk   *clock.Fake
	stop  func() // cancels Run and waits for it
}

func newHarness(t *testing.T, cfg Config, run bool) *harness {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store := piece.NewMemoryStore(0, clk)
	rep := newRecorder(t)
	tr := &http.Transport{}
	c, err := New(cfg, store, &http.Client{Transport: tr}, rep, clk, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{cdn: c, store: store, rep: rep, clk: clk}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if run {
		go func() { done <- c.Run(ctx) }()
	} else {
		// Without Run, seeds still run; stop waits for them the same way.
		go func() {
			<-ctx.Done()
			c.mu.Lock()
			c.closed = true
			c.mu.Unlock()
			c.stop()
			c.wg.Wait()
			done <- nil
		}()
	}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			tr.CloseIdleConnections()
		})
	}
	t.Cleanup(h.stop)
	return h
}

func (h *harness) seed(task, url string) {
	h.cdn.Seed(context.Background(), Request{TaskID: task, URL: url})
}
