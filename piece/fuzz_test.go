package piece

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/ratelimit"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
)

// FuzzTaskID feeds task identity from outside input (a URL, a digest, a
// filter list and a Range from dfget flags or a RegisterTask): it never
// panics, and whatever it accepts is a valid, stable task ID.
func FuzzTaskID(f *testing.F) {
	f.Fuzz(func(t *testing.T, rawURL, digest, filter, byteRange string) {
		dErr := ValidDigest(digest)
		if dErr == nil && ValidTaskID(digest) != nil {
			t.Fatalf("digest %q is valid but not as a task ID", digest)
		}
		_ = ValidTaskID(rawURL)
		var keys []string
		if filter != "" {
			keys = strings.Split(filter, ",")
		}
		id, err := TaskID(rawURL, digest, keys, byteRange)
		if err != nil {
			return
		}
		if ValidTaskID(id) != nil {
			t.Fatalf("TaskID(%q, %q, %q, %q) = %q, not a valid task ID", rawURL, digest, keys, byteRange, id)
		}
		if digest != "" && dErr != nil {
			t.Fatalf("TaskID accepted the invalid digest %q", digest)
		}
		id2, err := TaskID(rawURL, digest, keys, byteRange)
		if err != nil || id2 != id {
			t.Fatalf("TaskID is not deterministic: %q then %q, %v", id, id2, err)
		}
		if digest != "" && byteRange == "" {
			return // the digest is the ID; the URL may be anything
		}
		norm, err := NormalizeURL(rawURL, keys)
		if err != nil {
			t.Fatalf("TaskID accepted %q but NormalizeURL refuses it: %v", rawURL, err)
		}
		u, err := url.Parse(norm)
		if err != nil {
			t.Fatalf("normalized URL %q does not parse: %v", norm, err)
		}
		if u.User != nil || u.Fragment != "" {
			t.Fatalf("normalized URL %q keeps user info or a fragment", norm)
		}
		for _, k := range keys {
			if k != "" && u.Query().Has(k) {
				t.Fatalf("normalized URL %q keeps the filtered key %q", norm, k)
			}
		}
	})
}

// FuzzBitmap reads a parent's bitmap as it arrives on the wire.
func FuzzBitmap(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw []byte, other []byte, n int) {
		b := Bitmap(raw)
		c := b.Count()
		if c < 0 || c > 8*len(raw) {
			t.Fatalf("count %d of %d bytes", c, len(raw))
		}
		b.Has(n)
		b.Full(n)
		b.CountMissingFrom(Bitmap(other))
		cl := b.Clone()
		if !bytes.Equal(cl, b) {
			t.Fatal("clone differs")
		}
		if n >= 0 && n < MaxCount {
			cl.Set(n)
			if !cl.Has(n) {
				t.Fatalf("Set(%d) then Has is false", n)
			}
			cl.Clear(n)
			if cl.Has(n) {
				t.Fatalf("Clear(%d) then Has is true", n)
			}
		}
	})
}

