package cdn

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

const mib = 1 << 20

func TestSingleFetchUnderConcurrency(t *testing.T) {
	blob := randBlob(1, 3*mib+12345)
	o := newOrigin(t, "", serveBlob(blob))
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)

	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL + "/blob", Digest: task,
				Header: http.Header{"Authorization": {"Bearer secret-" + strconv.Itoa(i)}}})
		}()
	}
	wg.Wait()
	h.rep.waitEnd(task, 1)
	if n := o.requests.Load(); n != 1 {
		t.Fatalf("origin got %d requests, want 1", n)
	}
	if n := o.bytes.Load(); n != int64(len(blob)) {
		t.Fatalf("origin sent %d bytes, want %d", n, len(blob))
	}
	if got := o.header(0).Get("Authorization"); !strings.HasPrefix(got, "Bearer secret-") {
		t.Fatalf("origin got Authorization %q", got)
	}
	checkSeed(t, h.rep.of(task), blob, true)
	checkStored(t, h.store, task, blob)

	st := h.cdn.Stats()
	if st.OriginBytes != int64(len(blob)) || st.OriginRequests != 1 || st.Done != 1 || st.Retries != 0 {
		t.Fatalf("stats %+v", st)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.cdn.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			values[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if got := values["pouchfly_cdn_origin_bytes_total"]; got != float64(len(blob)) {
		t.Fatalf("origin bytes metric %v (%v)", got, values)
	}
	if got := values["pouchfly_cdn_origin_requests_total{ok}"]; got != 1 {
		t.Fatalf("origin ok requests metric %v", got)
	}
	if got := values["pouchfly_cdn_seeds_total{done}"]; got != 1 {
		t.Fatalf("seeds metric %v", got)
	}
}

// TestStreaming: piece 0 is announced while the origin still holds back the
// rest of the body.
func TestStreaming(t *testing.T) {
	blob := randBlob(2, 3*mib)
	ps := int(piece.SizeFor(int64(len(blob))))
	release := make(chan struct{})
	flushed := make(chan struct{}) // the handler's count of piece 0 is final
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob[:ps])
		w.(http.Flusher).Flush()
		close(flushed)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		case <-time.After(10 * time.Second):
		}
		w.Write(blob[ps:])
	})
	cfg := testConfig()
	cfg.StallTimeout = 10 * time.Second
	h := newHarness(t, cfg, true)
	task := digestOf(blob)
	h.seed(task, o.URL)
	h.rep.wait(task, func(e event) bool { return e.kind == "piece" && e.n == 0 })
	if evs := h.rep.of(task); len(evs) != 2 {
		t.Fatalf("before release: events %v, want meta, piece0", kinds(evs))
	}
	// The client can store piece 0 before the handler's Write returns and is
	// counted, so wait for the count to settle.
	<-flushed
	if o.bytes.Load() != int64(ps) {
		t.Fatalf("origin sent %d bytes before release", o.bytes.Load())
	}
	// Piece 0 is readable from the store already.
	if r, err := h.store.ReadPiece(context.Background(), task, 0); err != nil {
		t.Fatal(err)
	} else {
		r.Close()
	}
	close(release)
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), blob, true)
}

func TestUnknownLength(t *testing.T) {
	for _, size := range []int{0, 1000, 2 * piece.DefaultSize, 2*piece.DefaultSize + 777} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			blob := randBlob(3, size)
			o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, _ int) {
				w.WriteHeader(http.StatusOK) // no Content-Length: chunked
				w.(http.Flusher).Flush()
				for off := 0; off < len(blob); off += 300 * 1024 {
					w.Write(blob[off:min(off+300*1024, len(blob))])
					w.(http.Flusher).Flush()
				}
			})
			h := newHarness(t, testConfig(), true)
			task := digestOf(blob)
			h.seed(task, o.URL)
			h.rep.waitEnd(task, 1)
			evs := h.rep.of(task)
			if evs[0].pieceSize != piece.DefaultSize {
				t.Fatalf("piece size %d, want default", evs[0].pieceSize)
			}
			checkSeed(t, evs, blob, false)
			checkStored(t, h.store, task, blob)
		})
	}
}

