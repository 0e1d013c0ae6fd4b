package piece

import (
	"errors"
	"testing"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestSizeFor(t *testing.T) {
	for _, tc := range []struct {
		length int64
		want   int32
	}{
		{-1, DefaultSize},
		{0, MinSize},
		{64 << 20, MinSize},
		{65 << 20, 2 * MinSize},
		{256 << 20, 1 << 20},
		{257 << 20, 2 << 20},
		{1 << 30, 4 << 20},
		{100 << 30, MaxSize},
	} {
		if got := SizeFor(tc.length); got != tc.want {
			t.Errorf("SizeFor(%d) = %d, want %d", tc.length, got, tc.want)
		}
	}
}

func TestCountAndRange(t *testing.T) {
	if c := Count(10, 4); c != 3 {
		t.Fatalf("Count = %d", c)
	}
	if off, size := Range(2, 10, 4); off != 8 || size != 2 {
		t.Fatalf("Range(2) = %d,%d", off, size)
	}
	if off, size := Range(3, 10, 4); off != 12 || size != 0 {
		t.Fatalf("Range past end = %d,%d", off, size)
	}
	if c := Count(0, 4); c != 0 {
		t.Fatalf("Count(0) = %d", c)
	}
}

func TestTaskID(t *testing.T) {
	d := "sha256:" + "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	id, err := TaskID("http://a/x", d, nil, "")
	if err != nil || id != d {
		t.Fatalf("digest task id = %q, %v", id, err)
	}
	a, _ := TaskID("HTTP://Example.com:80/f?b=2&a=1&sig=x#frag", "", []string{"sig"}, "")
	b, _ := TaskID("http://example.com/f?a=1&b=2", "", nil, "")
	if a != b || ValidTaskID(a) != nil {
		t.Fatalf("normalized ids differ: %s %s", a, b)
	}
	c, _ := TaskID("http://example.com/f?a=1&b=2", "", nil, "bytes=0-9")
	if c == b {
		t.Fatal("range must change the task id")
	}
	for _, bad := range []string{"", "ftp://x/y", "http:///nohost", "::"} {
		if _, err := TaskID(bad, "", nil, ""); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("TaskID(%q) err = %v", bad, err)
		}
	}
	if _, err := TaskID("http://a/b", "sha256:short", nil, ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Error("bad digest accepted")
	}
	for _, bad := range []string{"../x", "sha256:" + d[7:] + "0", "SHA256:" + d[7:]} {
		if ValidTaskID(bad) == nil {
			t.Errorf("ValidTaskID(%q) accepted", bad)
		}
	}
}

func TestBitmap(t *testing.T) {
	var b Bitmap
	for _, n := range []int{0, 3, 9, 15} {
		b.Set(n)
	}
	if !b.Has(9) || b.Has(8) || b.Has(100) || b.Count() != 4 {
		t.Fatalf("bitmap %08b", b)
	}
	var o Bitmap
	o.Set(3)
	if got := b.CountMissingFrom(o); got != 3 {
		t.Fatalf("CountMissingFrom = %d", got)
	}
	var f Bitmap
	for i := 0; i < 11; i++ {
		f.Set(i)
	}
	if !f.Full(11) || f.Full(12) || !f.Full(8) {
		t.Fatal("Full wrong")
	}
	f.Clear(10)
	if f.Full(11) {
		t.Fatal("Clear did not clear")
	}
}