// FuzzDiskStoreLoad damages a task's meta.json and sums files:
// NewDiskStore must not panic, must drop what it cannot trust, and must
// never offer a piece beyond the task's length or a complete task with a
// piece missing.
func FuzzDiskStoreLoad(f *testing.F) {
	const id = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
	f.Fuzz(func(t *testing.T, meta []byte, sums []byte, data []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, dirName(id))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{"meta.json": meta, "sums": sums, "data": data} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s, err := NewDiskStore(root, nil)
		if err != nil {
			t.Fatalf("NewDiskStore: %v", err)
		}
		defer s.Close()
		ctx := context.Background()
		sts, _ := s.List(ctx)
		if len(sts) == 0 {
			if _, err := os.Stat(dir); err == nil {
				t.Fatal("a dropped task's folder is still there")
			}
			return
		}
		st := sts[0]
		if err := validMeta(st.Meta); err != nil {
			t.Fatalf("loaded a task with bad meta %+v: %v", st.Meta, err)
		}
		count := st.Count()
		if st.Complete && (!st.Bitmap.Full(count) || st.ContentLength < 0) {
			t.Fatalf("complete task with %d of %d pieces, length %d", st.Bitmap.Count(), count, st.ContentLength)
		}
		sumsList, _ := s.PieceSums(ctx, st.TaskID)
		for n := 0; n < 8*len(st.Bitmap); n++ {
			if !st.Bitmap.Has(n) {
				continue
			}
			if st.ContentLength >= 0 && n >= count {
				t.Fatalf("piece %d offered beyond the %d pieces of the task", n, count)
			}
			if n >= len(sumsList) || len(sumsList[n]) != sha256.Size {
				t.Fatalf("piece %d present without a sum", n)
			}
			rd, err := s.ReadPiece(ctx, st.TaskID, n)
			if err == nil {
				if rd.Size < 0 || rd.Size > int64(st.PieceSize) {
					t.Fatalf("piece %d read size %d", n, rd.Size)
				}
				rd.Close()
			}
		}
		// The store keeps working on what it loaded.
		if err := s.Delete(ctx, st.TaskID); err != nil {
			t.Fatal(err)
		}
	})
}

// fuzzRequest builds a request as a server would read it off the wire;
// ok is false when the bytes are not an HTTP request at all (the server
// answers 400 itself).
func fuzzRequest(method, target, hk, hv string, body []byte) (*http.Request, bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: fuzz\r\n", method, target)
	if hk != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", hk, hv)
	}
	if len(body) > 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(b.String())))
	if err != nil {
		return nil, false
	}
	r.RemoteAddr = "127.0.0.7:40000"
	return r, true
}

// FuzzHandler sends any request to an upload server's piece handler (with
// per-client limits, as agents run it): it never panics, answers a
// status, and serves bytes only to a holder of a valid token for that
// task, and only the piece asked for.
func FuzzHandler(f *testing.F) {
	const task = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
	signer, _ := tasktoken.NewSigner(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))
	pub := signer.Public()
	now := time.Unix(1_700_000_000, 0)
	store := NewMemoryStore(1<<30, nil)
	ctx := context.Background()
	data := bytes.Repeat([]byte("pouchfly"), (MinSize+100)/8)
	if err := store.Create(ctx, Meta{TaskID: task, ContentLength: int64(len(data)), PieceSize: MinSize}); err != nil {
		f.Fatal(err)
	}
	if _, err := store.WritePiece(ctx, task, 0, bytes.NewReader(data[:MinSize]), nil); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target, hk, hv string, body []byte, validToken bool) {
		r, ok := fuzzRequest(method, target, hk, hv, body)
		if !ok {
			return
		}
		if validToken {
			r.Header.Set(TokenHeader, signer.Sign(task, "fuzz-host", now.Add(time.Hour)))
		}
		h := NewHandler(store, ServerOptions{
			Authorize: func(r *http.Request, task string) (string, error) {
				return tasktoken.Verify(pub, r.Header.Get(TokenHeader), task, now)
			},
			MaxConcurrent: 4,
			Clients:       ratelimit.New(1000, 1000, 16, nil),
			MaxPerClient:  2,
		})
		mux := http.NewServeMux()
		h.Register(mux)
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if w.Code < 200 || w.Code > 599 {
			t.Fatalf("status %d", w.Code)
		}
		if w.Code != http.StatusOK {
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			t.Fatalf("%s served", r.Method)
		}
		if _, err := tasktoken.Verify(pub, r.Header.Get(TokenHeader), r.PathValue("task"), now); err != nil {
			t.Fatalf("%s %s served without a valid token", method, target)
		}
		if r.Method == http.MethodGet && !bytes.Equal(w.Body.Bytes(), data[:MinSize]) {
			t.Fatalf("%s %s: served %d bytes that are not piece 0", method, target, w.Body.Len())
		}
	})
}