func TestDigestMismatch(t *testing.T) {
	blob := randBlob(4, 2*mib+5)
	o := newOrigin(t, "", serveBlob(blob))
	h := newHarness(t, testConfig(), true)
	want := digestOf([]byte("something else"))
	h.cdn.Seed(context.Background(), Request{TaskID: want, URL: o.URL, Digest: want})
	e := h.rep.waitEnd(want, 1)
	if e.kind != "failed" || !errors.Is(e.err, errdefs.ErrDigestMismatch) {
		t.Fatalf("end %+v, want failed with digest mismatch", e)
	}
	if _, err := h.store.Stat(context.Background(), want); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("task still in store: %v", err)
	}
	if o.requests.Load() != 1 {
		t.Fatalf("digest mismatch retried: %d requests", o.requests.Load())
	}
}

func TestResumeAfterReset(t *testing.T) {
	blob := randBlob(5, 4*mib+123)
	cut := len(blob) * 4 / 10
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		if seq == 0 {
			cutAt(w, blob, cut)
		}
		serveBlob(blob)(w, r, seq)
	})
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)
	h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL, Digest: task})
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), blob, true)
	checkStored(t, h.store, task, blob)
	if n := o.requests.Load(); n != 2 {
		t.Fatalf("origin got %d requests, want 2", n)
	}
	ps := int(piece.SizeFor(int64(len(blob))))
	wantRange := "bytes=" + strconv.Itoa(cut/ps*ps) + "-" // from the first piece not stored
	if got := o.header(1).Get("Range"); got != wantRange {
		t.Fatalf("resume Range %q, want %q", got, wantRange)
	}
	if o.header(0).Get("Range") != "" {
		t.Fatalf("first request had Range %q", o.header(0).Get("Range"))
	}
	if sent := o.bytes.Load(); float64(sent) > 1.5*float64(len(blob)) {
		t.Fatalf("origin sent %d bytes for %d", sent, len(blob))
	}
	if st := h.cdn.Stats(); st.Retries != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestResumeOriginIgnoresRange(t *testing.T) {
	blob := randBlob(6, 3*mib+99)
	cut := len(blob) * 4 / 10
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		if seq == 0 {
			cutAt(w, blob, cut)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob) // 200 whatever the Range
	})
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)
	h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL, Digest: task})
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), blob, true)
	checkStored(t, h.store, task, blob)
	if got := o.header(1).Get("Range"); got != "bytes="+strconv.Itoa(mib)+"-" {
		t.Fatalf("resume Range %q", got)
	}
}

func TestStallTimeout(t *testing.T) {
	blob := randBlob(7, 3*mib)
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		if seq == 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.Write(blob[:mib+mib/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // stall until the CDN gives up
			return
		}
		serveBlob(blob)(w, r, seq)
	})
	cfg := testConfig()
	cfg.StallTimeout = 150 * time.Millisecond
	h := newHarness(t, cfg, true)
	task := digestOf(blob)
	h.seed(task, o.URL)
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), blob, true)
	ps := int(piece.SizeFor(int64(len(blob))))
	if got := o.header(1).Get("Range"); got != "bytes="+strconv.Itoa((mib+mib/2)/ps*ps)+"-" {
		t.Fatalf("resume Range %q", got)
	}
}

