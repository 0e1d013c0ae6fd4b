package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
)

// The malicious host's misbehaviours, in the order it cycles through them
// (one per piece request once armed; Arm can pick some of them).
const (
	// BadCorrupt serves the piece with one byte flipped.
	BadCorrupt = "corrupt"
	// BadTrickle serves the right bytes at a trickle (EvilTrickleRate).
	BadTrickle = "trickle"
	// BadAbsent answers "not held" for a piece it announced.
	BadAbsent = "absent"
	// BadTruncate serves the first half of the piece, framed as the whole
	// answer (Content-Length of the half).
	BadTruncate = "truncate"
)

var badModes = []string{BadCorrupt, BadTrickle, BadAbsent, BadTruncate}

// EvilTrickleRate is the trickle's rate, bytes/s: a 1 MiB piece would
// take over two minutes.
const EvilTrickleRate = 8 << 10

// EvilStore is a piece store whose upload side lies once armed: each
// piece request gets the next misbehaviour of the cycle. The host's own
// downloads (writes, local reads) are honest. Safe for concurrent use.
type EvilStore struct {
	piece.Store
	armed  atomic.Bool
	modes  atomic.Pointer[[]string] // the cycle, set by Arm
	seq    atomic.Int64
	mu     sync.Mutex
	counts map[string]int64
}

// NewEvilStore wraps s, unarmed.
func NewEvilStore(s piece.Store) *EvilStore { return &EvilStore{Store: s, counts: map[string]int64{}} }

var _ piece.Store = (*EvilStore)(nil)

// Arm starts the lies: modes in turn, or every misbehaviour without any.
func (s *EvilStore) Arm(modes ...string) error {
	if len(modes) == 0 {
		modes = badModes
	}
	for _, m := range modes {
		if !slices.Contains(badModes, m) {
			return fmt.Errorf("unknown misbehaviour %q (want some of %v): %w", m, badModes, errdefs.ErrInvalid)
		}
	}
	modes = slices.Clone(modes)
	s.modes.Store(&modes)
	s.armed.Store(true)
	return nil
}

// EvilStats counts the pieces served by misbehaviour since armed.
type EvilStats struct {
	Armed  bool             `json:"armed"`
	Counts map[string]int64 `json:"counts"`
}

// Stats returns the counts so far.
func (s *EvilStore) Stats() EvilStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := map[string]int64{}
	for _, m := range badModes {
		c[m] = s.counts[m]
	}
	return EvilStats{Armed: s.armed.Load(), Counts: c}
}

// Total is every piece request answered with a misbehaviour.
func (st EvilStats) Total() int64 {
	var n int64
	for _, v := range st.Counts {
		n += v
	}
	return n
}

// ReadPiece implements piece.Store with the lies.
func (s *EvilStore) ReadPiece(ctx context.Context, task string, n int) (*piece.Reader, error) {
	if !s.armed.Load() {
		return s.Store.ReadPiece(ctx, task, n)
	}
	modes := *s.modes.Load()
	mode := modes[(s.seq.Add(1)-1)%int64(len(modes))]
	if mode == BadAbsent {
		s.count(mode)
		return nil, fmt.Errorf("piece %d of %s: %w", n, task, errdefs.ErrNotFound)
	}
	r, err := s.Store.ReadPiece(ctx, task, n)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		return nil, err
	}
	s.count(mode)
	switch mode {
	case BadCorrupt:
		data[len(data)/2] ^= 0x5a
	case BadTruncate:
		data = data[:len(data)/2]
	case BadTrickle:
		return &piece.Reader{R: &trickle{ctx: ctx, data: data}, Size: int64(len(data))}, nil
	}
	return &piece.Reader{R: bytes.NewReader(data), Size: int64(len(data))}, nil
}

func (s *EvilStore) count(mode string) {
	s.mu.Lock()
	s.counts[mode]++
	s.mu.Unlock()
}

// trickle yields data at EvilTrickleRate until the request ends.
type trickle struct {
	ctx  context.Context
	data []byte
}

func (t *trickle) Read(b []byte) (int, error) {
	if len(t.data) == 0 {
		return 0, io.EOF
	}
	const chunk = 1 << 10
	select {
	case <-t.ctx.Done():
		return 0, t.ctx.Err()
	case <-time.After(time.Second * chunk / EvilTrickleRate):
	}
	n := copy(b[:min(len(b), chunk)], t.data)
	t.data = t.data[n:]
	return n, nil
}

// ---- the malicious agent of the testbed --------------------------------

// EvilAgentRole runs a malicious agent in a testbed host: a real peer
// agent (peer.Peer with its disk store, local API, metrics) reading the
// same dfget.yaml as `dfget daemon`, whose upload side is an EvilStore,
// armed and read through a control socket (evil.sock beside the config).
const EvilAgentRole = "chaos-evil-agent"

// evilConfig is the part of dfget.yaml the malicious agent reads.
type evilConfig struct {
	Peer          peer.Config `yaml:"peer"`
	MetricsListen string      `yaml:"metrics_listen"`
	LogLevel      string      `yaml:"log_level"`
}

// evilControl returns the control socket of the agent configured by cfg.
func evilControl(cfg string) string { return filepath.Join(filepath.Dir(cfg), "evil.sock") }

func evilAgentRole(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(EvilAgentRole, flag.ContinueOnError)
	file := fs.String("config", "", "dfget.yaml")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := evilConfig{Peer: peer.DefaultConfig(), MetricsListen: "127.0.0.1:65003", LogLevel: "info"}
	if err := cliconfig.Load(&cfg, *file, nil); err != nil {
		return err
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	disk, err := piece.NewDiskStore(filepath.Join(cfg.Peer.DataDir, "store"), nil)
	if err != nil {
		return err
	}
	defer disk.Close()
	evil := NewEvilStore(disk)
	p, err := peer.New(cfg.Peer, evil, peer.Options{Logger: log})
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.Run(ctx) })
	<-p.Started()
	g.Go(func() error { return p.ServeAPI(ctx, cfg.Peer.Socket) })
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collectors()...)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	g.Go(func() error { return serveUntil(ctx, "tcp", cfg.MetricsListen, mux) })
	ctl := http.NewServeMux()
	ctl.HandleFunc("POST /arm", func(w http.ResponseWriter, r *http.Request) {
		var modes []string
		if m := r.URL.Query().Get("modes"); m != "" {
			modes = strings.Split(m, ",")
		}
		if err := evil.Arm(modes...); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	ctl.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(evil.Stats()) })
	sock := evilControl(*file)
	os.Remove(sock)
	g.Go(func() error { return serveUntil(ctx, "unix", sock, ctl) })
	log.Warn("malicious agent up (lies once armed)", "host", p.HostID(), "control", sock)
	return g.Wait()
}

// serveUntil serves h on network/addr until ctx ends.
func serveUntil(ctx context.Context, network, addr string, h http.Handler) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// evilRemote drives a malicious agent through its control socket.
type evilRemote struct{ socket string }

func (e evilRemote) call(ctx context.Context, method, path string, out any) error {
	req, _ := http.NewRequestWithContext(ctx, method, "http://evil"+path, nil)
	resp, err := apiClient(e.socket).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("evil agent %s: %s", path, resp.Status)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}
