package registryproxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
)

// OCI distribution error codes the mirror answers with.
const (
	codeBlobUnknown      = "BLOB_UNKNOWN"
	codeManifestUnknown  = "MANIFEST_UNKNOWN"
	codeManifestInvalid  = "MANIFEST_INVALID"
	codeNameUnknown      = "NAME_UNKNOWN"
	codeNameInvalid      = "NAME_INVALID"
	codeTagInvalid       = "TAG_INVALID"
	codeDigestInvalid    = "DIGEST_INVALID"
	codeSizeInvalid      = "SIZE_INVALID"
	codeRangeInvalid     = "RANGE_INVALID"
	codeUnauthorized     = "UNAUTHORIZED"
	codeDenied           = "DENIED"
	codeUnsupported      = "UNSUPPORTED"
	codeTooManyRequests  = "TOOMANYREQUESTS"
	codeUnavailable      = "UNAVAILABLE"
	codeUnknown          = "UNKNOWN"
	maxUpstreamErrorBody = 64 << 10
)

// ociError is an answer in the distribution spec's error format:
// {"errors":[{"code":…,"message":…}]}.
type ociError struct {
	status int
	// header holds what the client needs besides the body: the upstream's
	// WWW-Authenticate (unchanged), Retry-After, Allow, Content-Range.
	header http.Header
	errs   []ociErrorEntry
}

type ociErrorEntry struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Detail  json.RawMessage `json:"detail,omitempty"`
}

func newError(status int, code, msg string) *ociError {
	return &ociError{status: status, header: http.Header{}, errs: []ociErrorEntry{{Code: code, Message: msg}}}
}

func (e *ociError) Error() string {
	if len(e.errs) == 0 {
		return strconv.Itoa(e.status)
	}
	return strconv.Itoa(e.status) + " " + e.errs[0].Code + ": " + e.errs[0].Message
}

// code returns the first error code.
func (e *ociError) code() string {
	if len(e.errs) == 0 {
		return codeUnknown
	}
	return e.errs[0].Code
}

// write sends e; a HEAD gets the status and headers only.
func (e *ociError) write(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for k, vs := range e.header {
		h[k] = append([]string(nil), vs...)
	}
	b, _ := json.Marshal(struct {
		Errors []ociErrorEntry `json:"errors"`
	}{e.errs})
	b = append(b, '\n')
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Del("Docker-Content-Digest")
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		w.Write(b)
	}
}

// notFoundCode is the 404 code for a kind of request.
func notFoundCode(kind string) string {
	switch kind {
	case kindBlob:
		return codeBlobUnknown
	case kindManifest, kindReferrers:
		return codeManifestUnknown
	}
	return codeNameUnknown
}

// fromStatus maps an upstream's (or the origin's) error status to the
// mirror's answer: 401 stays 401 with the upstream's WWW-Authenticate
// unchanged (the realm is the upstream's token server, which the client
// reaches itself), 403 DENIED, 404/410 *_UNKNOWN, 429 TOOMANYREQUESTS with
// Retry-After, 503 UNAVAILABLE with Retry-After, other 5xx and anything
// unexpected 502 UNAVAILABLE, other 4xx keep their status.
func fromStatus(status int, upstreamHeader http.Header, kind, msg string) *ociError {
	var e *ociError
	switch {
	case status == http.StatusUnauthorized:
		e = newError(status, codeUnauthorized, "authentication required by the upstream registry")
		for _, v := range upstreamHeader.Values("WWW-Authenticate") {
			e.header.Add("WWW-Authenticate", v)
		}
	case status == http.StatusForbidden:
		e = newError(status, codeDenied, "the upstream registry denied access")
	case status == http.StatusNotFound || status == http.StatusGone:
		e = newError(http.StatusNotFound, notFoundCode(kind), "not found in the upstream registry")
	case status == http.StatusTooManyRequests:
		e = newError(status, codeTooManyRequests, "the upstream registry is rate limiting")
	case status == http.StatusServiceUnavailable:
		e = newError(status, codeUnavailable, "the upstream registry is unavailable")
	case status == http.StatusMethodNotAllowed:
		e = newError(status, codeUnsupported, "the upstream registry does not support this")
	case status >= 400 && status < 500:
		e = newError(status, codeUnknown, "the upstream registry refused the request")
	default:
		e = newError(http.StatusBadGateway, codeUnavailable, "unexpected answer from the upstream registry")
	}
	if msg != "" {
		e.errs[0].Message += ": " + msg
	}
	if e.status == http.StatusTooManyRequests || e.status == http.StatusServiceUnavailable {
		if v := upstreamHeader.Get("Retry-After"); v != "" {
			e.header.Set("Retry-After", v)
		}
	}
	return e
}

// fromUpstream maps an upstream's error answer; a 4xx whose body is a
// well-formed OCI error keeps the upstream's codes and messages.
func fromUpstream(resp *http.Response, kind string) *ociError {
	e := fromStatus(resp.StatusCode, resp.Header, kind, "")
	if resp.StatusCode < 400 || resp.StatusCode >= 500 || resp.Request == nil || resp.Request.Method == http.MethodHead {
		return e
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamErrorBody))
	var body struct {
		Errors []ociErrorEntry `json:"errors"`
	}
	if json.Unmarshal(b, &body) != nil || len(body.Errors) == 0 || len(body.Errors) > 16 {
		return e
	}
	for _, x := range body.Errors {
		if x.Code == "" || len(x.Code) > 64 || strings.ContainsAny(x.Code, "\r\n") {
			return e
		}
	}
	e.errs = body.Errors
	return e
}

// fromPeer maps a peer download failure: a TaskError that carries the
// origin's status answers like that status would (401 with its
// WWW-Authenticate); otherwise by class — not found 404, forbidden 403,
// digest mismatch 502, no space 507, unavailable and anything else 503.
func fromPeer(err error, kind string) *ociError {
	var te *peer.TaskError
	if errors.As(err, &te) && te.OriginStatus >= 400 {
		return fromStatus(te.OriginStatus, te.OriginHeader, kind, "")
	}
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return newError(http.StatusNotFound, notFoundCode(kind), "not found")
	case errors.Is(err, errdefs.ErrForbidden):
		return newError(http.StatusForbidden, codeDenied, "access denied")
	case errors.Is(err, errdefs.ErrDigestMismatch):
		return newError(http.StatusBadGateway, codeDigestInvalid, "the upstream content does not match its digest")
	case errors.Is(err, errdefs.ErrNoSpace):
		return newError(http.StatusInsufficientStorage, codeUnavailable, "the agent's store is full")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, errdefs.ErrUnavailable):
		return newError(http.StatusServiceUnavailable, codeUnavailable, "the P2P network cannot serve this now")
	}
	return newError(http.StatusServiceUnavailable, codeUnavailable, "the P2P download failed")
}

// unreachable is the answer when the upstream cannot be reached.
func unreachable() *ociError {
	return newError(http.StatusBadGateway, codeUnavailable, "the upstream registry cannot be reached")
}
