package cdn

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// byteRange is one parsed "bytes=" range. Suffix ranges ("bytes=-n") have
// start -1 and end n; open ranges ("bytes=a-") have end -1.
type byteRange struct {
	start, end int64
}

// parseRange parses a single-range Range header value.
func parseRange(s string) (byteRange, error) {
	bad := func(why string) (byteRange, error) {
		return byteRange{}, fmt.Errorf("range %q: %s: %w", printable(s, 80), why, errdefs.ErrInvalid)
	}
	spec, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes=")
	if !ok {
		return bad("want bytes=<start>-[<end>] or bytes=-<suffix>")
	}
	if strings.Contains(spec, ",") {
		return bad("multiple ranges are not supported")
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return bad("no dash")
	}
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	num := func(x string) (int64, bool) {
		if x == "" || strings.TrimLeft(x, "0123456789") != "" {
			return 0, false
		}
		v, err := strconv.ParseInt(x, 10, 64)
		return v, err == nil
	}
	if a == "" {
		n, ok := num(b)
		if !ok || n == 0 {
			return bad("bad suffix length")
		}
		return byteRange{start: -1, end: n}, nil
	}
	start, ok := num(a)
	if !ok {
		return bad("bad start")
	}
	if b == "" {
		return byteRange{start: start, end: -1}, nil
	}
	end, ok := num(b)
	if !ok || end < start {
		return bad("bad end")
	}
	return byteRange{start: start, end: end}, nil
}

// resolve returns the absolute first and last byte of r within content of
// total bytes (total -1 when unknown; last -1 when it cannot be known).
func (r byteRange) resolve(total int64) (first, last int64, err error) {
	switch {
	case r.start < 0: // suffix
		if total < 0 {
			return 0, 0, fmt.Errorf("suffix range on content of unknown length: %w", errdefs.ErrInvalid)
		}
		first = max(total-r.end, 0)
		last = total - 1
	default:
		first, last = r.start, r.end
		if total >= 0 {
			if first >= total {
				return 0, 0, fmt.Errorf("range starts at %d, content has %d bytes: %w", first, total, errdefs.ErrInvalid)
			}
			if last < 0 || last >= total {
				last = total - 1
			}
		}
	}
	return first, last, nil
}

// contentRange is a parsed Content-Range header: "bytes first-last/total"
// with total -1 for "*".
type contentRange struct {
	first, last, total int64
}

func parseContentRange(s string) (contentRange, error) {
	bad := fmt.Errorf("content-range %q: %w", printable(s, 80), errdefs.ErrInvalid)
	spec, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return contentRange{}, bad
	}
	rng, tot, ok := strings.Cut(spec, "/")
	if !ok {
		return contentRange{}, bad
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return contentRange{}, bad
	}
	var cr contentRange
	var err1, err2, err3 error
	cr.first, err1 = strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	cr.last, err2 = strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	cr.total = -1
	if t := strings.TrimSpace(tot); t != "*" {
		if cr.total, err3 = strconv.ParseInt(t, 10, 64); err3 == nil && cr.total < 0 {
			err3 = fmt.Errorf("negative total")
		}
	}
	// last < MaxInt64 keeps last-first+1 from overflowing.
	if err1 != nil || err2 != nil || err3 != nil || cr.first < 0 || cr.last < cr.first || cr.last == math.MaxInt64 || (cr.total >= 0 && cr.last >= cr.total) {
		return contentRange{}, bad
	}
	return cr, nil
}
