package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
)

// source is what getFile copies from: the agent's stream or an embedded
// peer's.
type source struct {
	io.Reader
	length   int64
	received func() map[string]int64
	close    func()
}

func parseHeaders(hs []string) (http.Header, error) {
	h := http.Header{}
	for _, kv := range hs {
		k, v, ok := strings.Cut(kv, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\r\n") || strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("header %q: want 'Name: value': %w", kv, errdefs.ErrInvalid)
		}
		h.Add(k, strings.TrimSpace(v))
	}
	return h, nil
}

func getFile(ctx context.Context, rawURL string, o getOptions) (err error) {
	if _, err := piece.NormalizeURL(rawURL, nil); err != nil {
		return err
	}
	if o.digest != "" {
		if err := piece.ValidDigest(o.digest); err != nil {
			return err
		}
	}
	header, err := parseHeaders(o.headers)
	if err != nil {
		return err
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(o.timeout))
		defer cancel()
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	out, err := filepath.Abs(o.output)
	if err != nil {
		return fmt.Errorf("output %q: %v: %w", o.output, err, errdefs.ErrInvalid)
	}
	if fi, err := os.Stat(out); err == nil && fi.IsDir() {
		return fmt.Errorf("output %s is a directory: %w", out, errdefs.ErrInvalid)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".dfget-*")
	if err != nil {
		return fmt.Errorf("output: %v: %w", err, errLocalIO)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	start := time.Now()
	src, err := openSource(ctx, rawURL, header, o, log)
	if err != nil {
		return err
	}
	defer src.close()

	// The peer's stream checks --digest on the way and fails instead of
	// ending if the content does not match.
	w := io.Writer(tmp)
	if !o.quiet && term.IsTerminal(int(os.Stderr.Fd())) {
		bar := progressbar.DefaultBytes(src.length, filepath.Base(out))
		defer bar.Finish()
		w = io.MultiWriter(w, bar)
	}
	n, err := io.CopyBuffer(w, src, make([]byte, 1<<20))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("write %s: %v: %w", out, err, errLocalIO)
		}
		return err
	}
	if src.length >= 0 && n != src.length {
		return fmt.Errorf("got %d of %d bytes: %w", n, src.length, errdefs.ErrUnavailable)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %v: %w", out, err, errLocalIO)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %v: %w", out, err, errLocalIO)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("rename to %s: %v: %w", out, err, errLocalIO)
	}
	if !o.quiet {
		secs := time.Since(start).Seconds()
		rx := src.received()
		fmt.Fprintf(os.Stderr, "%s: %s in %.2fs (%s/s); from peers %s, supernode %s, origin %s\n",
			out, units.Format(n), secs, units.Format(int64(float64(n)/max(secs, 1e-3))),
			units.Format(rx["peer"]), units.Format(rx["cdn"]), units.Format(rx["origin"]))
	}
	return nil
}

// openSource uses the local agent when it answers, else an embedded peer.
func openSource(ctx context.Context, rawURL string, header http.Header, o getOptions, log *slog.Logger) (*source, error) {
	c := peer.NewClient(o.socket)
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	perr := c.Ping(pctx)
	cancel()
	if perr == nil && len(o.supernodes) == 0 && o.limitRate == 0 {
		log.Info("using the local agent", "socket", o.socket)
		d, err := c.Download(ctx, peer.DownloadRequest{URL: rawURL, Header: header, Digest: o.digest, Range: o.rng, NoBackSource: o.noBackSource})
		if err != nil {
			return nil, err
		}
		return &source{Reader: d, length: d.Length, received: d.Received, close: func() { d.Close() }}, nil
	}
	return embedded(ctx, rawURL, header, o, log)
}

// embedded runs a short-lived peer for one download; it shares pieces
// with others while it runs and removes its store when done.
func embedded(ctx context.Context, rawURL string, header http.Header, o getOptions, log *slog.Logger) (*source, error) {
	dir, err := os.MkdirTemp("", "dfget-peer-*")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %v: %w", err, errLocalIO)
	}
	store, err := piece.NewDiskStore(filepath.Join(dir, "store"), nil)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("store: %v: %w", err, errLocalIO)
	}
	cfg := peer.DefaultConfig()
	cfg.DataDir = dir
	cfg.UploadListen = "0.0.0.0:0"
	if len(o.supernodes) > 0 {
		cfg.Supernodes = o.supernodes
	}
	cfg.BackSource = !o.noBackSource
	cfg.DownloadRate = o.limitRate
	p, err := peer.New(cfg, store, peer.Options{Logger: log})
	if err != nil {
		store.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { p.Run(pctx); close(done) }()
	cleanup := func() {
		stop()
		<-done
		store.Close()
		os.RemoveAll(dir)
	}
	<-p.Started()
	s, err := p.Download(ctx, peer.Request{URL: rawURL, Header: header, Digest: o.digest, Range: o.rng, NoBackSource: o.noBackSource})
	if err != nil {
		cleanup()
		return nil, err
	}
	meta, err := s.Meta(ctx)
	if err != nil {
		s.Close()
		cleanup()
		return nil, err
	}
	return &source{Reader: s, length: meta.ContentLength, received: s.Received, close: func() { s.Close(); cleanup() }}, nil
}
