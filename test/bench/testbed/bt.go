package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anacrolix/generics"
	alog "github.com/anacrolix/log"
	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"github.com/anacrolix/torrent/tracker"
	httpTrackerServer "github.com/anacrolix/torrent/tracker/http/server"
	trackerServer "github.com/anacrolix/torrent/tracker/server"
	"github.com/anacrolix/torrent/tracker/udp"

	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/report"
	"github.com/pouchfly/pouchfly/test/testbed"
)

// The BitTorrent baseline: github.com/anacrolix/torrent v1.59.1.
//
//	origin host: one process ("bt-origin") with an HTTP tracker (the
//	  library's tracker/http/server handler over an in-memory peer store)
//	  on :6969, a seeding client on :6881 and a stats endpoint on :6970
//	every host: one client ("bt-get") on :6881 that downloads the torrent
//	  with the library's default piece selection, then keeps seeding until
//	  every host is done
//
// Deviations from the library's defaults, all for the testbed: no DHT (no
// route out, and a tracker is there), no uTP (TCP like Pouchfly; uTP's
// cgo congestion control on tbf links would be a different experiment),
// an in-memory piece-completion store instead of sqlite/bolt, Seed=true
// (finished clients keep uploading, as Pouchfly agents do), a 5 s
// announce interval (peers learn about each other quickly).

const (
	// btMaxAlloc works around the v1.59.1 upload deadlock (see btConfig).
	btMaxAlloc = 1024 * 16 << 10
	// btKeepAlive bounds the v1.59.1 lost-wake-up stall (see btConfig).
	btKeepAlive   = time.Second
	btPort        = 6881
	btTrackerPort = 6969
	btStatsPort   = 6970
)

func init() {
	testbed.RegisterRole("bt-origin", btOriginRole)
	testbed.RegisterRole("bt-get", btGetRole)
}

// btConfig is the client configuration shared by the seeder and the hosts.
func btConfig(ip, dataDir string) *torrent.ClientConfig {
	cfg := torrent.NewDefaultClientConfig()
	cfg.ListenHost = func(string) string { return ip }
	cfg.ListenPort = btPort
	cfg.NoDHT = true
	cfg.DisableUTP = true
	cfg.DisableIPv6 = true
	cfg.DisableWebtorrent = true
	cfg.DisableWebseeds = true
	cfg.NoDefaultPortForwarding = true
	cfg.Seed = true
	// v1.59.1 deadlocks uploads with its default 1 MiB per-connection
	// allocation limit: a connection reserves memory for each request as
	// it arrives (granted in arrival order), but its single request server
	// reads them in map order and blocks on one whose reservation is not
	// granted, while the granted ones wait behind it, never read, never
	// sent, never released (peerconn.go servePeerRequest/peerRequestServer,
	// internal/alloclim). Every download stalls after ~1 MiB per
	// connection. With room for the whole request queue (localClientReqq
	// 1024 × 16 KiB chunks) every reservation is granted at once.
	cfg.MaxAllocPeerRequestDataPerConn = btMaxAlloc
	// v1.59.1 can also lose a writer wake-up: peerConnMsgWriter.run calls
	// fillWriteBuffer (which takes and releases the client lock) and only
	// then takes writeCond.Signaled(); a tickleWriter (Broadcast) in
	// between is lost, and the connection's writer — requests and piece
	// data alike — sleeps until its keep-alive timer, KeepAliveTimeout
	// (1 min by default; seen here as a 70 s download of 11 s worth). The
	// timer is the only backstop, so it is shortened to bound such a
	// stall; it only costs a 4-byte keep-alive on an idle connection.
	cfg.KeepAliveTimeout = btKeepAlive
	cfg.DataDir = dataDir
	cfg.DefaultStorage = storage.NewFileOpts(storage.NewFileClientOpts{
		ClientBaseDir:   dataDir,
		PieceCompletion: storage.NewMapPieceCompletion(),
	})
	level := alog.Warning
	if os.Getenv("POUCHFLY_BENCH_BT_DEBUG") != "" {
		level = alog.Debug
	}
	cfg.Logger = alog.Default.WithFilterLevel(level)
	return cfg
}

