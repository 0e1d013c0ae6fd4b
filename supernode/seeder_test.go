package supernode

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/cdn"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/scheduler"
)

func TestTaskError(t *testing.T) {
	tests := []struct {
		err    error
		code   schedulerv1.ErrorCode
		status int32
	}{
		{&cdn.OriginError{Status: 401, Header: http.Header{"Www-Authenticate": {"Bearer realm=x"}}}, schedulerv1.ErrorCode_ERROR_FORBIDDEN, 401},
		{&cdn.OriginError{Status: 404}, schedulerv1.ErrorCode_ERROR_NOT_FOUND, 404},
		{&cdn.OriginError{Status: 503}, schedulerv1.ErrorCode_ERROR_UNAVAILABLE, 503},
		{fmt.Errorf("x: %w", errdefs.ErrDigestMismatch), schedulerv1.ErrorCode_ERROR_DIGEST_MISMATCH, 0},
		{fmt.Errorf("x: %w", errdefs.ErrNoSpace), schedulerv1.ErrorCode_ERROR_UNAVAILABLE, 0},
		{fmt.Errorf("x: %w", errdefs.ErrInvalid), schedulerv1.ErrorCode_ERROR_INVALID, 0},
		{fmt.Errorf("x"), schedulerv1.ErrorCode_ERROR_UNKNOWN, 0},
	}
	for _, tt := range tests {
		e := TaskError("t", tt.err)
		if e.Code != tt.code || e.OriginStatus != tt.status || e.TaskId != "t" {
			t.Errorf("%v: got %v", tt.err, e)
		}
	}
	if e := TaskError("t", tests[0].err); e.OriginHeaders["Www-Authenticate"] != "Bearer realm=x" {
		t.Errorf("headers %v", e.OriginHeaders)
	}
}

type cdnFake struct{ got []cdn.Request }

func (c *cdnFake) Seed(_ context.Context, r cdn.Request) { c.got = append(c.got, r) }

func TestCDNSeeder(t *testing.T) {
	f := &cdnFake{}
	CDNSeeder{CDN: f}.Seed(context.Background(), scheduler.SeedRequest{TaskID: "t", URL: "https://o/x",
		Headers: map[string]string{"authorization": "Bearer s"}, Digest: "d", Range: "bytes=0-1"})
	if len(f.got) != 1 || f.got[0].Header.Get("Authorization") != "Bearer s" || f.got[0].Range != "bytes=0-1" || f.got[0].TaskID != "t" {
		t.Fatalf("got %+v", f.got)
	}
	var r Reporter
	r.SeedMeta("t", 1, 1) // not attached: dropped, no panic
}
