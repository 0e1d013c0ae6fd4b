package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/supernode/dashboard"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/testbed"
)

// TestbedEnv runs the scenarios on the network-namespace testbed (package
// test/testbed): real `supernode` and `dfget daemon` processes (or the
// malicious agent role) in their hosts' namespaces, tbf caps both ways,
// clients as processes of the chaos-fetch role. Kills are SIGKILL.
type TestbedEnv struct {
	R *testbed.Runner
	// RunTimeout bounds one Fetch.
	RunTimeout time.Duration

	mu     sync.Mutex
	pf     *testbed.Pouchfly
	setup  Setup
	cfgs   map[int]string // agent config paths
	mounts []string
	runs   int
}

var _ Env = (*TestbedEnv)(nil)

// Name implements Env.
func (e *TestbedEnv) Name() string { return "testbed" }

// MaxHosts implements Env.
func (e *TestbedEnv) MaxHosts() int { return len(e.R.TB.Hosts) }

// Caps implements Env.
func (e *TestbedEnv) Caps() (float64, float64) {
	c := e.R.TB.Config()
	return c.HostCapMbit, c.OriginCapMbit
}

// Start implements Env.
func (e *TestbedEnv) Start(ctx context.Context, s Setup) (err error) {
	hosts, err := e.R.HostsN(s.Hosts)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pf != nil {
		return fmt.Errorf("testbed: already started")
	}
	e.runs++
	e.setup, e.cfgs = s, map[int]string{}
	// A fresh origin server: no faults, an empty log, only new files.
	if _, _, err := e.R.Prepare(ctx, fmt.Sprintf("reset-%d", e.runs), 1, 1); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			e.stopLocked()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	agentSet := map[string]string{}
	for k, v := range s.Agent {
		agentSet[k] = v
	}
	pf, err := e.R.StartPouchflyWith(ctx, hosts, testbed.PouchflyOptions{
		AgentSet: agentSet, SupernodeSet: s.Supernode,
		BeforeAgent: func(i int, h *testbed.Host, dir string) error {
			e.cfgs[i] = filepath.Join(dir, "dfget.yaml")
			if len(s.HostAgent[i]) > 0 {
				if err := testbed.OverrideYAML(e.cfgs[i], s.HostAgent[i]); err != nil {
					return err
				}
			}
			if size, ok := s.Disk[i]; ok {
				data := filepath.Join(dir, "data")
				if err := mountTmpfs(data, size); err != nil {
					return err
				}
				e.mounts = append(e.mounts, data)
			}
			return nil
		},
		AgentCommand: func(i int, h *testbed.Host, cfg string) (string, []string, []string) {
			if !s.evil(i) {
				return "", nil, nil
			}
			return self, []string{"-config", cfg}, []string{testbed.RoleEnv + "=" + EvilAgentRole}
		},
	})
	if err != nil {
		return err
	}
	e.pf = pf
	return nil
}

// Stop implements Env.
func (e *TestbedEnv) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
}

func (e *TestbedEnv) stopLocked() {
	if e.pf != nil {
		e.pf.Stop()
		e.pf = nil
	}
	for _, m := range e.mounts {
		unmount(m)
	}
	e.mounts = nil
}

// Mounts returns the mounts of the current run (for a last-resort
// cleanup).
func (e *TestbedEnv) Mounts() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.mounts...)
}

func (e *TestbedEnv) run() (*testbed.Pouchfly, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pf == nil {
		return nil, errNotStarted
	}
	return e.pf, nil
}

// AddFiles implements Env.
func (e *TestbedEnv) AddFiles(ctx context.Context, prefix string, count int, size int64, seed uint64) ([]Request, error) {
	urls, digests, err := e.R.AddFiles(ctx, prefix, count, size, seed)
	if err != nil {
		return nil, err
	}
	out := make([]Request, count)
	for k := range count {
		out[k] = Request{URL: urls[k], Digest: digests[k], Size: size, Seed: seed + uint64(k)}
	}
	return out, nil
}