func TestHeaderTimeout(t *testing.T) {
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		<-r.Context().Done()
	})
	cfg := testConfig()
	cfg.OriginTimeout = 50 * time.Millisecond
	cfg.Retries = 1
	h := newHarness(t, cfg, true)
	task := digestOf([]byte("x"))
	h.seed(task, o.URL)
	e := h.rep.waitEnd(task, 1)
	if e.kind != "failed" || !errors.Is(e.err, errdefs.ErrUnavailable) || !strings.Contains(e.err.Error(), "no answer within") {
		t.Fatalf("end %+v", e)
	}
	if n := o.requests.Load(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

func TestOriginStatus(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		class    error
		requests int64
	}{
		{"unauthorized", http.StatusUnauthorized, errdefs.ErrForbidden, 1},
		{"forbidden", http.StatusForbidden, errdefs.ErrForbidden, 1},
		{"not found", http.StatusNotFound, errdefs.ErrNotFound, 1},
		{"bad request", http.StatusBadRequest, errdefs.ErrInvalid, 1},
		{"unavailable", http.StatusServiceUnavailable, errdefs.ErrUnavailable, 4}, // 1 + Retries
		{"internal", http.StatusInternalServerError, errdefs.ErrUnavailable, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, _ int) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.example/token",service="registry"`)
				w.Header().Set("Set-Cookie", "session=should-not-pass")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				w.Write([]byte(`{"errors":[{"code":"DENIED","message":"no"}]}`))
			})
			h := newHarness(t, testConfig(), true)
			task := digestOf([]byte(tt.name))
			h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL + "/v2/x/blobs/" + task + "?sig=SECRET",
				Header: http.Header{"Authorization": {"Basic c2VjcmV0"}}})
			e := h.rep.waitEnd(task, 1)
			if e.kind != "failed" || !errors.Is(e.err, tt.class) {
				t.Fatalf("end %+v, want failed with %v", e, tt.class)
			}
			var oe *OriginError
			if !errors.As(e.err, &oe) || oe.Status != tt.status {
				t.Fatalf("err %v: want *OriginError %d", e.err, tt.status)
			}
			if got := oe.Header.Get("WWW-Authenticate"); !strings.Contains(got, "auth.example") {
				t.Fatalf("WWW-Authenticate %q not passed back", got)
			}
			if oe.Header.Get("Set-Cookie") != "" {
				t.Fatal("unsafe header passed back")
			}
			msg := e.err.Error()
			if !strings.Contains(msg, "DENIED") || strings.Contains(msg, "SECRET") || strings.Contains(msg, "c2VjcmV0") {
				t.Fatalf("message %q", msg)
			}
			if n := o.requests.Load(); n != tt.requests {
				t.Fatalf("%d requests, want %d", n, tt.requests)
			}
			if len(h.rep.of(task)) != 1 {
				t.Fatalf("events %v", kinds(h.rep.of(task)))
			}
		})
	}
}

func TestNetworkErrorRetriedThenFails(t *testing.T) {
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, _ int) {})
	url := o.URL
	o.Close() // connection refused from now on
	h := newHarness(t, testConfig(), true)
	task := digestOf([]byte("refused"))
	h.seed(task, url+"/x?token=SECRET")
	e := h.rep.waitEnd(task, 1)
	if e.kind != "failed" || !errors.Is(e.err, errdefs.ErrUnavailable) {
		t.Fatalf("end %+v", e)
	}
	if strings.Contains(e.err.Error(), "SECRET") {
		t.Fatalf("error leaks the query: %v", e.err)
	}
	if st := h.cdn.Stats(); st.OriginRequests != 4 || st.Retries != 3 || st.Failed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheHit(t *testing.T) {
	blob := randBlob(8, 2*mib+1)
	o := newOrigin(t, "", serveBlob(blob))
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)
	h.seed(task, o.URL)
	h.rep.waitEnd(task, 1)
	first := h.rep.of(task)
	checkSeed(t, first, blob, true)

	h.seed(task, o.URL)
	h.rep.waitEnd(task, 2)
	again := h.rep.of(task)[len(first):]
	checkSeed(t, again, blob, true)
	if o.requests.Load() != 1 {
		t.Fatalf("cache hit touched the origin: %d requests", o.requests.Load())
	}
	if st := h.cdn.Stats(); st.CacheHits != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCacheHitWithoutDigest: a complete task stored without its digest is
