package quota

import (
	"errors"
	"strings"
	"testing"
	"unsafe"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestParseSpec(t *testing.T) {
	const g, m = int64(1 << 30), int64(1 << 20)
	type want struct {
		dest string
		size int64 // 0: no quota
	}
	for _, tc := range []struct {
		name   string
		in     []string
		want   []want
		errSub string // non-empty: ParseSpec must fail with this in the message
	}{
		{name: "empty", in: nil, want: []want{{"/", 0}, {"/data", 0}}},
		{name: "bare", in: []string{"10g"}, want: []want{{"/", 10 * g}, {"/data", 10 * g}, {"/a/b", 10 * g}}},
		{name: "rootfs only", in: []string{"/=10g"}, want: []want{{"/", 10 * g}, {"/data", 0}}},
		{name: "volume only", in: []string{"/data=20g"}, want: []want{{"/", 0}, {"/data", 20 * g}, {"/data/", 20 * g}, {"/data2", 0}}},
		{name: "regex all", in: []string{".*=10g"}, want: []want{{"/", 10 * g}, {"/data", 10 * g}}},
		{name: "regex anchored", in: []string{"/data.*=1g"}, want: []want{{"/", 0}, {"/data", g}, {"/data2", g}, {"/x/data", 0}}},
		{name: "exact beats regex beats bare", in: []string{"5g", ".*/logs=2g", "/var/logs=1g"},
			want: []want{{"/", 5 * g}, {"/var/logs", g}, {"/srv/logs", 2 * g}, {"/data", 5 * g}}},
		{name: "order does not matter for specificity", in: []string{"/var/logs=1g", ".*=2g", "5g"},
			want: []want{{"/", 2 * g}, {"/var/logs", g}}},
		{name: "first regex wins", in: []string{"/a.*=1g", "/ab.*=2g"}, want: []want{{"/abc", g}}},
		{name: "zero exempts", in: []string{"10g", "/scratch=0"}, want: []want{{"/", 10 * g}, {"/scratch", 0}}},
		{name: "units", in: []string{"/a=64m", "/b=64MiB", "/c=4096k", "/d=1.5g"}, want: []want{{"/a", 64 * m}, {"/b", 64 * m}, {"/c", 4 * m}, {"/d", 3 * g / 2}}},
		{name: "dot is not a regex", in: []string{"/data.d=1g"}, want: []want{{"/data.d", g}, {"/dataxd", 0}}},
		{name: "spaces", in: []string{" /data = 1g ", ""}, want: []want{{"/data", g}}},
		{name: "bad size", in: []string{"10x"}, errSub: "bad size"},
		{name: "bad size with path", in: []string{"/data=lots"}, errSub: "bad size"},
		{name: "missing size", in: []string{"/data="}, errSub: "missing size"},
		{name: "negative", in: []string{"-1g"}, errSub: "bad size"},
		{name: "too small", in: []string{"/=1m"}, errSub: "below the minimum of 4MiB"},
		{name: "relative path", in: []string{"data=1g"}, errSub: "neither an absolute path"},
		{name: "empty key", in: []string{"=1g"}, errSub: "empty path"},
		{name: "bad regex", in: []string{"(.*=1g"}, errSub: "bad regular expression"},
		{name: "duplicate path", in: []string{"/data=1g", "/data/=2g"}, errSub: "given twice"},
		{name: "duplicate bare", in: []string{"1g", "2g"}, errSub: "already given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSpec(tc.in)
			if tc.errSub != "" {
				if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.errSub) {
					t.Fatalf("ParseSpec(%q) = %v, want ErrInvalid containing %q", tc.in, err, tc.errSub)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSpec(%q): %v", tc.in, err)
			}
			for _, w := range tc.want {
				got, ok := s.For(w.dest)
				if ok != (w.size > 0) || got != w.size {
					t.Errorf("For(%q) = %d, %v; want %d", w.dest, got, ok, w.size)
				}
			}
			// Values round-trip.
			s2, err := ParseSpec(s.Values())
			if err != nil {
				t.Fatalf("re-parse %q: %v", s.Values(), err)
			}
			for _, w := range tc.want {
				a, aok := s.For(w.dest)
				b, bok := s2.For(w.dest)
				if a != b || aok != bok {
					t.Errorf("round trip %q: For(%q) %d/%v vs %d/%v", s.Values(), w.dest, a, aok, b, bok)
				}
			}
		})
	}
}

func TestSpecString(t *testing.T) {
	s, err := ParseSpec([]string{"10g", ".*=1g", "/data=20g"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "/data=20GiB,10GiB,.*=1GiB"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if !s.Exact("/data/") || s.Exact("/") || s.Exact("/other") {
		t.Error("Exact")
	}
	if s.IsZero() {
		t.Error("IsZero on a non-empty spec")
	}
	var z Spec
	if !z.IsZero() {
		t.Error("zero Spec not IsZero")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Driver = "zfs"
	if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Validate(zfs) = %v", err)
	}
}

// The hand-written kernel structs must match the C layouts.
func TestKernelStructSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"fsxattr", unsafe.Sizeof(fsxattr{}), 28},
		{"if_dqblk", unsafe.Sizeof(ifDqblk{}), 72},
		{"if_dqinfo", unsafe.Sizeof(ifDqinfo{}), 24},
		{"fs_disk_quota", unsafe.Sizeof(fsDiskQuota{}), 112},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if off := unsafe.Offsetof(fsDiskQuota{}.RtbHardLimit); off != 72 {
		t.Errorf("fs_disk_quota.d_rtb_hardlimit at %d, want 72", off)
	}
	if qcmd(qSetQuota, prjQuota) != 0x80000802 {
		t.Errorf("QCMD(Q_SETQUOTA, PRJQUOTA) = %#x", qcmd(qSetQuota, prjQuota))
	}
}

func TestParseMountinfo(t *testing.T) {
	e, err := parseMountinfoLine(`36 35 98:0 /mnt1 /mnt\0402 rw,noatime master:1 - ext4 /dev/root rw,errors=continue,prjquota`)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != 36 || e.Parent != 35 || e.Major != 98 || e.Minor != 0 || e.MountPoint != "/mnt 2" || e.FSType != "ext4" || e.Source != "/dev/root" {
		t.Errorf("parsed %+v", e)
	}
	if !projectQuotaOption("ext4", e.SuperOptions) || projectQuotaOption("xfs", "rw,pqnoenforce") {
		t.Error("projectQuotaOption")
	}
	ov, err := parseMountinfoLine(`50 27 0:55 / /run/x/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/snap/5/fs,workdir=/snap/5/work`)
	if err != nil {
		t.Fatal(err)
	}
	if _, busy := busyOverlay([]mountEntry{ov}, "/snap/5"); !busy {
		t.Error("busyOverlay missed the upper dir")
	}
	if _, busy := busyOverlay([]mountEntry{ov}, "/snap/50"); busy {
		t.Error("busyOverlay matched a prefix sibling")
	}
}
