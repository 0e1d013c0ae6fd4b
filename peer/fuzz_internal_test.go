package peer

import "testing"

// FuzzParseContentRange reads an origin's Content-Range when the agent
// goes back to source with a Range.
func FuzzParseContentRange(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		start, total, ok := parseContentRange(s)
		if !ok {
			return
		}
		if start < 0 {
			t.Fatalf("parseContentRange(%q) start %d", s, start)
		}
		if total >= 0 && start >= total && total > 0 {
			t.Fatalf("parseContentRange(%q) = %d/%d: start beyond the total", s, start, total)
		}
	})
}