// memTracker is an in-memory peer store for the tracker handler.
type memTracker struct {
	mu    sync.Mutex
	peers map[trackerServer.InfoHash]map[netip.AddrPort]struct{}
}

var _ trackerServer.AnnounceTracker = (*memTracker)(nil)

func (m *memTracker) TrackAnnounce(_ context.Context, req udp.AnnounceRequest, addr trackerServer.AnnounceAddr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.peers == nil {
		m.peers = map[trackerServer.InfoHash]map[netip.AddrPort]struct{}{}
	}
	set := m.peers[req.InfoHash]
	if set == nil {
		set = map[netip.AddrPort]struct{}{}
		m.peers[req.InfoHash] = set
	}
	if req.Event == tracker.Stopped {
		delete(set, addr)
	} else {
		set[addr] = struct{}{}
	}
	return nil
}

func (m *memTracker) Scrape(context.Context, []trackerServer.InfoHash) ([]udp.ScrapeInfohashResult, error) {
	return nil, nil
}

func (m *memTracker) GetPeers(_ context.Context, ih trackerServer.InfoHash, opts trackerServer.GetPeersOpts, remote trackerServer.AnnounceAddr) (ret trackerServer.ServerAnnounceResult) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for a := range m.peers[ih] {
		if a == remote {
			continue
		}
		if opts.MaxCount.Ok && uint(len(ret.Peers)) >= opts.MaxCount.Value {
			break
		}
		ret.Peers = append(ret.Peers, trackerServer.PeerInfo{AnnounceAddr: a})
	}
	ret.Interval = generics.Some[int32](5)
	return ret
}

// btStats is the seeder's /stats answer.
type btStats struct {
	Seeding          bool  `json:"seeding"`
	BytesWrittenData int64 `json:"bytes_written_data"`
	BytesWritten     int64 `json:"bytes_written"`
}

// btOriginRole runs the tracker and the seeder on the origin host.
func btOriginRole(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bt-origin", flag.ContinueOnError)
	ip := fs.String("ip", "", "address")
	torrentPath := fs.String("torrent", "", ".torrent file")
	dataDir := fs.String("data", "", "directory holding the content")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Tracker.
	th := httpTrackerServer.Handler{Announce: &trackerServer.AnnounceHandler{AnnounceTracker: &memTracker{}}}
	mux := http.NewServeMux()
	mux.Handle("/announce", th)
	tln, err := net.Listen("tcp", net.JoinHostPort(*ip, strconv.Itoa(btTrackerPort)))
	if err != nil {
		return err
	}
	tsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go tsrv.Serve(tln)
	defer tsrv.Close()
	// Seeder.
	mi, err := metainfo.LoadFromFile(*torrentPath)
	if err != nil {
		return err
	}
	cl, err := torrent.NewClient(btConfig(*ip, *dataDir))
	if err != nil {
		return err
	}
	defer cl.Close()
	t, err := cl.AddTorrent(mi)
	if err != nil {
		return err
	}
	if err := t.VerifyDataContext(ctx); err != nil {
		return err
	}
	// Stats.
	smux := http.NewServeMux()
	smux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		st := t.Stats()
		json.NewEncoder(w).Encode(btStats{
			Seeding:          t.Seeding() && t.BytesMissing() == 0,
			BytesWrittenData: st.BytesWrittenData.Int64(),
			BytesWritten:     st.BytesWritten.Int64(),
		})
	})
	sln, err := net.Listen("tcp", net.JoinHostPort(*ip, strconv.Itoa(btStatsPort)))
	if err != nil {
		return err
	}
	ssrv := &http.Server{Handler: smux, ReadHeaderTimeout: 10 * time.Second}
	go ssrv.Serve(sln)
	defer ssrv.Close()
	<-ctx.Done()
	return nil
}

