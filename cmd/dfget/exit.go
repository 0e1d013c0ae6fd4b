package main

import (
	"context"
	"errors"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Exit codes of dfget, documented in --help and the README.
const (
	exitOK          = 0
	exitError       = 1 // anything not listed below
	exitUsage       = 2 // bad flags, URL, digest or config
	exitNotFound    = 3 // the origin has no such file (404)
	exitForbidden   = 4 // the origin refused the credentials (401/403)
	exitUnavailable = 5 // no supernode and no back-to-source, origin down or 5xx
	exitDigest      = 6 // the content does not match --digest
	exitLocalIO     = 7 // cannot write the output (disk full, permissions)
	exitTimeout     = 8 // --timeout expired
)

const exitCodesHelp = `Exit codes:
  0  success
  1  other error
  2  usage: bad flag, URL, digest or config
  3  not found at the origin (HTTP 404)
  4  forbidden: the origin refused the credentials (HTTP 401/403)
  5  unavailable: origin or supernode down, and back-to-source off or failing
  6  digest mismatch: the content is not what --digest says
  7  local I/O error: cannot write the output (disk full, permissions)
  8  timeout: --timeout expired`

// exitCode maps an error to dfget's exit code.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.DeadlineExceeded):
		return exitTimeout
	case errors.Is(err, errdefs.ErrInvalid):
		return exitUsage
	case errors.Is(err, errdefs.ErrNotFound):
		return exitNotFound
	case errors.Is(err, errdefs.ErrForbidden):
		return exitForbidden
	case errors.Is(err, errdefs.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, errdefs.ErrDigestMismatch):
		return exitDigest
	case errors.Is(err, errdefs.ErrNoSpace), errors.Is(err, errLocalIO):
		return exitLocalIO
	}
	return exitError
}

// errLocalIO marks failures writing the output file.
var errLocalIO = errors.New("local I/O error")
