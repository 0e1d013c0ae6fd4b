package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"

	"gopkg.in/yaml.v3"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/supernode/dashboard"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/testbed"
)

// Env is where the scenarios run: the in-process loopback cluster
// (LoopbackEnv, `go test ./test/chaos`) or the network-namespace testbed
// (TestbedEnv, `make chaos`). Hosts are numbered from 0. An Env runs one
// setup at a time (Start … Stop); its methods other than Start and Stop
// are safe for concurrent use.
type Env interface {
	// Name is "loopback" or "testbed".
	Name() string
	// MaxHosts is the number of hosts available.
	MaxHosts() int
	// Caps are the host and origin caps for the report, Mbit/s (0: none).
	Caps() (host, origin float64)
	// Start brings up a fresh supernode and agents on hosts 0…s.Hosts-1
	// and resets the origin (no faults, empty log, new files only).
	Start(ctx context.Context, s Setup) error
	// Stop stops what Start started and undoes its mounts. Safe to call
	// when Start failed half-way, and twice.
	Stop()
	// AddFiles makes the origin serve count generated files of size bytes
	// (file k from seed+k) named prefix0…; it returns their requests.
	AddFiles(ctx context.Context, prefix string, count int, size int64, seed uint64) ([]Request, error)
	// Fetch runs each host's requests all at once through its agent, all
	// hosts starting together, and returns when every one ended.
	Fetch(ctx context.Context, batch map[int][]Request) ([]Fetched, error)
	// Socket is host's agent API socket.
	Socket(host int) string
	// HostID is host's ID at the supernode.
	HostID(host int) string
	// KillAgent kills host's agent abruptly (SIGKILL on the testbed); its
	// data directory stays.
	KillAgent(ctx context.Context, host int) error
	// RestartAgent starts host's agent again on its data directory and
	// waits until it answers.
	RestartAgent(ctx context.Context, host int) error
	// AgentAlive reports whether host's agent process runs.
	AgentAlive(host int) bool
	// KillSupernode kills the supernode; RestartSupernode starts it again
	// on the same addresses and data directory.
	KillSupernode(ctx context.Context) error
	RestartSupernode(ctx context.Context) error
	// SupernodeMetrics scrapes the supernode's /metrics.
	SupernodeMetrics(ctx context.Context) (Metrics, error)
	// SupernodeState reads the supernode's /api/v1/state.
	SupernodeState(ctx context.Context) (dashboard.State, error)
	// AgentMetrics reads host's agent metrics.
	AgentMetrics(ctx context.Context, host int) (Metrics, error)
	// OriginEgress is the origin's body bytes sent so far (monotonic over
	// the Env's life).
	OriginEgress(ctx context.Context) (int64, error)
	// SetOriginFault injects f into the origin's file requests.
	SetOriginFault(ctx context.Context, f origin.Fault) error
	// OriginLog is the file requests since Start, oldest first.
	OriginLog(ctx context.Context) ([]origin.Record, error)
	// ArmEvil makes a malicious host (Setup.Evil) start lying, with modes
	// in turn (Bad*; none: every one); EvilStats counts its lies.
	ArmEvil(ctx context.Context, host int, modes ...string) error
	EvilStats(ctx context.Context, host int) (EvilStats, error)
}

// Setup is one scenario's cluster.
type Setup struct {
	// Hosts is how many hosts run an agent (0…Hosts-1).
	Hosts int
	// Agent and Supernode override config keys, dotted as in dfget.yaml
	// ("peer.supernode_wait": "1s") and supernode.yaml
	// ("cdn.retries": "3"); values are YAML.
	Agent, Supernode map[string]string
	// HostAgent adds per-host agent overrides.
	HostAgent map[int]map[string]string
	// Evil lists hosts that run a malicious agent (EvilStore).
	Evil []int
	// Disk mounts a tmpfs of this many bytes on a host's data directory.
	Disk map[int]int64
	// OriginRate, if set, caps the loopback origin (bytes/s, all
	// responses together) instead of LoopbackEnv.OriginRate; the testbed's
	// origin is capped by its link (tc).
	OriginRate int64
}

func (s Setup) agentSets(host int) map[string]string {
	out := map[string]string{}
	for k, v := range s.Agent {
		out[k] = v
	}
	for k, v := range s.HostAgent[host] {
		out[k] = v
	}
	return out
}

func (s Setup) evil(host int) bool {
	for _, h := range s.Evil {
		if h == host {
			return true
		}
	}
	return false
}

// RegisterRoles registers the roles the testbed's processes play for the
// chaos suite (the client, the malicious agent). Call it before
// testbed.RoleMain.
func RegisterRoles() {
	testbed.RegisterRole(FetchRole, fetchRole)
	testbed.RegisterRole(EvilAgentRole, evilAgentRole)
}

// applySets loads dotted overrides into cfg (a config struct with yaml
// tags, holding its defaults) the way the binaries load a config file,
// so that unknown keys are errors here too.
func applySets(cfg any, sets map[string]string, dir string) error {
	if len(sets) == 0 {
		return nil
	}
	m := map[string]any{}
	if err := testbed.ApplySets(m, sets); err != nil {
		return err
	}
	b, err := yaml.Marshal(m)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "sets-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	f.Close()
	return cliconfig.Load(cfg, f.Name(), nil)
}

// mountTmpfs mounts a tmpfs of size bytes on dir (created if needed).
func mountTmpfs(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// unmount detaches the mount on dir (lazily: a process still using it
// cannot keep it), ignoring "not mounted".
func unmount(dir string) error {
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && !os.IsNotExist(err) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// mounted reports whether dir is a mount point (its device differs from
// its parent's).
func mounted(dir string) bool {
	var a, b syscall.Stat_t
	if syscall.Stat(dir, &a) != nil || syscall.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// getState reads /api/v1/state.
func getState(ctx context.Context, hc *http.Client, base string) (dashboard.State, error) {
	var st dashboard.State
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/state", nil)
	if err != nil {
		return st, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("supernode state: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
