package testbed

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/origin"
)

// Roles: the testbed runs its own helpers (origin, download clients, and
// whatever a benchmark registers) by re-executing the current executable
// inside a namespace with RoleEnv set. Every main that uses the testbed
// (and TestMain of its tests) calls RoleMain first.

// RoleEnv names the role a re-executed process plays.
const RoleEnv = "POUCHFLY_TESTBED_ROLE"

// RoleFunc runs a role with its arguments until ctx ends (SIGTERM or
// SIGINT) or its work is done.
type RoleFunc func(ctx context.Context, args []string) error

var (
	rolesMu sync.Mutex
	roles   = map[string]RoleFunc{
		"origin": originRole,
		"fetch":  fetchRole,
	}
)

// RegisterRole adds a role; call it from init or before RoleMain.
func RegisterRole(name string, fn RoleFunc) {
	rolesMu.Lock()
	defer rolesMu.Unlock()
	roles[name] = fn
}

// RoleMain runs the role named by RoleEnv and exits, or returns at once
// when RoleEnv is unset.
func RoleMain() {
	name := os.Getenv(RoleEnv)
	if name == "" {
		return
	}
	rolesMu.Lock()
	fn := roles[name]
	rolesMu.Unlock()
	if fn == nil {
		fmt.Fprintf(os.Stderr, "testbed: unknown role %q\n", name)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	args := os.Args[1:]
	if err := fn(ctx, args); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "testbed role %s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// ---- origin ----------------------------------------------------------

// originRole serves generated files (test/origin) on --listen, counting
// the body bytes it sends:
//
//	GET  /files/<name>                       the content (Range honoured)
//	POST /prepare?name=N&size=S&seed=X       replace the served file by a generated one; answers its digest
//	GET  /egress                             body bytes sent since start (decimal)
//	POST /add?prefix=P&count=C&size=S&seed=X serve C more files P0…P(C-1) (file k from seed X+k); answers their digests
//	POST /fault                              inject origin.Fault (JSON body) into file requests
//	POST /total-rate?bps=B                   cap all responses together at B bytes/s (0: off)
//	GET  /requests                           the file requests served (JSON []origin.Record)
func originRole(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("origin", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to serve on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var cur atomic.Pointer[origin.Server]
	var base atomic.Int64 // egress of replaced servers
	cur.Store(origin.New())
	var prepMu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("/files/", func(w http.ResponseWriter, r *http.Request) { cur.Load().ServeHTTP(w, r) })
	mux.HandleFunc("POST /prepare", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		size, err1 := strconv.ParseInt(q.Get("size"), 10, 64)
		seed, err2 := strconv.ParseUint(q.Get("seed"), 10, 64)
		name := q.Get("name")
		if err1 != nil || err2 != nil || name == "" || size < 1 || size > 8<<30 {
			http.Error(w, "bad name, size or seed", http.StatusBadRequest)
			return
		}
		prepMu.Lock()
		defer prepMu.Unlock()
		s := origin.New()
		d := s.Add(name, origin.Random(size, seed))
		old := cur.Swap(s)
		base.Add(old.Egress())
		fmt.Fprintln(w, d)
	})
	mux.HandleFunc("GET /egress", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, base.Load()+cur.Load().Egress())
	})
	// Chaos controls (test/chaos, chaos.go): they act on the files
	// served now (a prepare starts clean).
	mux.HandleFunc("POST /add", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		count, err1 := strconv.Atoi(q.Get("count"))
		size, err2 := strconv.ParseInt(q.Get("size"), 10, 64)
		seed, err3 := strconv.ParseUint(q.Get("seed"), 10, 64)
		prefix := q.Get("prefix")
		if err1 != nil || err2 != nil || err3 != nil || prefix == "" || count < 1 || count > 100000 || size < 1 || int64(count)*size > 4<<30 {
			http.Error(w, "bad prefix, count, size or seed", http.StatusBadRequest)
			return
		}
		prepMu.Lock()
		defer prepMu.Unlock()
		s := cur.Load()
		for k := range count {
			fmt.Fprintln(w, s.Add(prefix+strconv.Itoa(k), origin.Random(size, seed+uint64(k))))
		}
	})
	mux.HandleFunc("POST /fault", func(w http.ResponseWriter, r *http.Request) {
		var f origin.Fault
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := cur.Load().SetFault(f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("POST /total-rate", func(w http.ResponseWriter, r *http.Request) {
		bps, err := strconv.ParseInt(r.URL.Query().Get("bps"), 10, 64)
		if err != nil || bps < 0 {
			http.Error(w, "bad bps", http.StatusBadRequest)
			return
		}
		cur.Load().SetTotalRate(bps)
	})
	mux.HandleFunc("GET /requests", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(cur.Load().Log())
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// ---- clients ---------------------------------------------------------

// ClientResult is one host's download, as a client role reports it (one
// JSON line on stdout) and as RunClients returns it.
type ClientResult struct {
	// Host is the host's name (set by RunClients).
	Host string `json:"host,omitempty"`
	// Seconds is the time from the common start to the result, as the
	// harness saw it (set by RunClients).
	Seconds float64 `json:"seconds"`
	// OwnSeconds is the client's own measure from "go" to done.
	OwnSeconds float64 `json:"own_seconds"`
	// Bytes is the number of content bytes received.
	Bytes int64 `json:"bytes"`
	// Digest is the SHA-256 of what was received ("sha256:…").
	Digest string `json:"digest"`
	// Received splits Bytes by source when the client knows it
	// (Pouchfly: "peer", "cdn", "origin").
	Received map[string]int64 `json:"received,omitempty"`
	// Error is set when the download failed.
	Error string `json:"error,omitempty"`
	// CPUSeconds is the client process's CPU time over the measured window
	// (set by RunClients).
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
}

// OK reports whether the download got size bytes with digest.
func (r ClientResult) OK(digest string, size int64) bool {
	return r.Error == "" && r.Digest == digest && r.Bytes == size
}

// ServeClient implements the client side of RunClients' protocol: it runs
// setup, prints "ready", waits for a line on stdin, runs the download,
// prints the result as one JSON line, and returns when stdin closes (the
// harness closes it once every client reported). A download that fails reports
// its error in the result, not as ServeClient's error.
func ServeClient(ctx context.Context, setup func(ctx context.Context) (func(ctx context.Context) ClientResult, error)) error {
	run, err := setup(ctx)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	line, eof := make(chan error, 1), make(chan struct{})
	go func() {
		r := bufio.NewReader(os.Stdin)
		_, err := r.ReadString('\n')
		line <- err
		io.Copy(io.Discard, r)
		close(eof)
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-line:
		if err != nil {
			return fmt.Errorf("waiting for go: %w", err)
		}
	}
	start := time.Now()
	res := run(ctx)
	res.OwnSeconds = time.Since(start).Seconds()
	b, _ := json.Marshal(res)
	if _, err := fmt.Printf("%s\n", b); err != nil {
		return err
	}
	// Stay (a BitTorrent client keeps seeding) until the harness closes
	// stdin: every host is done.
	select {
	case <-ctx.Done():
	case <-eof:
	}
	return nil
}

// countingHash hashes and counts what is written to it.
type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.h.Write(b)
	c.n += int64(len(b))
	return len(b), nil
}

func (c *countingHash) digest() string { return "sha256:" + hex.EncodeToString(c.h.Sum(nil)) }

// fetchRole downloads one URL and hashes it: --mode direct (plain HTTP
// GET from the origin) or --mode p2p (through the local agent's socket,
// with --digest).
func fetchRole(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ContinueOnError)
	mode := fs.String("mode", "direct", "direct or p2p")
	url := fs.String("url", "", "URL")
	digest := fs.String("digest", "", "expected digest (p2p: passed to the agent)")
	sock := fs.String("socket", "", "agent socket (p2p)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *mode {
	case "direct", "p2p":
	default:
		return fmt.Errorf("--mode %q: direct or p2p", *mode)
	}
	return ServeClient(ctx, func(ctx context.Context) (func(context.Context) ClientResult, error) {
		return func(ctx context.Context) (res ClientResult) {
			ch := &countingHash{h: sha256.New()}
			buf := make([]byte, 1<<20)
			defer func() {
				res.Bytes, res.Digest = ch.n, ch.digest()
			}()
			var body io.Reader
			if *mode == "p2p" {
				dl, err := peer.NewClient(*sock).Download(ctx, peer.DownloadRequest{URL: *url, Digest: *digest})
				if err != nil {
					res.Error = err.Error()
					return res
				}
				defer dl.Close()
				body = dl
				defer func() { res.Received = dl.Received() }()
			} else {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					res.Error = err.Error()
					return res
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					res.Error = "origin: " + resp.Status
					return res
				}
				body = resp.Body
				defer func() { res.Received = map[string]int64{"origin": ch.n} }()
			}
			if _, err := io.CopyBuffer(ch, body, buf); err != nil {
				res.Error = err.Error()
			}
			return res
		}, nil
	})
}
