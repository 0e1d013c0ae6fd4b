// Package errdefs holds the few error classes shared by every package.
// Packages wrap them with %w; servers map them to HTTP or gRPC codes at the
// edge only.
package errdefs

import "errors"

var (
	// ErrNotFound: the task, piece, host or object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the input is malformed or out of range.
	ErrInvalid = errors.New("invalid argument")
	// ErrUnavailable: a dependency (origin, supernode, parent) cannot be reached now.
	ErrUnavailable = errors.New("unavailable")
	// ErrForbidden: the caller is not allowed (credentials, token, quarantine).
	ErrForbidden = errors.New("forbidden")
	// ErrDigestMismatch: content did not match its expected digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNoSpace: a local store is full.
	ErrNoSpace = errors.New("no space left")
)
