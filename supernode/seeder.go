package supernode

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/cdn"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/scheduler"
)

// CDNSeeder adapts a *cdn.CDN (anything with its Seed method) to
// scheduler.Seeder.
type CDNSeeder struct {
	CDN interface {
		Seed(ctx context.Context, req cdn.Request)
	}
}

var _ scheduler.Seeder = CDNSeeder{}

// Seed forwards req; headers become an http.Header (never logged).
func (c CDNSeeder) Seed(ctx context.Context, req scheduler.SeedRequest) {
	h := make(http.Header, len(req.Headers))
	for k, v := range req.Headers {
		h.Set(k, v)
	}
	c.CDN.Seed(ctx, cdn.Request{TaskID: req.TaskID, URL: req.URL, Header: h, Digest: req.Digest, Range: req.Range})
}

// Reporter forwards the CDN's progress to the scheduler: it implements
// cdn.Reporter and cdn.EvictionReporter. Create it before the CDN (the CDN
// needs it) and Attach the scheduler before the first Seed; calls made
// before are dropped.
type Reporter struct {
	s atomic.Pointer[scheduler.Scheduler]
}

var (
	_ cdn.Reporter         = (*Reporter)(nil)
	_ cdn.EvictionReporter = (*Reporter)(nil)
)

// Attach sets the scheduler.
func (r *Reporter) Attach(s *scheduler.Scheduler) { r.s.Store(s) }

// SeedMeta forwards to Scheduler.SeedMeta.
func (r *Reporter) SeedMeta(taskID string, length int64, pieceSize int32) {
	if s := r.s.Load(); s != nil {
		s.SeedMeta(taskID, length, pieceSize)
	}
}

// SeedPiece forwards to Scheduler.SeedPiece.
func (r *Reporter) SeedPiece(taskID string, n int, sum []byte) {
	if s := r.s.Load(); s != nil {
		s.SeedPiece(taskID, n, sum)
	}
}

// SeedDone forwards to Scheduler.SeedDone.
func (r *Reporter) SeedDone(taskID string, length int64, digest string) {
	if s := r.s.Load(); s != nil {
		s.SeedDone(taskID, length, digest)
	}
}

// SeedFailed forwards to Scheduler.SeedFailed with TaskError(err).
func (r *Reporter) SeedFailed(taskID string, err error) {
	if s := r.s.Load(); s != nil {
		s.SeedFailed(taskID, TaskError(taskID, err))
	}
}

// SeedEvicted forwards to Scheduler.SeedEvicted.
func (r *Reporter) SeedEvicted(taskID string) {
	if s := r.s.Load(); s != nil {
		s.SeedEvicted(taskID)
	}
}

// TaskError converts a seeding error to its wire form: the errdefs class
// becomes the code; an *cdn.OriginError also gives the origin's status and
// its safe headers (WWW-Authenticate, Retry-After).
func TaskError(taskID string, err error) *schedulerv1.TaskError {
	e := &schedulerv1.TaskError{TaskId: taskID, Code: schedulerv1.ErrorCode_ERROR_UNKNOWN}
	if err == nil {
		return e
	}
	e.Message = err.Error()
	switch {
	case errors.Is(err, errdefs.ErrInvalid):
		e.Code = schedulerv1.ErrorCode_ERROR_INVALID
	case errors.Is(err, errdefs.ErrNotFound):
		e.Code = schedulerv1.ErrorCode_ERROR_NOT_FOUND
	case errors.Is(err, errdefs.ErrForbidden):
		e.Code = schedulerv1.ErrorCode_ERROR_FORBIDDEN
	case errors.Is(err, errdefs.ErrDigestMismatch):
		e.Code = schedulerv1.ErrorCode_ERROR_DIGEST_MISMATCH
	case errors.Is(err, errdefs.ErrUnavailable), errors.Is(err, errdefs.ErrNoSpace),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e.Code = schedulerv1.ErrorCode_ERROR_UNAVAILABLE
	}
	var oe *cdn.OriginError
	if errors.As(err, &oe) {
		e.OriginStatus = int32(oe.Status)
		if len(oe.Header) > 0 {
			e.OriginHeaders = map[string]string{}
			for k := range oe.Header {
				e.OriginHeaders[k] = oe.Header.Get(k)
			}
		}
	}
	return e
}
