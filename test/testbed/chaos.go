package testbed

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/origin"
)

// Fault injection for the chaos suite (test/chaos): kill and restart
// agents and the supernode of a run, drive the origin's faults, read its
// request log.

// Kill sends SIGKILL to the process (its whole process group) and waits
// for it; it then counts as stopped, not as an unexpected death.
func (p *Proc) Kill() {
	syscall.Kill(-p.PID(), syscall.SIGKILL)
	p.Stop(5 * time.Second)
}

// KillAgent SIGKILLs agent i (its host keeps its data directory).
func (pf *Pouchfly) KillAgent(i int) { pf.Agents[i].Kill() }

// RestartAgent starts agent i again with the run's configuration and data
// directory, and waits until it answers on its socket and has a session.
func (pf *Pouchfly) RestartAgent(ctx context.Context, i int) error {
	if dead, _ := pf.Agents[i].Exited(); !dead {
		return fmt.Errorf("agent on %s still runs", pf.Hosts[i].Name)
	}
	p, err := pf.agentStart[i]()
	if err != nil {
		return err
	}
	pf.Agents[i] = p
	return pf.waitAgent(ctx, i, 60*time.Second)
}

// waitAgent waits until agent i answers on its socket and reports a
// session in its metrics.
func (pf *Pouchfly) waitAgent(ctx context.Context, i int, limit time.Duration) error {
	c := peer.NewClient(pf.Sockets[i])
	p := pf.Agents[i]
	return poll(ctx, limit, "agent on "+pf.Hosts[i].Name, func() (bool, error) {
		if dead, err := p.Exited(); dead {
			return false, fmt.Errorf("%v; log %s:\n%s", err, p.LogPath, p.Tail(15))
		}
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		return c.Ping(pctx) == nil, nil
	})
}

// KillSupernode SIGKILLs the supernode.
func (pf *Pouchfly) KillSupernode() { pf.Supernode.Kill() }

// RestartSupernode starts the supernode again with the run's
// configuration and data directory and waits until its metrics answer.
func (pf *Pouchfly) RestartSupernode(ctx context.Context) error {
	if dead, _ := pf.Supernode.Exited(); !dead {
		return fmt.Errorf("supernode still runs")
	}
	p, err := pf.snStart()
	if err != nil {
		return err
	}
	pf.Supernode = p
	return poll(ctx, 60*time.Second, "the restarted supernode", func() (bool, error) {
		if dead, err := p.Exited(); dead {
			return false, fmt.Errorf("%v; log %s:\n%s", err, p.LogPath, p.Tail(15))
		}
		_, err := pf.Metric(ctx, "pouchfly_supernode_sessions")
		return err == nil, nil
	})
}

// SupernodeURL is the supernode's HTTP base URL (metrics, API), reachable
// with SupernodeClient.
func (pf *Pouchfly) SupernodeURL() string {
	return "http://" + net.JoinHostPort(pf.r.TB.Supernode.IP, strconv.Itoa(SupernodeHTTP))
}

// SupernodeClient is an HTTP client that reaches the supernode's HTTP
// listener from the harness.
func (pf *Pouchfly) SupernodeClient(timeout time.Duration) *http.Client {
	return pf.r.TB.HTTPClient(pf.r.TB.Supernode, timeout)
}

// AgentMetricsURL is agent i's /metrics URL, reachable with
// AgentClient(i).
func (pf *Pouchfly) AgentMetricsURL(i int) string {
	return "http://" + net.JoinHostPort(pf.Hosts[i].IP, strconv.Itoa(AgentMetricsPort)) + "/metrics"
}

// AgentClient is an HTTP client that reaches agent i's listeners.
func (pf *Pouchfly) AgentClient(i int, timeout time.Duration) *http.Client {
	return pf.r.TB.HTTPClient(pf.Hosts[i], timeout)
}

// ---- origin control --------------------------------------------------

func (r *Runner) originCall(ctx context.Context, method, path string, body io.Reader) ([]byte, error) {
	hc := r.TB.HTTPClient(r.TB.Origin, time.Minute)
	u := "http://" + net.JoinHostPort(r.TB.Origin.IP, strconv.Itoa(OriginPort)) + path
	req, _ := http.NewRequestWithContext(ctx, method, u, body)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("origin %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("origin %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// SetOriginFault makes the origin inject f into file requests (Fault{}
// heals it). It lasts until the next Prepare.
func (r *Runner) SetOriginFault(ctx context.Context, f origin.Fault) error {
	b, _ := json.Marshal(f)
	_, err := r.originCall(ctx, http.MethodPost, "/fault", bytes.NewReader(b))
	return err
}

// SetOriginTotalRate caps what the origin sends over all responses
// together, bytes/s (0: no cap beyond the host's tc cap). It lasts until
// the next Prepare.
func (r *Runner) SetOriginTotalRate(ctx context.Context, bytesPerSec int64) error {
	_, err := r.originCall(ctx, http.MethodPost, "/total-rate?bps="+strconv.FormatInt(bytesPerSec, 10), nil)
	return err
}

// OriginLog returns the file requests the origin served since the last
// Prepare, oldest first.
func (r *Runner) OriginLog(ctx context.Context) ([]origin.Record, error) {
	b, err := r.originCall(ctx, http.MethodGet, "/requests", nil)
	if err != nil {
		return nil, err
	}
	var recs []origin.Record
	return recs, json.Unmarshal(b, &recs)
}

// AddFiles makes the origin serve count more generated files of size
// bytes, named prefix0, prefix1, … (file k from seed+k), next to what it
// serves. It returns their URLs and digests, checked against the same
// generation here.
func (r *Runner) AddFiles(ctx context.Context, prefix string, count int, size int64, seed uint64) (urls, digests []string, err error) {
	b, err := r.originCall(ctx, http.MethodPost, fmt.Sprintf("/add?prefix=%s&count=%d&size=%d&seed=%d", prefix, count, size, seed), nil)
	if err != nil {
		return nil, nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			digests = append(digests, l)
		}
	}
	if len(digests) != count {
		return nil, nil, fmt.Errorf("origin added %d files, want %d", len(digests), count)
	}
	for k := range count {
		name := prefix + strconv.Itoa(k)
		if want := origin.New().Add(name, origin.Random(size, seed+uint64(k))); want != digests[k] {
			return nil, nil, fmt.Errorf("origin file %s is %s, expected %s", name, digests[k], want)
		}
		urls = append(urls, r.OriginURL(name))
	}
	return urls, digests, nil
}