// replayed with the digest computed from the store.
func TestCacheHitWithoutDigest(t *testing.T) {
	blob := randBlob(9, mib+10)
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)
	ctx := context.Background()
	ps := piece.SizeFor(int64(len(blob)))
	if err := h.store.Create(ctx, piece.Meta{TaskID: task, ContentLength: int64(len(blob)), PieceSize: ps}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < piece.Count(int64(len(blob)), ps); i++ {
		off, size := piece.Range(i, int64(len(blob)), ps)
		if _, err := h.store.WritePiece(ctx, task, i, strings.NewReader(string(blob[off:off+size])), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.store.Finish(ctx, task, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	h.seed(task, "http://127.0.0.1:1/never")
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), blob, true)
}

// TestIncompleteLeftoverRefetched: pieces left by an earlier run are
// dropped and the task fetched afresh.
func TestIncompleteLeftoverRefetched(t *testing.T) {
	blob := randBlob(10, 2*mib)
	o := newOrigin(t, "", serveBlob(blob))
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)
	ctx := context.Background()
	if err := h.store.Create(ctx, piece.Meta{TaskID: task, ContentLength: -1, PieceSize: piece.DefaultSize}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.WritePiece(ctx, task, 0, strings.NewReader("junk"), nil); err != nil {
		t.Fatal(err)
	}
	h.seed(task, o.URL)
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), blob, true)
	checkStored(t, h.store, task, blob)
}

func TestRangeRequest(t *testing.T) {
	blob := randBlob(11, 3*mib)
	for _, ignore := range []bool{false, true} {
		t.Run("origin ignores range="+strconv.FormatBool(ignore), func(t *testing.T) {
			o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
				if ignore {
					w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
					w.Write(blob)
					return
				}
				serveBlob(blob)(w, r, seq)
			})
			h := newHarness(t, testConfig(), true)
			part := blob[100 : 100+mib+500]
			task := digestOf([]byte("range task"))[7:]
			h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL, Range: "bytes=100-" + strconv.Itoa(100+mib+499), Digest: digestOf(part)})
			h.rep.waitEnd(task, 1)
			checkSeed(t, h.rep.of(task), part, true)
			checkStored(t, h.store, task, part)
			if got := o.header(0).Get("Range"); got != "bytes=100-"+strconv.Itoa(100+mib+499) {
				t.Fatalf("origin got Range %q", got)
			}
		})
	}
}

func TestRangeResume(t *testing.T) {
	blob := randBlob(12, 4*mib)
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		if seq == 0 {
			w.Header().Set("Content-Range", "bytes 10-"+strconv.Itoa(10+3*mib-1)+"/"+strconv.Itoa(len(blob)))
			w.Header().Set("Content-Length", strconv.Itoa(3*mib))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[10 : 10+mib+mib/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		serveBlob(blob)(w, r, seq)
	})
	h := newHarness(t, testConfig(), true)
	part := blob[10 : 10+3*mib]
	task := digestOf([]byte("range resume"))[7:]
	h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL, Range: "bytes=10-" + strconv.Itoa(10+3*mib-1)})
	h.rep.waitEnd(task, 1)
	checkSeed(t, h.rep.of(task), part, true)
	ps := int(piece.SizeFor(int64(len(part))))
	want := "bytes=" + strconv.Itoa(10+(mib+mib/2)/ps*ps) + "-" + strconv.Itoa(10+3*mib-1)
	if got := o.header(1).Get("Range"); got != want {
		t.Fatalf("resume Range %q, want %q", got, want)
	}
}

func TestRedirectCredentials(t *testing.T) {
	blob := randBlob(13, 1000)
	target := newOrigin(t, "127.0.0.2:0", serveBlob(blob))
	samePort := newOrigin(t, "", serveBlob(blob))
	var redirect *origin
	redirect = newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, _ int) {
		switch r.URL.Path {
		case "/other-host":
			http.Redirect(w, r, target.URL+"/blob", http.StatusTemporaryRedirect)
		case "/other-port":
			http.Redirect(w, r, samePort.URL+"/blob", http.StatusFound)
		case "/same-origin":
			http.Redirect(w, r, redirect.URL+"/blob", http.StatusFound)
		default:
			serveBlob(blob)(w, r, 0)
		}
	})
	h := newHarness(t, testConfig(), true)
	hdr := http.Header{"Authorization": {"Bearer secret"}, "X-Custom": {"kept"}}
	for i, tc := range []struct {
		path string
		o    *origin
		idx  int
		auth string
	}{
		{"/other-host", target, 0, ""},
		{"/other-port", samePort, 0, ""},
		{"/same-origin", redirect, 3, "Bearer secret"},
	} {
		task := digestOf([]byte(tc.path))[7:]
		h.cdn.Seed(context.Background(), Request{TaskID: task, URL: redirect.URL + tc.path, Header: hdr})
		e := h.rep.waitEnd(task, 1)
		if e.kind != "done" {
			t.Fatalf("%s: %+v", tc.path, e)
		}
		got := tc.o.header(tc.idx)
		if got.Get("Authorization") != tc.auth {
			t.Errorf("%d %s: target got Authorization %q, want %q", i, tc.path, got.Get("Authorization"), tc.auth)
		}
		if got.Get("X-Custom") != "kept" {
			t.Errorf("%s: other headers dropped", tc.path)
		}
	}
	if a := redirect.header(0).Get("Authorization"); a != "Bearer secret" {
		t.Fatalf("first hop got Authorization %q", a)
	}
}

