package quota

import (
	"strings"
	"testing"
)

// FuzzParseSpec reads --disk-quota values (one per line): it never
// panics, and what it accepts prints (Values) to rules that read back to
// the same decisions.
func FuzzParseSpec(f *testing.F) {
	f.Fuzz(func(t *testing.T, in string, dest string) {
		values := strings.Split(in, "\n")
		s, err := ParseSpec(values)
		if err != nil {
			return
		}
		_ = s.String()
		back, err := ParseSpec(s.Values())
		if err != nil {
			t.Fatalf("ParseSpec(%q) printed %q, which does not read back: %v", values, s.Values(), err)
		}
		for _, d := range []string{dest, "/", "/data", "/var/lib/x"} {
			n1, ok1 := s.For(d)
			n2, ok2 := back.For(d)
			// Values prints exact sizes (seed lossy-values-7000000 once
			// read back as 6.7MiB), so a stored Spec reads back the same.
			if n1 != n2 || ok1 != ok2 {
				t.Fatalf("ParseSpec(%q).For(%q) = %d,%v but after Values %q: %d,%v", values, d, n1, ok1, s.Values(), n2, ok2)
			}
			if ok1 && n1 < MinSize {
				t.Fatalf("ParseSpec(%q).For(%q) = %d, below MinSize", values, d, n1)
			}
			if s.Exact(d) != back.Exact(d) {
				t.Fatalf("Exact(%q) changed after Values", d)
			}
		}
	})
}
