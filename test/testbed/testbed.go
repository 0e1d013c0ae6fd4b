// Package testbed is the multi-host testbed (DESIGN.md §4, issue #4): N
// hosts as network namespaces hanging off a Linux bridge that lives in a
// namespace of its own, an origin host and a supernode host, bandwidth caps
// in both directions of every host's link with `tc … tbf`, and real
// processes (origin, supernode, one `dfget daemon` per host, clients)
// running inside the namespaces. Root only.
//
// Isolation: addresses come from Config.Subnet (10.77.0.0/16 by default)
// and exist only inside the testbed's namespaces; no namespace has a
// default route, so no packet can leave the testbed. Nothing is created in
// the caller's namespace: veth pairs are created directly between the
// bridge namespace and a host namespace.
//
// Lifetime: New removes stale testbeds of earlier runs (namespaces named
// Config.Prefix-<id>-… whose owner no longer holds its lock file, with the
// processes inside them and their work directories) before creating its
// own; Close stops every process the testbed started, deletes every
// namespace (which takes the veths, the bridge and the qdiscs with it) and
// removes the work directory. Callers bound everything with a context;
// Close bounds itself.
//
// Layout (hosts are 1-based):
//
//	<prefix>-<id>-br   bridge namespace: bridge br0, the bridge ends of the veths
//	<prefix>-<id>-o    origin host,    10.77.0.1, veth eth0 ↔ br side "o"
//	<prefix>-<id>-sn   supernode host, 10.77.0.2, veth eth0 ↔ br side "sn"
//	<prefix>-<id>-h<i> host i,         10.77.<1+(i-1)/250>.<1+(i-1)%250>, eth0 ↔ "h<i>"
//
// Caps: tbf on eth0 (what the host sends) and on its bridge end (what the
// host receives), both at the host's cap.
package testbed

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes a testbed.
type Config struct {
	// Prefix starts every namespace name (and the lock and work directory
	// names); stale testbeds are found by it. Default "pftb". At most 8
	// characters of [a-z0-9].
	Prefix string
	// Hosts is the number of downloading hosts (1..1000).
	Hosts int
	// HostCapMbit caps each host in both directions (0: no cap).
	HostCapMbit float64
	// OriginCapMbit caps the origin host in both directions (0: no cap).
	OriginCapMbit float64
	// SupernodeCapMbit caps the supernode host in both directions (0: no cap).
	SupernodeCapMbit float64
	// Subnet holds every address of the testbed (a private /16 or larger;
	// default 10.77.0.0/16). It is used only inside the namespaces.
	Subnet netip.Prefix
	// WorkDir is where the run's directory is made (default os.TempDir()).
	WorkDir string
	// Keep leaves the work directory (logs, data) in place at Close.
	Keep bool
	// Log receives progress lines (nil: discarded).
	Log io.Writer
}

// Defaults.
const (
	DefaultPrefix = "pftb"
	bridgeName    = "br0"
	hostIf        = "eth0"
	// lockDir holds one lock file per live testbed; a testbed whose lock
	// is not held by a live process is stale.
	lockDir = "/run/pouchfly-testbed"
	// cmdTimeout bounds each ip/tc command.
	cmdTimeout = 20 * time.Second
)

// DefaultSubnet is the testbed's default private range.
var DefaultSubnet = netip.MustParsePrefix("10.77.0.0/16")

// Host is one machine of the testbed.
type Host struct {
	// Name is "origin", "supernode" or "h<i>".
	Name string
	// NS is the network namespace (under /run/netns).
	NS string
	// IP is the host's address.
	IP string
	// Dir is the host's directory under the run's work directory (data,
	// sockets, logs).
	Dir string
	// CapMbit is the host's cap in both directions (0: none).
	CapMbit float64
	// brIf is the name of the bridge end of the host's veth.
	brIf string
}

// Testbed is a running testbed. Its methods are safe for concurrent use.
type Testbed struct {
	cfg Config
	// ID identifies this run (in names).
	ID string
	// Dir is the run's work directory.
	Dir string
	// BridgeNS is the bridge's namespace.
	BridgeNS string
	// Origin and Supernode are the two service hosts.
	Origin, Supernode *Host
	// Hosts are the downloading hosts, Hosts[0] is h1.
	Hosts []*Host

	lock *os.File
	mu   sync.Mutex
	nss  []string // created namespaces, in creation order
	// procs are the processes started, for Close.
	procs     []*Proc
	clientSeq int
	closed    bool
}