// btGetRole is one host's BitTorrent client.
func btGetRole(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bt-get", flag.ContinueOnError)
	ip := fs.String("ip", "", "address")
	torrentPath := fs.String("torrent", "", ".torrent file")
	dataDir := fs.String("data", "", "download directory")
	seederIP := fs.String("seeder-ip", "", "the seeder's address (to split received bytes by source)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var fromSeeder, fromPeers atomic.Int64
	return testbed.ServeClient(ctx, func(ctx context.Context) (func(context.Context) testbed.ClientResult, error) {
		mi, err := metainfo.LoadFromFile(*torrentPath)
		if err != nil {
			return nil, err
		}
		cfg := btConfig(*ip, *dataDir)
		cfg.Callbacks.ReceivedUsefulData = append(cfg.Callbacks.ReceivedUsefulData, func(ev torrent.ReceivedUsefulDataEvent) {
			n := int64(len(ev.Message.Piece))
			host, _, _ := net.SplitHostPort(ev.Peer.RemoteAddr.String())
			if host == *seederIP {
				fromSeeder.Add(n)
			} else {
				fromPeers.Add(n)
			}
		})
		cl, err := torrent.NewClient(cfg)
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, func() { cl.Close() })
		t, err := cl.AddTorrent(mi)
		if err != nil {
			cl.Close()
			return nil, err
		}
		select {
		case <-t.GotInfo():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return func(ctx context.Context) (res testbed.ClientResult) {
			t.DownloadAll()
			// Progress in the client's log, every 2 s.
			stopLog := make(chan struct{})
			defer close(stopLog)
			go func() {
				tick := time.NewTicker(2 * time.Second)
				defer tick.Stop()
				for {
					select {
					case <-stopLog:
						return
					case <-tick.C:
						st := t.Stats()
						fmt.Fprintf(os.Stderr, "%s completed %d/%d bytes, peers active %d total %d, seeder %d, peers %d\n",
							time.Now().Format("15:04:05.000"), t.BytesCompleted(), t.Length(), st.ActivePeers, st.TotalPeers,
							fromSeeder.Load(), fromPeers.Load())
					}
				}
			}()
			select {
			case <-t.Complete().On():
			case <-ctx.Done():
				res.Error = ctx.Err().Error()
				return res
			}
			res.Received = map[string]int64{"origin": fromSeeder.Load(), "peer": fromPeers.Load()}
			// Check the stored file end to end.
			f, err := os.Open(filepath.Join(*dataDir, t.Info().BestName()))
			if err != nil {
				res.Error = err.Error()
				return res
			}
			defer f.Close()
			h := sha256.New()
			n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
			res.Bytes = n
			res.Digest = fmt.Sprintf("sha256:%x", h.Sum(nil))
			if err != nil {
				res.Error = err.Error()
			}
			return res
		}, nil
	})
}

// runBitTorrent has hosts[0:n] download a fresh size-byte file with
// BitTorrent from a seeder on the origin host, all at once.
func runBitTorrent(ctx context.Context, r *testbed.Runner, n int, size int64) (*testbed.Run, error) {
	tb := r.TB
	hosts, err := r.HostsN(n)
	if err != nil {
		return nil, err
	}
	name, seed := r.NextName("bt")
	runDir := filepath.Join(tb.Origin.Dir, name+".d")
	defer os.RemoveAll(runDir)
	dataDir := filepath.Join(runDir, "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	content := origin.Random(size, seed)
	digest := origin.New().Add(name, content)
	if err := os.WriteFile(filepath.Join(dataDir, name), content, 0o644); err != nil {
		return nil, err
	}
	content = nil
	info := metainfo.Info{}
	if err := info.BuildFromFilePath(filepath.Join(dataDir, name)); err != nil {
		return nil, err
	}
	mi := metainfo.MetaInfo{Announce: fmt.Sprintf("http://%s/announce", net.JoinHostPort(tb.Origin.IP, strconv.Itoa(btTrackerPort)))}
	if mi.InfoBytes, err = bencode.Marshal(info); err != nil {
		return nil, err
	}
	torrentPath := filepath.Join(runDir, name+".torrent")
	f, err := os.Create(torrentPath)
	if err != nil {
		return nil, err
	}
	if err := mi.Write(f); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()

	run := &testbed.Run{Mode: "bittorrent", Hosts: n, Size: size, Digest: digest, ProcCPU: map[string]float64{}}
	r.Logf("bittorrent: tracker + seeder on the origin host (%d pieces of %s)…", info.NumPieces(), report.FormatBytes(info.PieceLength))
	seeder, err := tb.StartRole(tb.Origin, "bt-origin-"+name, testbed.ProcOptions{}, "bt-origin",
		"-ip", tb.Origin.IP, "-torrent", torrentPath, "-data", dataDir)
	if err != nil {
		return nil, err
	}
	defer seeder.Stop(5 * time.Second)
	hc := tb.HTTPClient(tb.Origin, 3*time.Second)
	statsURL := fmt.Sprintf("http://%s/stats", net.JoinHostPort(tb.Origin.IP, strconv.Itoa(btStatsPort)))
	stats := func() (btStats, error) {
		var st btStats
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, statsURL, nil)
		resp, err := hc.Do(req)
		if err != nil {
			return st, err
		}
		defer resp.Body.Close()
		return st, json.NewDecoder(resp.Body).Decode(&st)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if dead, err := seeder.Exited(); dead {
			return nil, fmt.Errorf("seeder: %v; log:\n%s", err, seeder.Tail(10))
		}
		if st, err := stats(); err == nil && st.Seeding {
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the seeder did not start seeding within 60s")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	st0, _ := stats()
	c0 := seeder.CPU()
	specs := make([]testbed.ClientSpec, n)
	var dirs []string
	for i, h := range hosts {
		d := filepath.Join(h.Dir, name+".d")
		dirs = append(dirs, d)
		specs[i] = testbed.ClientSpec{Host: h, Role: "bt-get", Args: []string{
			"-ip", h.IP, "-torrent", torrentPath, "-data", d, "-seeder-ip", tb.Origin.IP}}
	}
	defer func() {
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}()
	r.Logf("bittorrent: %d hosts download %s…", n, report.FormatBytes(size))
	run.Results, run.Window, err = tb.RunClients(ctx, specs, 60*time.Second, r.Options().RunTimeout, r.Progress(n))
	if err != nil {
		return run, err
	}
	st1, err := stats()
	if err != nil {
		return run, fmt.Errorf("seeder stats: %w", err)
	}
	run.ProcCPU["seeder+tracker"] = seeder.CPU() - c0
	run.OriginEgress = st1.BytesWrittenData - st0.BytesWrittenData
	run.Notes = append(run.Notes, fmt.Sprintf("bittorrent: anacrolix/torrent v1.59.1, HTTP tracker (library handler, in-memory store, 5 s interval) and seeder on the origin host; "+
		"%d pieces of %s (the library's ChoosePieceLength); default piece selection; TCP only (no uTP), no DHT, in-memory piece completion, Seed=true, "+
		"MaxAllocPeerRequestDataPerConn 16 MiB (the 1 MiB default deadlocks v1.59.1's upload path), "+
		"KeepAliveTimeout 1 s (bounds v1.59.1's lost writer wake-up, which otherwise stalls a connection up to 1 min); "+
		"origin_egress_bytes = the seeder's piece payload sent (protocol overhead excluded: %s more)",
		info.NumPieces(), report.FormatBytes(info.PieceLength), report.FormatBytes((st1.BytesWritten-st0.BytesWritten)-(st1.BytesWrittenData-st0.BytesWrittenData))))
	return run, nil
}
