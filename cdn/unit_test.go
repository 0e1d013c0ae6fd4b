package cdn

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
	"gopkg.in/yaml.v3"
)

func TestConfig(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	if err := yaml.Unmarshal([]byte("max_bytes: 1024\ngc_interval: 1m\norigin_timeout: 5s\nstall_timeout: 7s\nretries: 2\nbackoff_base: 100ms\nbackoff_max: 1s\nmax_concurrent: 3\nmax_content_length: 4096\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	want := Config{MaxBytes: 1024, GCInterval: time.Minute, OriginTimeout: 5 * time.Second, StallTimeout: 7 * time.Second,
		Retries: 2, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second, MaxConcurrent: 3, MaxContentLength: 4096}
	if cfg != want {
		t.Fatalf("yaml: %+v", cfg)
	}
	for _, mut := range []func(*Config){
		func(c *Config) { c.MaxBytes = 0 },
		func(c *Config) { c.GCInterval = 0 },
		func(c *Config) { c.OriginTimeout = 0 },
		func(c *Config) { c.StallTimeout = -1 },
		func(c *Config) { c.Retries = -1 },
		func(c *Config) { c.BackoffBase = 0 },
		func(c *Config) { c.BackoffMax = c.BackoffBase / 2 },
		func(c *Config) { c.MaxConcurrent = 0 },
		func(c *Config) { c.MaxContentLength = 0 },
		func(c *Config) { c.MaxContentLength = 1 << 50 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: Validate = %v", c, err)
		}
		if _, err := New(c, piece.NewMemoryStore(0, nil), nil, newRecorder(t), nil); err == nil {
			t.Errorf("New accepted %+v", c)
		}
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		in          string
		total       int64
		first, last int64
		err         bool
	}{
		{"bytes=0-99", 1000, 0, 99, false},
		{"bytes=0-99", -1, 0, 99, false},
		{"bytes=900-2000", 1000, 900, 999, false},
		{"bytes=100-", 1000, 100, 999, false},
		{"bytes=100-", -1, 100, -1, false},
		{"bytes=-10", 1000, 990, 999, false},
		{"bytes=-5000", 1000, 0, 999, false},
		{"bytes=-10", -1, 0, 0, true},
		{"bytes=1000-", 1000, 0, 0, true},
		{"bytes=5-1", 1000, 0, 0, true},
		{"bytes=0-1,3-4", 1000, 0, 0, true},
		{"items=0-1", 1000, 0, 0, true},
		{"bytes=a-b", 1000, 0, 0, true},
		{"bytes=-0", 1000, 0, 0, true},
		{"bytes=+1-2", 1000, 0, 0, true},
	}
	for _, tt := range tests {
		r, err := parseRange(tt.in)
		var first, last int64
		if err == nil {
			first, last, err = r.resolve(tt.total)
		}
		if (err != nil) != tt.err || (err == nil && (first != tt.first || last != tt.last)) {
			t.Errorf("%q/%d: %d-%d, %v", tt.in, tt.total, first, last, err)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%q: error class %v", tt.in, err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in   string
		want contentRange
		err  bool
	}{
		{"bytes 0-99/1000", contentRange{0, 99, 1000}, false},
		{"bytes 10-19/*", contentRange{10, 19, -1}, false},
		{"bytes 10-9/100", contentRange{}, true},
		{"bytes 0-100/100", contentRange{}, true},
		{"bytes */100", contentRange{}, true},
		{"0-1/2", contentRange{}, true},
	}
	for _, tt := range tests {
		got, err := parseContentRange(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("%q: %+v, %v", tt.in, got, err)
		}
	}
}

func TestOriginErrorClasses(t *testing.T) {
	for status, class := range map[int]error{
		401: errdefs.ErrForbidden, 403: errdefs.ErrForbidden, 404: errdefs.ErrNotFound, 410: errdefs.ErrNotFound,
		400: errdefs.ErrInvalid, 416: errdefs.ErrInvalid, 429: errdefs.ErrUnavailable, 408: errdefs.ErrUnavailable,
		500: errdefs.ErrUnavailable, 502: errdefs.ErrUnavailable, 503: errdefs.ErrUnavailable,
	} {
		if err := error(&OriginError{Status: status}); !errors.Is(err, class) || err.Error() == "" {
			t.Errorf("%d: %v not %v", status, err, class)
		}
	}
}

func TestRedactURL(t *testing.T) {
	if got := redactURL("https://user:pw@reg.example/v2/x?sig=abc#f"); got != "https://reg.example/v2/x" {
		t.Fatal(got)
	}
}

// TestDerivedTaskID: an empty TaskID is derived from URL, digest and range.
func TestDerivedTaskID(t *testing.T) {
	blob := randBlob(20, 100)
	o := newOrigin(t, "", serveBlob(blob))
	h := newHarness(t, testConfig(), true)
	h.cdn.Seed(context.Background(), Request{URL: o.URL + "/f?x=1", Header: http.Header{}})
	id, err := piece.TaskID(o.URL+"/f?x=1", "", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if e := h.rep.waitEnd(id, 1); e.kind != "done" {
		t.Fatalf("%+v", e)
	}
}
