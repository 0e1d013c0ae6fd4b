package main

import (
	"fmt"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// durationFlag is a pflag.Value for non-negative durations.
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }
func (d *durationFlag) Type() string   { return "duration" }
func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("duration %q: %w", s, errdefs.ErrInvalid)
	}
	*d = durationFlag(v)
	return nil
}
