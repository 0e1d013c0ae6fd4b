package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// clkTck is USER_HZ, the unit of /proc/stat and /proc/<pid>/stat times.
// It is 100 on every Linux architecture Go supports.
const clkTck = 100

// Machine describes the host the figures were measured on.
type Machine struct {
	NProc     int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	SHANI     bool   `json:"sha_ni"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	MemTotal  int64  `json:"mem_total_bytes"`
	DataDir   string `json:"data_dir"`
	DataFS    string `json:"data_fs"`
	Tmpfs     bool   `json:"data_on_tmpfs"`
	LoadAvg   string `json:"loadavg_at_start"`
	// SHA256Bps is crypto/sha256 on one goroutine over 256 MiB in memory.
	SHA256Bps float64 `json:"sha256_one_core_bytes_per_sec"`
	// PageCacheFresh and PageCacheRecycled time writing 1 GiB into a new
	// file in the data dir (page cache only, no fsync): first while the
	// page cache grows, then again right after deleting that file (its
	// pages are reused). Both are CPU seconds of this process per GB
	// written; on this kind of VM the first can be several times the
	// second, and it is what a downloading peer pays in pwrite.
	PageCacheFreshCPUPerGB    float64 `json:"page_cache_write_fresh_cpu_seconds_per_gb"`
	PageCacheRecycledCPUPerGB float64 `json:"page_cache_write_recycled_cpu_seconds_per_gb"`
	BalloonFreePageReporting  bool    `json:"virtio_balloon_free_page_reporting"`
	// ColdTouchUsPerPage is the cost of reading one byte per 4 KiB page of
	// 256 MiB of resident memory left idle for 5 s (hot: HotTouch). On a VM
	// whose host reclaims idle guest memory it is microseconds per page.
	ColdTouchUsPerPage float64 `json:"cold_touch_us_per_page"`
	HotTouchUsPerPage  float64 `json:"hot_touch_us_per_page"`
}

var touchSink byte

// touchProbe measures hot and cold (5 s idle) page touches.
func touchProbe() (hot, cold float64) {
	const n = 256 << 20
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	touch := func() float64 {
		t := time.Now()
		var s byte
		for i := 0; i < n; i += 4096 {
			s += b[i]
		}
		touchSink += s
		return float64(time.Since(t).Microseconds()) / (n / 4096)
	}
	hot = touch()
	time.Sleep(5 * time.Second)
	cold = touch()
	return hot, cold
}

// pageCacheProbe writes 1 GiB twice (see Machine).
func pageCacheProbe(dir string) (fresh, recycled float64) {
	const n = 1 << 30
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	one := func(name string, keep bool) float64 {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return 0
		}
		c0 := selfCPU()
		for w := 0; w < n; w += len(buf) {
			if _, err := f.Write(buf); err != nil {
				break
			}
		}
		c := selfCPU() - c0
		f.Close()
		if !keep {
			os.Remove(f.Name())
		}
		return c / (float64(n) / 1e9)
	}
	syncFS(dir)
	fresh = one("probe-1", true)
	os.Remove(filepath.Join(dir, "probe-1"))
	recycled = one("probe-2", false)
	return fresh, recycled
}

// balloonReporting reports whether a virtio balloon with free page
// reporting (feature bit 5) is bound.
func balloonReporting() bool {
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*")
	for _, d := range devs {
		id, _ := os.ReadFile(filepath.Join(d, "device"))
		feat, _ := os.ReadFile(filepath.Join(d, "features"))
		if strings.TrimSpace(string(id)) == "0x0005" && len(feat) > 5 && feat[5] == '1' {
			return true
		}
	}
	return false
}

// sha256Speed hashes 256 MiB of zeros in 1 MiB writes, best of 3.
func sha256Speed() float64 {
	buf := make([]byte, 1<<20)
	best := 0.0
	for range 3 {
		h := sha256.New()
		t := time.Now()
		for range 256 {
			h.Write(buf)
		}
		h.Sum(nil)
		if v := float64(256<<20) / time.Since(t).Seconds(); v > best {
			best = v
		}
	}
	return best
}

// syncFS flushes the filesystem holding dir (syncfs), so the dirty pages
// of earlier phases are not written back during a measured download.
func syncFS(dir string) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	unix.Syncfs(int(f.Fd()))
}

// busyCores samples the machine's busy cores over d (load from other
// users of the machine while the benchmark idles).
func busyCores(d time.Duration) float64 {
	a := readCPUStat()
	time.Sleep(d)
	_, u := readCPUStat().sub(a)
	return u
}

func machineFacts(dataDir string) Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version(), DataDir: dataDir}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch k {
			case "model name":
				if m.CPUModel == "" {
					m.CPUModel = v
				}
			case "flags":
				for _, f := range strings.Fields(v) {
					if f == "sha_ni" {
						m.SHANI = true
					}
				}
			}
		}
	}
	if out, err := exec.Command("nproc").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			m.NProc = n
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = cstr(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemTotal = kb << 10
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	m.DataFS, m.Tmpfs = fsType(dataDir)
	m.SHA256Bps = sha256Speed()
	m.PageCacheFreshCPUPerGB, m.PageCacheRecycledCPUPerGB = pageCacheProbe(dataDir)
	m.BalloonFreePageReporting = balloonReporting()
	m.HotTouchUsPerPage, m.ColdTouchUsPerPage = touchProbe()
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// fsType names the filesystem holding path (statfs magic).
func fsType(path string) (string, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return "unknown (" + err.Error() + ")", false
	}
	switch uint64(st.Type) {
	case 0x01021994:
		return "tmpfs", true
	case 0xEF53:
		return "ext4", false // ext2/3/4 share the magic
	case 0x58465342:
		return "xfs", false
	case 0x9123683E:
		return "btrfs", false
	case 0x794c7630:
		return "overlayfs", false
	case 0x2FC12FC1:
		return "zfs", false
	}
	return fmt.Sprintf("0x%x", uint64(st.Type)), false
}

// cpuStat is the machine-wide CPU time from /proc/stat, in ticks.
type cpuStat struct{ busy, total uint64 }

func readCPUStat() cpuStat {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return cpuStat{}
	}
	var v [10]uint64
	for i := 1; i < len(f) && i <= 10; i++ {
		v[i-1], _ = strconv.ParseUint(f[i], 10, 64)
	}
	// user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already counted in user.
	idle := v[3] + v[4]
	busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return cpuStat{busy: busy, total: busy + idle}
}

// sub returns the busy CPU seconds between two samples and the
// utilisation (0..nproc).
func (c cpuStat) sub(prev cpuStat) (busySec float64, util float64) {
	busySec = float64(c.busy-prev.busy) / clkTck
	if d := c.total - prev.total; d > 0 {
		util = float64(c.busy-prev.busy) / float64(d) * float64(runtime.NumCPU())
	}
	return busySec, util
}

// selfCPU returns this process's user+system CPU seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// procCPU returns a process's user+system CPU seconds from /proc/<pid>/stat.
func procCPU(pid int) float64 {
	u, s := procCPUSplit(pid)
	return u + s
}

// procCPUSplit returns a process's user and system CPU seconds.
func procCPUSplit(pid int) (user, sys float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// Fields after the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, 0
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return float64(ut) / clkTck, float64(st) / clkTck
}

// procMem returns VmRSS and VmHWM of pid in bytes.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			hwm = kb << 10
		}
	}
	return rss, hwm, nil
}

// resetHWM resets a process's peak RSS to its current RSS (Linux ≥ 4.0).
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// waitQuiet waits up to d for the machine's other load to fall below a
// quarter of a core (the machine is shared), and returns the last sample.
func waitQuiet(ctx context.Context, d time.Duration) float64 {
	deadline := time.Now().Add(d)
	for {
		u := busyCores(500 * time.Millisecond)
		if u < 0.25 || time.Now().After(deadline) || ctx.Err() != nil {
			return u
		}
	}
}
