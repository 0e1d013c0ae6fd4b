package main

import (
	"errors"
	"strings"

	"github.com/pouchfly/pouchfly/test/proc"
)

// startChild starts bin with args, logging to logPath (see test/proc).
func startChild(name, logPath, bin string, args ...string) (*proc.Proc, error) {
	return proc.Start(name, logPath, proc.Options{}, bin, args...)
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// errExited marks errors caused by a child that died.
var errExited = errors.New("child process exited")
