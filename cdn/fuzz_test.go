package cdn

import "testing"

// FuzzParseRange reads a Range a client asked for (it reaches the CDN in
// a RegisterTask) and resolves it against content of any length.
func FuzzParseRange(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string, total int64) {
		r, err := parseRange(s)
		if err != nil {
			return
		}
		if r.start < -1 || (r.start >= 0 && r.end >= 0 && r.end < r.start) || (r.start < 0 && r.end <= 0) {
			t.Fatalf("parseRange(%q) = %+v", s, r)
		}
		if total < -1 {
			total = -1
		}
		first, last, err := r.resolve(total)
		if err != nil {
			return
		}
		if first < 0 {
			t.Fatalf("%q on %d bytes: first %d", s, total, first)
		}
		if total >= 0 && (first >= total && total > 0 || last >= total) {
			t.Fatalf("%q on %d bytes: %d-%d outside the content", s, total, first, last)
		}
		if last >= 0 && last < first {
			t.Fatalf("%q on %d bytes: last %d before first %d", s, total, last, first)
		}
	})
}

// FuzzParseContentRange reads an origin's Content-Range answer.
func FuzzParseContentRange(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		if cr.first < 0 || cr.last < cr.first || (cr.total >= 0 && cr.last >= cr.total) || cr.total < -1 {
			t.Fatalf("parseContentRange(%q) = %+v", s, cr)
		}
		if n := cr.last - cr.first + 1; n <= 0 {
			t.Fatalf("parseContentRange(%q) = %+v: length %d overflows", s, cr, n)
		}
	})
}
