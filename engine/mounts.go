package engine

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// makeShared makes dir (pouchd's home) a shared mount, bind-mounting it
// onto itself first when it is not a mount point yet.
//
// Other processes on the host take copies of the whole mount table when
// they create a mount namespace (`ip netns exec`, unshare): on a host
// whose / is private, such a copy holds every quota filesystem that was
// mounted under the home at that moment, and its loop device stays busy
// until that process exits, so removing a container fails with EBUSY.
// Under a shared home, the unmounts pouchd does (quota filesystems,
// container rootfs, lxcfs) propagate to the copies that are slaves (ip
// netns exec makes its copy a slave), and they let go at once.
//
// The bind is made only when nothing is mounted under dir yet (a fresh
// home, or after a reboot): binding over live mounts would hide them from
// their owners. A home that is already a mount point is only made shared.
func makeShared(dir string) (changed bool, err error) {
	mps, err := mountPoints()
	if err != nil {
		return false, err
	}
	if !mps[dir] {
		for mp := range mps {
			if strings.HasPrefix(mp, dir+"/") {
				return false, fmt.Errorf("%s has mounts under it (%s) but is not a mount point itself; not making it shared", dir, mp)
			}
		}
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return false, fmt.Errorf("bind %s: %w", dir, err)
		}
		changed = true
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return changed, fmt.Errorf("make %s shared: %w", dir, err)
	}
	return changed, nil
}

// mountPoints lists the mount points of this mount namespace.
func mountPoints() (map[string]bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 {
			out[unescapeMount(f[4])] = true
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
