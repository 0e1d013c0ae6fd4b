package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Sample is one sample of a Prometheus text exposition.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Metrics are the samples of a /metrics page by metric name (histogram
// series keep their _bucket, _sum and _count suffixes).
type Metrics map[string][]Sample

// Sum returns the sum of name's samples whose labels include every
// key=value of match (0 when there are none).
func (m Metrics) Sum(name string, match ...string) float64 {
	var sum float64
	for _, s := range m[name] {
		if matches(s.Labels, match) {
			sum += s.Value
		}
	}
	return sum
}

// Has reports whether name has any sample.
func (m Metrics) Has(name string) bool { return len(m[name]) > 0 }

func matches(l map[string]string, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if l[kv[i]] != kv[i+1] {
			return false
		}
	}
	return true
}

// Quantile estimates the q-quantile (0..1) of histogram name from its
// cumulative buckets, summed over the series matching match, the way
// Prometheus' histogram_quantile does (linear within the bucket). It
// returns NaN when the histogram is empty.
func (m Metrics) Quantile(name string, q float64, match ...string) float64 {
	counts := map[float64]float64{}
	for _, s := range m[name+"_bucket"] {
		if !matches(s.Labels, match) {
			continue
		}
		le, err := strconv.ParseFloat(s.Labels["le"], 64)
		if err != nil {
			continue
		}
		counts[le] += s.Value
	}
	les := make([]float64, 0, len(counts))
	for le := range counts {
		les = append(les, le)
	}
	slices.Sort(les)
	if len(les) == 0 || counts[les[len(les)-1]] == 0 {
		return math.NaN()
	}
	total := counts[les[len(les)-1]]
	rank := q * total
	prevLE, prevCount := 0.0, 0.0
	for _, le := range les {
		c := counts[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return prevLE // the highest finite bound, as Prometheus does
			}
			if c == prevCount {
				return le
			}
			return prevLE + (le-prevLE)*(rank-prevCount)/(c-prevCount)
		}
		prevLE, prevCount = le, c
	}
	return prevLE
}

// ParseMetrics reads a Prometheus text exposition (version 0.0.4).
func ParseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, rest, err := splitSample(line)
		if err != nil {
			return nil, err
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics: no value in %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: %q: %w", line, err)
		}
		m[name] = append(m[name], Sample{Labels: labels, Value: v})
	}
	return m, sc.Err()
}

// splitSample splits `name{a="b",…} value` into its parts.
func splitSample(line string) (name string, labels map[string]string, rest string, err error) {
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, "", fmt.Errorf("metrics: bad line %q", line)
	}
	name, labels = line[:i], map[string]string{}
	if line[i] == ' ' {
		return name, labels, line[i:], nil
	}
	s := line[i+1:]
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return name, labels, s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return "", nil, "", fmt.Errorf("metrics: bad labels in %q", line)
		}
		key := strings.TrimSpace(s[:eq])
		s = s[eq+2:]
		var val strings.Builder
		j := 0
		for ; j < len(s) && s[j] != '"'; j++ {
			if s[j] == '\\' && j+1 < len(s) {
				j++
				switch s[j] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[j])
				}
				continue
			}
			val.WriteByte(s[j])
		}
		if j >= len(s) {
			return "", nil, "", fmt.Errorf("metrics: unterminated label in %q", line)
		}
		labels[key] = val.String()
		s = s[j+1:]
	}
}

// Scrape GETs url with hc and parses it.
func Scrape(ctx context.Context, hc *http.Client, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return ParseMetrics(resp.Body)
}
