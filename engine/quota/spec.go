package quota

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// MinSize is the smallest disk quota accepted (4 MiB). The block-device
// driver holds the contents in an ext4 filesystem of its own; below a few
// MiB its metadata leaves almost nothing for files, so smaller values are
// refused for every driver alike. Zero is not a size but "no quota" (see
// ParseSpec).
const MinSize = 4 << 20

// regexMeta are the characters that make a --disk-quota key a regular
// expression rather than a path. A dot alone does not: "/data.d" is a path.
const regexMeta = `*+?()[]{}|^$\`

// Spec is a parsed set of --disk-quota values: which size applies to the
// container's rootfs ("/") and to each volume, by mount destination. The
// zero Spec limits nothing. A Spec is immutable and safe for concurrent use.
type Spec struct {
	values  []string         // normalized inputs, in order
	def     int64            // bare size; valid when hasDef
	hasDef  bool             //
	exact   map[string]int64 // cleaned destination → size
	regexps []regexRule      // in the order given
}

type regexRule struct {
	src  string
	re   *regexp.Regexp
	size int64
}

// ParseSpec reads PouchContainer's --disk-quota syntax. Each value is one of
//
//	SIZE          the rootfs and every volume ("10g")
//	/PATH=SIZE    the rootfs ("/=10g") or the volume mounted at PATH ("/data=20g")
//	REGEX=SIZE    every mount destination the regular expression matches in
//	              full (".*=10g": all of them, the rootfs included)
//
// A key is a regular expression when it contains one of * + ? ( ) [ ] { } | ^ $ \
// and a path otherwise (it must then be absolute). Sizes read like docker's
// (binary k, m, g, t; internal/units.ParseBytes), at least MinSize; "0"
// means "no quota" for that key, so `10g` with `/scratch=0` limits
// everything but /scratch. Several values combine and the most specific
// wins: an exact path, then the first matching regular expression, then
// the bare size. A path or a bare size given twice, a malformed size or
// regular expression is an error wrapping errdefs.ErrInvalid.
func ParseSpec(values []string) (Spec, error) {
	var s Spec
	for _, raw := range values {
		v := strings.TrimSpace(raw)
		if v == "" {
			continue
		}
		key, sizeStr, hasKey := cutLast(v, "=")
		if !hasKey {
			size, err := parseSize(v, v)
			if err != nil {
				return Spec{}, err
			}
			if s.hasDef {
				return Spec{}, fmt.Errorf("disk quota %q: a size for all mounts was already given: %w", v, errdefs.ErrInvalid)
			}
			s.def, s.hasDef = size, true
			s.values = append(s.values, units.FormatExact(size))
			continue
		}
		key = strings.TrimSpace(key)
		size, err := parseSize(v, sizeStr)
		if err != nil {
			return Spec{}, err
		}
		switch {
		case key == "":
			return Spec{}, fmt.Errorf("disk quota %q: empty path before '=': want SIZE, /PATH=SIZE or REGEX=SIZE: %w", v, errdefs.ErrInvalid)
		case strings.ContainsAny(key, regexMeta):
			re, err := regexp.Compile("^(?:" + key + ")$")
			if err != nil {
				return Spec{}, fmt.Errorf("disk quota %q: bad regular expression %q: %v: %w", v, key, err, errdefs.ErrInvalid)
			}
			s.regexps = append(s.regexps, regexRule{src: key, re: re, size: size})
		case !strings.HasPrefix(key, "/"):
			return Spec{}, fmt.Errorf("disk quota %q: %q is neither an absolute path nor a regular expression: %w", v, key, errdefs.ErrInvalid)
		default:
			key = path.Clean(key)
			if s.exact == nil {
				s.exact = map[string]int64{}
			}
			if _, dup := s.exact[key]; dup {
				return Spec{}, fmt.Errorf("disk quota %q: path %s given twice: %w", v, key, errdefs.ErrInvalid)
			}
			s.exact[key] = size
		}
		s.values = append(s.values, key+"="+units.FormatExact(size))
	}
	return s, nil
}

// cutLast splits s around the last sep (a regular expression may hold '=').
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func parseSize(value, s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("disk quota %q: missing size: %w", value, errdefs.ErrInvalid)
	}
	n, err := units.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("disk quota %q: bad size %q (want e.g. 512m, 10g): %w", value, s, errdefs.ErrInvalid)
	}
	if n != 0 && n < MinSize {
		return 0, fmt.Errorf("disk quota %q: %s is below the minimum of %s (each quota holds an ext4 filesystem whose metadata needs a few MiB): %w",
			value, units.Format(n), units.Format(MinSize), errdefs.ErrInvalid)
	}
	return n, nil
}

// For returns the size that applies to the mount destination dest ("/" is
// the rootfs), and ok=false when none does (no rule matches, or the
// winning rule is 0).
func (s Spec) For(dest string) (size int64, ok bool) {
	if dest == "" {
		return 0, false
	}
	dest = path.Clean(dest)
	if n, hit := s.exact[dest]; hit {
		return n, n > 0
	}
	for _, r := range s.regexps {
		if r.re.MatchString(dest) {
			return r.size, r.size > 0
		}
	}
	if s.hasDef {
		return s.def, s.def > 0
	}
	return 0, false
}

// Exact reports whether dest is named by an exact path rule ("/data=20g"),
// as opposed to matched by a regular expression or the bare size. The
// engine uses it to refuse a quota it cannot apply (a bind-mounted host
// directory) only when the user asked for that path by name.
func (s Spec) Exact(dest string) bool {
	if dest == "" {
		return false
	}
	_, ok := s.exact[path.Clean(dest)]
	return ok
}

// IsZero reports whether the Spec holds no rule at all.
func (s Spec) IsZero() bool { return len(s.values) == 0 }

// Values returns the rules in a normalized form that ParseSpec reads back
// to an equal Spec ("64MiB", "/data=20GiB", ".*=10GiB"): what the engine
// stores in a container's configuration and shows in inspect.
func (s Spec) Values() []string { return append([]string(nil), s.values...) }

// String prints the rules comma-separated, exact paths sorted first.
func (s Spec) String() string {
	v := s.Values()
	sort.SliceStable(v, func(i, j int) bool {
		return strings.HasPrefix(v[i], "/") && !strings.HasPrefix(v[j], "/")
	})
	return strings.Join(v, ",")
}
