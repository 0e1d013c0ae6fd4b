package registry

import (
	"io"
	"maps"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// PathStats counts the requests to one URL path and the body bytes sent.
type PathStats struct {
	Requests int64
	Bytes    int64
}

// Stats is a snapshot of the registry's egress counters. Bytes are response
// body bytes (what a bandwidth cap would see, less headers).
type Stats struct {
	// Requests is the number of requests served (any path, any method).
	Requests int64
	// Bytes is every body byte sent; equals Registry.Egress.
	Bytes int64
	// BlobBytes is the body bytes of blob GETs; equals Registry.BlobEgress.
	BlobBytes int64
	// ManifestBytes is the body bytes of manifest GETs.
	ManifestBytes int64
	// TokenRequests is the number of requests to the token server.
	TokenRequests int64
	// BlobGets counts the successful (2xx) blob GETs per digest, across
	// repositories; a ranged GET counts as one.
	BlobGets map[digest.Digest]int64
	// Paths holds the counters per URL path (query excluded).
	Paths map[string]PathStats
}

var (
	blobPathRE     = regexp.MustCompile(`^/v2/.+/blobs/([a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+)$`)
	manifestPathRE = regexp.MustCompile(`^/v2/.+/manifests/[^/]+$`)
)

type egressCounter struct {
	total atomic.Int64
	blob  atomic.Int64

	mu       sync.Mutex
	requests int64
	manifest int64
	tokens   int64
	blobGets map[digest.Digest]int64
	paths    map[string]PathStats
}

func newEgressCounter() *egressCounter {
	return &egressCounter{blobGets: map[digest.Digest]int64{}, paths: map[string]PathStats{}}
}

func (c *egressCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		var blob *atomic.Int64
		m := blobPathRE.FindStringSubmatch(r.URL.Path)
		if m != nil && r.Method == http.MethodGet {
			blob = &c.blob
		}
		cw.live = [2]*atomic.Int64{&c.total, blob}
		next.ServeHTTP(cw, r)

		c.mu.Lock()
		defer c.mu.Unlock()
		c.requests++
		ps := c.paths[r.URL.Path]
		ps.Requests++
		ps.Bytes += cw.n
		c.paths[r.URL.Path] = ps
		switch {
		case r.URL.Path == TokenPath:
			c.tokens++
		case blob != nil:
			if cw.status/100 == 2 {
				c.blobGets[digest.Digest(m[1])]++
			}
		case r.Method == http.MethodGet && manifestPathRE.MatchString(r.URL.Path):
			c.manifest += cw.n
		}
	})
}

func (c *egressCounter) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		Requests:      c.requests,
		Bytes:         c.total.Load(),
		BlobBytes:     c.blob.Load(),
		ManifestBytes: c.manifest,
		TokenRequests: c.tokens,
		BlobGets:      maps.Clone(c.blobGets),
		Paths:         maps.Clone(c.paths),
	}
}

func (c *egressCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total.Store(0)
	c.blob.Store(0)
	c.requests, c.manifest, c.tokens = 0, 0, 0
	c.blobGets = map[digest.Digest]int64{}
	c.paths = map[string]PathStats{}
}

// countingWriter counts body bytes as they are written, so the totals are
// live while a large blob streams.
type countingWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	n           int64
	live        [2]*atomic.Int64
}

func (w *countingWriter) add(n int64) {
	w.n += n
	for _, c := range w.live {
		if c != nil {
			c.Add(n)
		}
	}
}

func (w *countingWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.status = code
		w.wroteHeader = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.wroteHeader = true
	n, err := w.ResponseWriter.Write(p)
	w.add(int64(n))
	return n, err
}

// ReadFrom keeps the underlying writer's sendfile path when it has one.
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	w.wroteHeader = true
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		w.add(n)
		return n, err
	}
	n, err := io.Copy(writerOnly{w}, r)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type writerOnly struct{ io.Writer }
