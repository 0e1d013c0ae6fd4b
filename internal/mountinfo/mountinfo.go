// Package mountinfo parses /proc/<pid>/mountinfo (proc(5)), for the
// engine's quota and lxcfs code, which must see the mounts of other mount
// namespaces too.
package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Entry is one line of /proc/<pid>/mountinfo.
type Entry struct {
	ID, Parent   int
	Major, Minor uint32
	Root         string // root of the mount within its filesystem
	MountPoint   string
	Options      string // per-mount options
	FSType       string
	Source       string
	SuperOptions string // per-superblock options (e.g. prjquota)
}

// Read parses a mountinfo file (proc(5)).
func Read(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		e, err := ParseLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// ParseLine parses one mountinfo line.
func ParseLine(line string) (Entry, error) {
	// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return Entry{}, fmt.Errorf("bad mountinfo line %q", line)
	}
	a, b := strings.Fields(pre), strings.Fields(post)
	if len(a) < 6 || len(b) < 2 {
		return Entry{}, fmt.Errorf("bad mountinfo line %q", line)
	}
	var e Entry
	e.ID, _ = strconv.Atoi(a[0])
	e.Parent, _ = strconv.Atoi(a[1])
	maj, min, _ := strings.Cut(a[2], ":")
	m1, _ := strconv.ParseUint(maj, 10, 32)
	m2, _ := strconv.ParseUint(min, 10, 32)
	e.Major, e.Minor = uint32(m1), uint32(m2)
	e.Root, e.MountPoint, e.Options = unescapeOctal(a[3]), unescapeOctal(a[4]), a[5]
	e.FSType, e.Source = b[0], unescapeOctal(b[1])
	if len(b) > 2 {
		e.SuperOptions = b[2]
	}
	return e, nil
}

// unescapeOctal undoes the kernel's \040-style escaping of spaces, tabs,
// newlines and backslashes in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// HasOption reports whether the comma-separated list opts holds name.
func HasOption(opts, name string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == name {
			return true
		}
	}
	return false
}

// At returns the topmost mount at path mp, if any.
func At(mounts []Entry, mp string) (Entry, bool) {
	var found Entry
	ok := false
	for _, m := range mounts { // later lines are mounted on top of earlier ones
		if m.MountPoint == mp {
			found, ok = m, true
		}
	}
	return found, ok
}
