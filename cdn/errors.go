package cdn

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// OriginError is an origin's non-success HTTP answer. Header holds only the
// headers safe to pass back to the requester (WWW-Authenticate, so a client
// can obtain a token, and Retry-After); never a credential.
type OriginError struct {
	// Status is the origin's HTTP status code.
	Status int
	// Header holds the safe headers of the origin's answer.
	Header http.Header
	// Msg describes the failure: the origin URL without its query, the
	// status line and the start of a textual error body.
	Msg string
}

// safeHeaders are the origin answer headers an OriginError keeps.
var safeHeaders = []string{"WWW-Authenticate", "Retry-After"}

// Error returns Msg.
func (e *OriginError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	return fmt.Sprintf("origin answered %d %s", e.Status, http.StatusText(e.Status))
}

// Unwrap returns the errdefs class of Status: ErrForbidden for 401 and 403,
// ErrNotFound for 404 and 410, ErrUnavailable for 5xx, 408 and 429,
// ErrInvalid for any other status.
func (e *OriginError) Unwrap() error {
	switch {
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		return errdefs.ErrForbidden
	case e.Status == http.StatusNotFound || e.Status == http.StatusGone:
		return errdefs.ErrNotFound
	case retryableStatus(e.Status):
		return errdefs.ErrUnavailable
	default:
		return errdefs.ErrInvalid
	}
}

// retryableStatus reports whether an answer with this status is worth
// another attempt.
func retryableStatus(code int) bool {
	return code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests
}

// newOriginError builds the error for resp (a non-success answer) and reads
// the start of its body.
func newOriginError(resp *http.Response, where string) *OriginError {
	h := http.Header{}
	for _, k := range safeHeaders {
		for _, v := range resp.Header.Values(k) {
			h.Add(k, v)
		}
	}
	msg := fmt.Sprintf("origin %s answered %s", where, resp.Status)
	ct := resp.Header.Get("Content-Type")
	if strings.Contains(ct, "json") || strings.HasPrefix(ct, "text/") {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if s := printable(string(b), 200); s != "" {
			msg += ": " + s
		}
	}
	return &OriginError{Status: resp.StatusCode, Header: h, Msg: msg}
}

// retryAfter returns the delay asked by a Retry-After header in seconds, 0
// when absent or given as a date.
func retryAfter(e *OriginError) time.Duration {
	if e == nil {
		return 0
	}
	s, err := strconv.Atoi(strings.TrimSpace(e.Header.Get("Retry-After")))
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// printable collapses whitespace, drops control characters and truncates s
// to n bytes.
func printable(s string, n int) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		switch {
		case r == ' ' || r == '\n' || r == '\r' || r == '\t':
			space = b.Len() > 0
			continue
		case r < 0x20 || r == 0x7f || r == 0xfffd:
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
		if b.Len() >= n {
			return b.String() + "…"
		}
	}
	return b.String()
}

// redactURL returns u without user info, query and fragment, for logs and
// error messages (queries often carry signatures).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid url>"
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	return u.String()
}

// netErr strips the *url.Error wrapper, whose text holds the full URL.
func netErr(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// RedactError returns err's text without the URL a *url.Error carries
// (queries and user info may hold secrets).
func RedactError(err error) string { return netErr(err).Error() }