func (c *Config) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if len(c.Prefix) > 8 || strings.Trim(c.Prefix, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		return fmt.Errorf("testbed: prefix %q: at most 8 characters of [a-z0-9]", c.Prefix)
	}
	if c.Hosts < 1 || c.Hosts > 1000 {
		return fmt.Errorf("testbed: hosts must be 1..1000, not %d", c.Hosts)
	}
	if c.HostCapMbit < 0 || c.OriginCapMbit < 0 || c.SupernodeCapMbit < 0 {
		return fmt.Errorf("testbed: caps must not be negative")
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 16 || !c.Subnet.Addr().IsPrivate() {
		return fmt.Errorf("testbed: subnet %v must be a private IPv4 /16 or larger", c.Subnet)
	}
	c.Subnet = c.Subnet.Masked()
	if c.WorkDir == "" {
		c.WorkDir = os.TempDir()
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// addr returns the subnet's address with the given 3rd and 4th octets.
func (c *Config) addr(o3, o4 int) string {
	b := c.Subnet.Addr().As4()
	b[2] += byte(o3)
	b[3] = byte(o4)
	return netip.AddrFrom4(b).String()
}

// hostAddr is host i's (1-based) address.
func (c *Config) hostAddr(i int) string { return c.addr(1+(i-1)/250, 1+(i-1)%250) }

// CheckPrereqs says why the testbed cannot run here (nil when it can):
// root, ip and tc from iproute2, network namespace support.
func CheckPrereqs() error {
	if os.Geteuid() != 0 {
		return errors.New("the testbed needs root (network namespaces, veth, tc)")
	}
	for _, b := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("the testbed needs %s (Debian package iproute2): %w", b, err)
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("no network namespace support: %w", err)
	}
	return nil
}

// New cleans stale testbeds with cfg.Prefix and builds a new one. On error
// everything made so far is removed.
func New(ctx context.Context, cfg Config) (tb *Testbed, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := CheckPrereqs(); err != nil {
		return nil, err
	}
	if removed, err := CleanStale(ctx, cfg.Prefix, cfg.Log); err != nil {
		return nil, fmt.Errorf("testbed: removing stale testbeds: %w", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(cfg.Log, "testbed: removed stale namespaces %s\n", strings.Join(removed, " "))
	}
	var idb [3]byte
	rand.Read(idb[:])
	tb = &Testbed{cfg: cfg, ID: hex.EncodeToString(idb[:])}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	// The lock is taken under a temporary name and renamed into place, so
	// a concurrent CleanStale never sees it unlocked.
	tmp := filepath.Join(lockDir, ".tmp-"+cfg.Prefix+"-"+tb.ID)
	tb.lock, err = os.OpenFile(tmp, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(tb.lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		tb.lock.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("testbed: lock %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, tb.lockPath(tb.ID)); err != nil {
		tb.lock.Close()
		os.Remove(tmp)
		return nil, err
	}
	defer func() {
		if err != nil {
			tb.Close()
			tb = nil
		}
	}()
	tb.Dir, err = os.MkdirTemp(cfg.WorkDir, cfg.Prefix+"-"+tb.ID+"-")
	if err != nil {
		return tb, err
	}
	// The lock file names the work directory, so a later run can remove it.
	fmt.Fprintf(tb.lock, "pid %d\ndir %s\n", os.Getpid(), tb.Dir)
	if err := tb.build(ctx); err != nil {
		return tb, err
	}
	return tb, nil
}

func (tb *Testbed) lockPath(id string) string {
	return filepath.Join(lockDir, tb.cfg.Prefix+"-"+id+".lock")
}

// Config returns the testbed's configuration (with defaults filled in).
func (tb *Testbed) Config() Config { return tb.cfg }

func (tb *Testbed) nsName(suffix string) string {
	return tb.cfg.Prefix + "-" + tb.ID + "-" + suffix
}

// build creates the namespaces, the bridge, the veths, addresses and caps.
func (tb *Testbed) build(ctx context.Context) error {
	start := time.Now()
	tb.BridgeNS = tb.nsName("br")
	if err := tb.addNS(ctx, tb.BridgeNS); err != nil {
		return err
	}
	if err := tb.run(ctx, "ip", "-n", tb.BridgeNS, "link", "add", bridgeName, "type", "bridge"); err != nil {
		return err
	}
	// Forward at once: no STP listening delay, no aging surprises.
	if err := tb.run(ctx, "ip", "-n", tb.BridgeNS, "link", "set", bridgeName, "type", "bridge", "forward_delay", "0", "stp_state", "0"); err != nil {
		return err
	}
	// A switch runs no firewall: when br_netfilter is loaded, bridged
	// frames would otherwise go through the (empty) iptables hooks, at a
	// cost per packet that a real network does not charge the hosts.
	// Best effort (older iproute2 or kernels lack the options).
	// Both the bridge's options and the namespace's sysctls must be off.
	_ = tb.run(ctx, "ip", "-n", tb.BridgeNS, "link", "set", bridgeName, "type", "bridge",
		"nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0")
	_ = tb.run(ctx, "ip", "netns", "exec", tb.BridgeNS, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0",
		"net.bridge.bridge-nf-call-ip6tables=0", "net.bridge.bridge-nf-call-arptables=0")
	if err := tb.run(ctx, "ip", "-n", tb.BridgeNS, "link", "set", bridgeName, "up"); err != nil {
		return err
	}
	if err := tb.run(ctx, "ip", "-n", tb.BridgeNS, "link", "set", "lo", "up"); err != nil {
		return err
	}
	mk := func(name, suffix, ip string, capMbit float64) (*Host, error) {
		h := &Host{Name: name, NS: tb.nsName(suffix), IP: ip, Dir: filepath.Join(tb.Dir, name), CapMbit: capMbit, brIf: suffix}
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return nil, err
		}
		return h, tb.addHost(ctx, h)
	}
	var err error
	if tb.Origin, err = mk("origin", "o", tb.cfg.addr(0, 1), tb.cfg.OriginCapMbit); err != nil {
		return err
	}
	if tb.Supernode, err = mk("supernode", "sn", tb.cfg.addr(0, 2), tb.cfg.SupernodeCapMbit); err != nil {
		return err
	}
	for i := 1; i <= tb.cfg.Hosts; i++ {
		h, err := mk(fmt.Sprintf("h%d", i), fmt.Sprintf("h%d", i), tb.cfg.hostAddr(i), tb.cfg.HostCapMbit)
		if err != nil {
			return err
		}
		tb.Hosts = append(tb.Hosts, h)
	}
	fmt.Fprintf(tb.cfg.Log, "testbed %s: %d hosts + origin + supernode on bridge %s/%s, subnet %v, caps host %s origin %s supernode %s (%.1fs)\n",
		tb.ID, tb.cfg.Hosts, tb.BridgeNS, bridgeName, tb.cfg.Subnet,
		fmtCap(tb.cfg.HostCapMbit), fmtCap(tb.cfg.OriginCapMbit), fmtCap(tb.cfg.SupernodeCapMbit), time.Since(start).Seconds())
	return nil
}

func fmtCap(m float64) string {
	if m <= 0 {
		return "none"
	}
	return strconv.FormatFloat(m, 'f', -1, 64) + "Mbit/s"
}

// addNS creates a namespace and records it for Close.
func (tb *Testbed) addNS(ctx context.Context, ns string) error {
	if err := tb.run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	tb.mu.Lock()
	tb.nss = append(tb.nss, ns)
	tb.mu.Unlock()
	return nil
}

// addHost creates h's namespace, its veth to the bridge, its address
// (no default route: only the subnet's connected route) and its caps.
func (tb *Testbed) addHost(ctx context.Context, h *Host) error {
	if err := tb.addNS(ctx, h.NS); err != nil {
		return err
	}
	bits := strconv.Itoa(tb.cfg.Subnet.Bits())
	cmds := [][]string{
		{"ip", "-n", tb.BridgeNS, "link", "add", h.brIf, "type", "veth", "peer", "name", hostIf, "netns", h.NS},
		{"ip", "-n", tb.BridgeNS, "link", "set", h.brIf, "master", bridgeName},
		{"ip", "-n", tb.BridgeNS, "link", "set", h.brIf, "up"},
		{"ip", "-n", h.NS, "link", "set", "lo", "up"},
		{"ip", "-n", h.NS, "addr", "add", h.IP + "/" + bits, "dev", hostIf},
		{"ip", "-n", h.NS, "link", "set", hostIf, "up"},
	}
	if h.CapMbit > 0 {
		cmds = append(cmds,
			tbfCmd(h.NS, hostIf, h.CapMbit),        // what the host sends
			tbfCmd(tb.BridgeNS, h.brIf, h.CapMbit)) // what the host receives
	}
	for _, c := range cmds {
		if err := tb.run(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	// IPv6 is not used; turning it off keeps router solicitations and DAD
	// off the bridge. Best effort.
	_ = tb.run(ctx, "ip", "netns", "exec", h.NS, "sysctl", "-q", "-w",
		"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return nil
}

// tbfCmd is a token-bucket cap on dev's egress. The bucket holds 5 ms at
// the rate (at least 64 KiB, so a full GSO packet fits), the queue 50 ms.
func tbfCmd(ns, dev string, mbit float64) []string {
	burst := max(int64(mbit*125000*0.005), 64<<10)
	return []string{"tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatFloat(mbit, 'f', -1, 64) + "mbit",
		"burst", strconv.FormatInt(burst, 10), "latency", "50ms"}
}

// run runs an ip/tc command, bounded by cmdTimeout.
func (tb *Testbed) run(ctx context.Context, name string, args ...string) error {
	_, err := runCmd(ctx, name, args...)
	return err
}

func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Close stops every process the testbed started (SIGTERM, then SIGKILL
// after a few seconds), kills whatever else still runs inside its
// namespaces, deletes the namespaces and removes the work directory
// (unless Config.Keep). It is bounded in time and safe to call twice.
func (tb *Testbed) Close() error {
	tb.mu.Lock()
	if tb.closed {
		tb.mu.Unlock()
		return nil
	}
	tb.closed = true
	procs := tb.procs
	nss := tb.nss
	tb.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(5 * time.Second) }()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Hosts first, then the bridge (reverse creation order).
	for i := len(nss) - 1; i >= 0; i-- {
		if err := removeNS(ctx, nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if tb.Dir != "" && !tb.cfg.Keep {
		if err := os.RemoveAll(tb.Dir); err != nil {
			errs = append(errs, err)
		}
	} else if tb.Dir != "" {
		fmt.Fprintf(tb.cfg.Log, "testbed: kept %s\n", tb.Dir)
	}
	if tb.lock != nil {
		os.Remove(tb.lockPath(tb.ID))
		tb.lock.Close()
	}
	return errors.Join(errs...)
}

// removeNS kills the processes left in ns (by their IDs, as listed by
// `ip netns pids`), waits for them to go, and deletes the namespace.
func removeNS(ctx context.Context, ns string) error {
	for attempt := 0; ; attempt++ {
		pids := nsPIDs(ctx, ns)
		if len(pids) == 0 {
			break
		}
		if attempt >= 50 { // 5 s
			return fmt.Errorf("testbed: processes %v still in %s", pids, ns)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := runCmd(ctx, "ip", "netns", "del", ns); err != nil {
		if _, serr := os.Stat(filepath.Join("/run/netns", ns)); os.IsNotExist(serr) {
			return nil
		}
		return err
	}
	return nil
}

// nsPIDs lists the processes in ns.
func nsPIDs(ctx context.Context, ns string) []int {
	out, err := runCmd(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Namespaces lists the network namespaces whose names start with
// prefix + "-".
func Namespaces(ctx context.Context, prefix string) ([]string, error) {
	out, err := runCmd(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var nss []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			nss = append(nss, f[0])
		}
	}
	return nss, nil
}

// CleanStale removes the testbeds named prefix-<id>-… whose owner is gone
// (its lock file is not held): the processes inside their namespaces, the
// namespaces (with their veths, bridge and qdiscs), the work directory the
// lock file names and the lock file. Live testbeds of concurrent runs are
// left alone. It returns the namespaces removed.
func CleanStale(ctx context.Context, prefix string, log io.Writer) ([]string, error) {
	if log == nil {
		log = io.Discard
	}
	nss, err := Namespaces(ctx, prefix)
	if err != nil {
		return nil, err
	}
	byID := map[string][]string{}
	for _, ns := range nss {
		rest := strings.TrimPrefix(ns, prefix+"-")
		id, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		byID[id] = append(byID[id], ns)
	}
	// Lock files of dead runs without namespaces left (a crash between
	// the lock and the first namespace) are stale too.
	if ents, err := os.ReadDir(lockDir); err == nil {
		for _, e := range ents {
			if id, ok := strings.CutSuffix(strings.TrimPrefix(e.Name(), prefix+"-"), ".lock"); ok && strings.HasPrefix(e.Name(), prefix+"-") {
				if _, seen := byID[id]; !seen {
					byID[id] = nil
				}
			}
		}
	}
	var removed []string
	var errs []error
	for id, list := range byID {
		lockPath := filepath.Join(lockDir, prefix+"-"+id+".lock")
		f, err := os.OpenFile(lockPath, os.O_RDWR, 0)
		var dir string
		if err == nil {
			if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
				f.Close()
				continue // a live run holds it
			}
			b, _ := io.ReadAll(f)
			for _, l := range strings.Split(string(b), "\n") {
				if d, ok := strings.CutPrefix(l, "dir "); ok {
					dir = d
				}
			}
		}
		// Host namespaces before the bridge's.
		for _, ns := range list {
			if !strings.HasSuffix(ns, "-br") {
				if err := removeNS(ctx, ns); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, ns)
				}
			}
		}
		for _, ns := range list {
			if strings.HasSuffix(ns, "-br") {
				if err := removeNS(ctx, ns); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, ns)
				}
			}
		}
		if dir != "" && strings.Contains(filepath.Base(dir), prefix+"-"+id+"-") {
			os.RemoveAll(dir)
		}
		if f != nil {
			os.Remove(lockPath)
			f.Close()
		}
	}
	return removed, errors.Join(errs...)
}

// procStatField returns field i (0: user … 6: softirq) of /proc/stat's
// cpu line in seconds.
func procStatField(i int) (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	v, err := strconv.ParseUint(f[1+i], 10, 64)
	if err != nil {
		return 0, err
	}
	return float64(v) / 100, nil
}
