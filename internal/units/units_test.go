package units

import "testing"

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"123", 123, true}, {"64MiB", 64 << 20, true}, {"1.5g", 3 << 29, true},
		{"10MB", 10_000_000, true}, {"200m", 200 << 20, true}, {" 4 KiB ", 4096, true},
		{"", 0, false}, {"-1", 0, false}, {"abc", 0, false}, {"1e30g", 0, false}, {"99999999999999999999", 0, false},
	} {
		got, err := ParseBytes(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseBytes(%q) = %d, %v", tc.in, got, err)
		}
	}
	if s := Format(256 << 20); s != "256MiB" {
		t.Errorf("Format = %s", s)
	}
	if s := Format(1536 << 20); s != "1.5GiB" {
		t.Errorf("Format = %s", s)
	}
}
