// Package units parses and prints human byte sizes ("64MiB", "1.5G",
// "100M") for flags and config files.
package units

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Bytes is a byte count that reads and writes itself as a human size in
// YAML, flags and JSON-free text (encoding.TextMarshaler).
type Bytes int64

var suffixes = []struct {
	s string
	m int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1000}, {"mb", 1000 * 1000}, {"gb", 1000 * 1000 * 1000}, {"tb", 1000 * 1000 * 1000 * 1000},
	// Bare letters are binary, as docker and PouchContainer read them.
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// ParseBytes reads "123", "64MiB", "1.5g", "10MB". Negative values and
// values above 2^62 (4 EiB) are errors wrapping errdefs.ErrInvalid.
func ParseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, sf := range suffixes {
		if strings.HasSuffix(t, sf.s) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, sf.s)), sf.m
			break
		}
	}
	if t == "" {
		return 0, fmt.Errorf("size %q: %w", s, errdefs.ErrInvalid)
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 || n > (1<<62)/mult {
			return 0, fmt.Errorf("size %q out of range: %w", s, errdefs.ErrInvalid)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	// Written so that NaN fails too.
	if err != nil || !(f >= 0 && f*float64(mult) <= float64(1<<62)) {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (k, m, g, KiB, MB…): %w", s, errdefs.ErrInvalid)
	}
	return int64(f * float64(mult)), nil
}

// Format prints n with a binary unit ("64MiB", "1.5GiB", "512B").
func Format(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	s := strconv.FormatFloat(f, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0") + units[i]
}

// FormatExact prints n as Format does when that reads back to n exactly
// ("64MiB", "1.5GiB"), else as plain bytes ("7000000B"): for values that
// are stored and read again (configs, saved settings).
func FormatExact(n int64) string {
	s := Format(n)
	if back, err := ParseBytes(s); err == nil && back == n {
		return s
	}
	return strconv.FormatInt(n, 10) + "B"
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Bytes) UnmarshalText(text []byte) error {
	n, err := ParseBytes(string(text))
	if err != nil {
		return err
	}
	*b = Bytes(n)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
// It is lossless: the text reads back to the same value.
func (b Bytes) MarshalText() ([]byte, error) { return []byte(FormatExact(int64(b))), nil }

// String implements fmt.Stringer and pflag.Value.
func (b Bytes) String() string { return Format(int64(b)) }

// Set implements pflag.Value.
func (b *Bytes) Set(s string) error { return b.UnmarshalText([]byte(s)) }

// Type implements pflag.Value.
func (b *Bytes) Type() string { return "size" }