func TestMaxContentLength(t *testing.T) {
	blob := randBlob(14, 5000)
	o := newOrigin(t, "", serveBlob(blob))
	cfg := testConfig()
	cfg.MaxContentLength = 4096
	h := newHarness(t, cfg, true)
	task := digestOf(blob)
	h.seed(task, o.URL)
	e := h.rep.waitEnd(task, 1)
	if e.kind != "failed" || !errors.Is(e.err, errdefs.ErrInvalid) {
		t.Fatalf("end %+v", e)
	}
}

func TestInvalidRequest(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	for _, req := range []Request{
		{TaskID: "nope", URL: "http://x/"},
		{TaskID: digestOf(nil), URL: "ftp://x/"},
		{TaskID: digestOf(nil), URL: "http://x/", Digest: "md5:1"},
		{TaskID: digestOf([]byte{1}), URL: "http://x/", Range: "bytes=1-2,4-5"},
	} {
		h.cdn.Seed(context.Background(), req)
		e := h.rep.waitEnd(req.TaskID, 1)
		if e.kind != "failed" || !errors.Is(e.err, errdefs.ErrInvalid) {
			t.Fatalf("%+v: %+v", req, e)
		}
	}
}

func TestMaxConcurrent(t *testing.T) {
	blob := randBlob(15, 1000)
	release := make(chan struct{})
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		serveBlob(blob)(w, r, seq)
	})
	cfg := testConfig()
	cfg.MaxConcurrent = 1
	cfg.StallTimeout = 5 * time.Second
	h := newHarness(t, cfg, true)
	a, b := digestOf([]byte("a"))[7:], digestOf([]byte("b"))[7:]
	h.seed(a, o.URL+"/a")
	h.seed(b, o.URL+"/b")
	deadline := time.Now().Add(5 * time.Second)
	for o.requests.Load() < 1 || h.cdn.Stats().TasksWaiting < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", h.cdn.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if n := o.requests.Load(); n != 1 {
		t.Fatalf("%d origin requests with max_concurrent 1", n)
	}
	if st := h.cdn.Stats(); st.TasksSeeding != 2 || st.TasksWaiting != 1 {
		t.Fatalf("stats %+v", st)
	}
	close(release)
	h.rep.waitEnd(a, 1)
	h.rep.waitEnd(b, 1)
}

