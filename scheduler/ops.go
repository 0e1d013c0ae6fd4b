package scheduler

import (
	"fmt"
	"strings"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Preseed starts the CDN fetch of a task ahead of any host (preheat): the
// task is created if unknown and the seeder is started unless a host or
// the CDN already holds it whole, a seed is running, or a failure is
// cached for the same credentials. It reports whether a seed was started.
// req.HostID may be empty; req.Headers (credentials) go to the seeder only
// and are never logged. Without a seeder (or a CDN host) it is
// errdefs.ErrUnavailable; a malformed request is errdefs.ErrInvalid.
//
// Hosts that register the task later join the seed like any registrant
// (and are admitted through the Authorizer when the task carried
// headers). Once seeded, a task no host registered is forgotten by the
// next housekeeping, like any idle task; the CDN keeps it in its cache and
// a later registration replays it from there without touching the origin.
func (s *Scheduler) Preseed(req SeedRequest) (bool, error) {
	if err := validateSeedRequest(req); err != nil {
		return false, fmt.Errorf("preseed: %w", err)
	}
	s.lock()
	defer s.unlock()
	if s.seeder == nil || s.hosts[s.cdnID] == nil {
		return false, fmt.Errorf("preseed %s: no CDN seeder: %w", req.TaskID, errdefs.ErrUnavailable)
	}
	t := s.tasks[req.TaskID]
	if t == nil {
		t = &task{id: req.TaskID, length: -1, peers: map[string]*peer{}, created: s.clk.Now()}
		if strings.HasPrefix(t.id, "sha256:") {
			t.digest = t.id
		}
		s.tasks[t.id] = t
		s.metrics.Tasks.Set(float64(len(s.tasks)))
	}
	if s.hasSourceLocked(t) || t.seed == seedRunning || s.failureCachedLocked(t, &req) {
		return false, nil
	}
	r := req
	s.startSeedLocked(t, &r)
	return true, nil
}

// validateSeedRequest applies Register's input checks to a seed request.
func validateSeedRequest(req SeedRequest) error {
	return validateRegister(&schedulerv1.RegisterTask{TaskId: req.TaskID, Url: req.URL, Headers: req.Headers,
		Digest: req.Digest, Range: req.Range})
}