// Fetch implements Env: one chaos-fetch client process per host.
func (e *TestbedEnv) Fetch(ctx context.Context, batch map[int][]Request) ([]Fetched, error) {
	pf, err := e.run()
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.runs++
	seq := e.runs
	e.mu.Unlock()
	hosts := make([]int, 0, len(batch))
	for h := range batch {
		hosts = append(hosts, h)
	}
	sort.Ints(hosts)
	specs := make([]testbed.ClientSpec, len(hosts))
	outs := make([]string, len(hosts))
	for j, h := range hosts {
		host := pf.Hosts[h]
		in := filepath.Join(host.Dir, fmt.Sprintf("chaos-reqs-%d.json", seq))
		outs[j] = filepath.Join(host.Dir, fmt.Sprintf("chaos-out-%d.json", seq))
		b, _ := json.Marshal(batch[h])
		if err := os.WriteFile(in, b, 0o644); err != nil {
			return nil, err
		}
		specs[j] = testbed.ClientSpec{Host: host, Role: FetchRole,
			Args: []string{"-socket", pf.Sockets[h], "-reqs", in, "-out", outs[j], "-host", strconv.Itoa(h)}}
	}
	timeout := e.RunTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	crs, _, err := e.R.TB.RunClients(ctx, specs, 60*time.Second, timeout, nil)
	var out []Fetched
	for j, h := range hosts {
		var res []Fetched
		b, rerr := os.ReadFile(outs[j])
		if rerr == nil {
			rerr = json.Unmarshal(b, &res)
		}
		if rerr != nil || len(res) != len(batch[h]) {
			msg := fmt.Sprintf("client on %s gave no results (%v)", pf.Hosts[h].Name, rerr)
			if j < len(crs) && crs[j].Error != "" {
				msg = crs[j].Error
			}
			res = make([]Fetched, len(batch[h]))
			for k, r := range batch[h] {
				res[k] = Fetched{URL: r.URL, Host: h, Error: msg, End: time.Now()}
			}
		}
		out = append(out, res...)
	}
	return out, err
}

// Socket implements Env.
func (e *TestbedEnv) Socket(host int) string {
	pf, err := e.run()
	if err != nil {
		return ""
	}
	return pf.Sockets[host]
}

// HostID implements Env.
func (e *TestbedEnv) HostID(host int) string { return e.R.TB.Hosts[host].Name }

// KillAgent implements Env.
func (e *TestbedEnv) KillAgent(ctx context.Context, host int) error {
	pf, err := e.run()
	if err != nil {
		return err
	}
	pf.KillAgent(host)
	return nil
}

// RestartAgent implements Env.
func (e *TestbedEnv) RestartAgent(ctx context.Context, host int) error {
	pf, err := e.run()
	if err != nil {
		return err
	}
	return pf.RestartAgent(ctx, host)
}

// AgentAlive implements Env.
func (e *TestbedEnv) AgentAlive(host int) bool {
	pf, err := e.run()
	if err != nil {
		return false
	}
	dead, _ := pf.Agents[host].Exited()
	return !dead
}

// KillSupernode implements Env.
func (e *TestbedEnv) KillSupernode(ctx context.Context) error {
	pf, err := e.run()
	if err != nil {
		return err
	}
	pf.KillSupernode()
	return nil
}

// RestartSupernode implements Env.
func (e *TestbedEnv) RestartSupernode(ctx context.Context) error {
	pf, err := e.run()
	if err != nil {
		return err
	}
	return pf.RestartSupernode(ctx)
}

// SupernodeMetrics implements Env.
func (e *TestbedEnv) SupernodeMetrics(ctx context.Context) (Metrics, error) {
	pf, err := e.run()
	if err != nil {
		return nil, err
	}
	return Scrape(ctx, pf.SupernodeClient(5*time.Second), pf.SupernodeURL()+"/metrics")
}

// SupernodeState implements Env.
func (e *TestbedEnv) SupernodeState(ctx context.Context) (dashboard.State, error) {
	pf, err := e.run()
	if err != nil {
		return dashboard.State{}, err
	}
	return getState(ctx, pf.SupernodeClient(5*time.Second), pf.SupernodeURL())
}

// AgentMetrics implements Env.
func (e *TestbedEnv) AgentMetrics(ctx context.Context, host int) (Metrics, error) {
	pf, err := e.run()
	if err != nil {
		return nil, err
	}
	return Scrape(ctx, pf.AgentClient(host, 5*time.Second), pf.AgentMetricsURL(host))
}

// OriginEgress implements Env.
func (e *TestbedEnv) OriginEgress(ctx context.Context) (int64, error) { return e.R.OriginEgress(ctx) }

// SetOriginFault implements Env.
func (e *TestbedEnv) SetOriginFault(ctx context.Context, f origin.Fault) error {
	return e.R.SetOriginFault(ctx, f)
}

// OriginLog implements Env.
func (e *TestbedEnv) OriginLog(ctx context.Context) ([]origin.Record, error) {
	return e.R.OriginLog(ctx)
}

func (e *TestbedEnv) evilRemote(host int) (evilRemote, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.setup.evil(host) || e.cfgs[host] == "" {
		return evilRemote{}, fmt.Errorf("testbed: host %d is not malicious", host)
	}
	return evilRemote{socket: evilControl(e.cfgs[host])}, nil
}

// ArmEvil implements Env.
func (e *TestbedEnv) ArmEvil(ctx context.Context, host int, modes ...string) error {
	r, err := e.evilRemote(host)
	if err != nil {
		return err
	}
	return r.call(ctx, "POST", "/arm?modes="+url.QueryEscape(strings.Join(modes, ",")), nil)
}

// EvilStats implements Env.
func (e *TestbedEnv) EvilStats(ctx context.Context, host int) (EvilStats, error) {
	var st EvilStats
	r, err := e.evilRemote(host)
	if err != nil {
		return st, err
	}
	return st, r.call(ctx, "GET", "/stats", &st)
}