func TestLRUEviction(t *testing.T) {
	blobs := map[string][]byte{}
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		blob := blobs[r.URL.Path]
		if r.URL.Path == "/busy" {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.Write(blob[:mib])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		serveBlob(blob)(w, r, seq)
	})
	cfg := testConfig()
	cfg.MaxBytes = 3*mib + mib/2
	cfg.StallTimeout = 10 * time.Second
	h := newHarness(t, cfg, false) // GC by hand
	ctx := context.Background()
	ids := map[string]string{}
	for i, name := range []string{"busy", "a", "b", "c"} {
		blobs["/"+name] = randBlob(uint64(100+i), mib)
		if name == "busy" {
			blobs["/busy"] = randBlob(99, 2*mib)
		}
		ids[name] = digestOf(blobs["/"+name])
	}
	// The busy task stores its first piece first (the oldest access) and
	// then hangs: it must never be evicted.
	h.seed(ids["busy"], o.URL+"/busy")
	h.rep.wait(ids["busy"], func(e event) bool { return e.kind == "piece" })
	for _, name := range []string{"a", "b", "c"} {
		h.clk.Advance(time.Minute)
		h.seed(ids[name], o.URL+"/"+name)
		h.rep.waitEnd(ids[name], 1)
	}
	// Touch a: b is now the least recently used.
	h.clk.Advance(time.Minute)
	r, err := h.store.ReadPiece(ctx, ids["a"], 0)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	// 4 MiB stored, limit 3.5: one eviction.
	n, err := h.cdn.GC(ctx)
	if err != nil || n != 1 {
		t.Fatalf("GC = %d, %v", n, err)
	}
	for name, want := range map[string]bool{"busy": true, "a": true, "b": false, "c": true} {
		_, err := h.store.Stat(ctx, ids[name])
		if have := err == nil; have != want {
			t.Errorf("%s in store: %v, want %v", name, have, want)
		}
	}
	if evs := h.rep.of(ids["b"]); evs[len(evs)-1].kind != "evicted" {
		t.Fatalf("b events %v", kinds(evs))
	}
	if st := h.cdn.Stats(); st.Evictions != 1 || st.CacheBytes != 3*mib {
		t.Fatalf("stats %+v", st)
	}
	// Seeding b again fetches it again.
	h.seed(ids["b"], o.URL+"/b")
	h.rep.waitEnd(ids["b"], 2)
	checkStored(t, h.store, ids["b"], blobs["/b"])
}

// TestShutdown: cancelling Run's context stops fetches in flight, reports
// them failed, and leaves no goroutine behind.
func TestShutdown(t *testing.T) {
	blob := randBlob(16, 3*mib)
	entered := make(chan struct{}, 10)
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob[:mib])
		w.(http.Flusher).Flush()
		entered <- struct{}{}
		<-r.Context().Done()
	})
	cfg := testConfig()
	cfg.StallTimeout = 10 * time.Second
	cfg.MaxConcurrent = 1
	h := newHarness(t, cfg, true)
	a, b := digestOf([]byte("a"))[7:], digestOf([]byte("b"))[7:]
	h.seed(a, o.URL)
	<-entered
	h.rep.wait(a, func(e event) bool { return e.kind == "piece" })
	h.seed(b, o.URL) // waits for the slot
	for h.cdn.Stats().TasksWaiting != 1 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	h.stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	for _, id := range []string{a, b} {
		e := h.rep.waitEnd(id, 1)
		if e.kind != "failed" || !errors.Is(e.err, errdefs.ErrUnavailable) {
			t.Fatalf("%s: %+v", id, e)
		}
		if _, err := h.store.Stat(context.Background(), id); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s left in store: %v", id, err)
		}
	}
	// Seeds after shutdown are ignored.
	h.seed(digestOf([]byte("late")), o.URL)
	if st := h.cdn.Stats(); st.TasksSeeding != 0 {
		t.Fatalf("stats %+v", st)
	}
	o.Close()
	goleak.VerifyNone(t)
}

// TestSeedDuringFailureReport: a Seed arriving while a seed reports its
// failure starts a fresh one instead of being lost.
func TestSeedDuringFailureReport(t *testing.T) {
	blob := randBlob(17, 1000)
	o := newOrigin(t, "", func(w http.ResponseWriter, r *http.Request, seq int) {
		if r.Header.Get("Authorization") != "good" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		serveBlob(blob)(w, r, seq)
	})
	h := newHarness(t, testConfig(), true)
	task := digestOf(blob)
	rep := h.rep
	failedHook := make(chan struct{})
	go func() {
		rep.wait(task, func(e event) bool { return e.kind == "failed" })
		close(failedHook)
	}()
	h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL, Header: http.Header{"Authorization": {"bad"}}})
	<-failedHook
	h.cdn.Seed(context.Background(), Request{TaskID: task, URL: o.URL, Header: http.Header{"Authorization": {"good"}}})
	e := h.rep.waitEnd(task, 2)
	if e.kind != "done" {
		t.Fatalf("second seed: %+v", e)
	}
}
