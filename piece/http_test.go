package piece_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/ratelimit"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/piece"
)

func TestPieceHTTP(t *testing.T) {
	ctx := context.Background()
	store := piece.NewMemoryStore(0, nil)
	data := make([]byte, 3<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	id := "sha256:" + hex.EncodeToString(sum[:])
	if err := store.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(data)), PieceSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for n := 0; n < 2; n++ { // piece 2 stays missing
		if _, err := store.WritePiece(ctx, id, n, bytes.NewReader(data[n<<20:(n+1)<<20]), nil); err != nil {
			t.Fatal(err)
		}
	}
	signer, _ := tasktoken.NewSigner(nil)
	var served atomic.Int64
	h := piece.NewHandler(store, piece.ServerOptions{
		Authorize: func(r *http.Request, task string) (string, error) {
			return tasktoken.Verify(signer.Public(), r.Header.Get(piece.TokenHeader), task, time.Now())
		},
		OnServed: func(task string, n int, b int64, host string) {
			if host == "h1" && b == 1<<20 {
				served.Add(1)
			}
		},
	})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := srv.Client()
	tok := signer.Sign(id, "h1", time.Now().Add(time.Minute))

	body, size, err := piece.FetchPiece(ctx, c, srv.URL, id, 1, tok)
	if err != nil || size != 1<<20 {
		t.Fatalf("fetch: %v size %d", err, size)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	// OnServed runs after the handler's copy returns, which may be just
	// after the client read the last byte.
	for i := 0; i < 100 && served.Load() == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !bytes.Equal(got, data[1<<20:2<<20]) || served.Load() != 1 {
		t.Fatalf("piece 1 differs or not counted (served=%d)", served.Load())
	}
	for _, tc := range []struct {
		name, task, tok string
		n               int
		want            error
	}{
		{"missing piece", id, tok, 2, errdefs.ErrNotFound},
		{"no token", id, "", 0, errdefs.ErrForbidden},
		{"token for other task", id, signer.Sign("sha256:"+hex.EncodeToString(make([]byte, 32)), "h1", time.Now().Add(time.Minute)), 0, errdefs.ErrForbidden},
		{"expired token", id, signer.Sign(id, "h1", time.Now().Add(-time.Minute)), 0, errdefs.ErrForbidden},
		{"bad task id", "..%2f..%2fetc", tok, 0, errdefs.ErrInvalid},
		{"bad piece", id, tok, -1, errdefs.ErrInvalid},
	} {
		_, _, err := piece.FetchPiece(ctx, c, srv.URL, tc.task, tc.n, tc.tok)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, _, err := piece.FetchPiece(ctx, c, "127.0.0.1:1", id, 0, tok); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("closed port: %v", err)
	}
}

// A request the caller cancels is reported as cancelled, not as a fault of
// the parent.
func TestFetchPieceCancelled(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer srv.Close()
	defer close(block)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, _, err := piece.FetchPiece(ctx, srv.Client(), srv.URL, "sha256:"+hex.EncodeToString(make([]byte, 32)), 0, "")
	if !errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v, want context.Canceled and not ErrUnavailable", err)
	}
}

// One client cannot take every upload slot: beyond MaxPerClient its
// requests get 429 with Retry-After while another client is served, and
// a client over its request rate gets 429 too.
func TestPerClientLimits(t *testing.T) {
	ctx := context.Background()
	store := piece.NewMemoryStore(0, nil)
	data := make([]byte, 1<<20)
	sum := sha256.Sum256(data)
	id := "sha256:" + hex.EncodeToString(sum[:])
	if err := store.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(data)), PieceSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.WritePiece(ctx, id, 0, bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	signer, _ := tasktoken.NewSigner(nil)
	h := piece.NewHandler(store, piece.ServerOptions{
		Authorize: func(r *http.Request, task string) (string, error) {
			return tasktoken.Verify(signer.Public(), r.Header.Get(piece.TokenHeader), task, time.Now())
		},
		MaxConcurrent: 8,
		// 2 MiB/s for everyone: a 1 MiB piece takes a while to send.
		Limiter:      rate.NewLimiter(2<<20, piece.ChunkSize),
		Clients:      ratelimit.New(1000, 1000, 16, nil),
		MaxPerClient: 2,
	})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tok := signer.Sign(id, "h", time.Now().Add(time.Minute))
	get := func(from string) (*http.Response, error) {
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext}
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/tasks/"+id+"/pieces/0", nil)
		req.Header.Set(piece.TokenHeader, tok)
		return (&http.Client{Transport: tr}).Do(req)
	}
	// The greedy client holds two slow uploads...
	var held []*http.Response
	for i := 0; i < 2; i++ {
		resp, err := get("127.0.0.1")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("greedy upload %d: %v %v", i, resp, err)
		}
		held = append(held, resp)
	}
	// ...its third is refused, another client is served.
	resp, err := get("127.0.0.1")
	if err != nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third greedy upload: %v %v, want 429 with Retry-After", resp, err)
	}
	resp.Body.Close()
	resp, err = get("127.0.0.2")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("other client: %v %v", resp, err)
	}
	resp.Body.Close()
	for _, r := range held {
		r.Body.Close()
	}

	// Request rate: a burst of 5 then 429.
	h2 := piece.NewHandler(store, piece.ServerOptions{Clients: ratelimit.New(1, 5, 16, nil)})
	mux2 := http.NewServeMux()
	h2.Register(mux2)
	codes := map[int]int{}
	for i := 0; i < 8; i++ {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/tasks/"+id+"/pieces/0", nil)
		r.RemoteAddr = "10.0.0.1:1234"
		mux2.ServeHTTP(w, r)
		codes[w.Code]++
	}
	if codes[200] != 5 || codes[429] != 3 {
		t.Fatalf("8 requests at a 5-request burst: %v", codes)
	}
}

// 503 and 429 mean a busy parent, not a broken one.
func TestFetchPieceBusy(t *testing.T) {
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusInternalServerError} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }))
		_, _, err := piece.FetchPiece(context.Background(), srv.Client(), srv.URL, "sha256:"+hex.EncodeToString(make([]byte, 32)), 0, "")
		srv.Close()
		busy := code != http.StatusInternalServerError
		if errors.Is(err, piece.ErrBusy) != busy || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("HTTP %d: err = %v, busy = %v", code, err, errors.Is(err, piece.ErrBusy))
		}
	}
}
