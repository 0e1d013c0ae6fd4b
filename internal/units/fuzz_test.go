package units

import "testing"

// FuzzParseBytes reads sizes from flags and config files.
func FuzzParseBytes(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBytes(s)
		if err != nil {
			return
		}
		if n < 0 || n > 1<<62 {
			t.Fatalf("ParseBytes(%q) = %d", s, n)
		}
		// What Format prints reads back within its rounding (0.05 of a unit).
		back, err := ParseBytes(Format(n))
		if err != nil {
			t.Fatalf("Format(%d) = %q does not read back: %v", n, Format(n), err)
		}
		if d := back - n; d > n/20+1 || -d > n/20+1 {
			t.Fatalf("ParseBytes(Format(%d)) = %d", n, back)
		}
		if back, err := ParseBytes(FormatExact(n)); err != nil || back != n {
			t.Fatalf("FormatExact(%d) = %q reads back as %d, %v", n, FormatExact(n), back, err)
		}
		var b Bytes
		if err := b.UnmarshalText([]byte(s)); err != nil || int64(b) != n {
			t.Fatalf("UnmarshalText(%q) = %d, %v", s, b, err)
		}
	})
}
