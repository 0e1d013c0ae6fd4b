package testbed

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// HTTPClient returns an HTTP client whose connections are made inside h's
// namespace, so the harness (in its own namespace) can reach services of
// the testbed — the supernode's /metrics, the origin's control endpoints —
// without a route into it. Such connections are local to h's namespace
// (they never cross h's capped link when they target h's own address).
func (tb *Testbed) HTTPClient(h *Host, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       NSDialer(h.NS),
			DisableKeepAlives: true,
		},
	}
}

// NSDialer returns a DialContext that creates its sockets inside the named
// network namespace: it switches one locked OS thread into the namespace,
// dials, and switches back (the thread is discarded if it cannot switch
// back).
func NSDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := dialIn(ctx, ns, network, addr)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			return r.c, r.err
		case <-ctx.Done():
			go func() {
				if r := <-ch; r.c != nil {
					r.c.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
}

func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, err
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns %s: %w", ns, err)
	}
	var d net.Dialer
	c, derr := d.DialContext(ctx, network, addr)
	if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
		runtime.UnlockOSThread()
	} // else: the goroutine ends locked, and the runtime retires the thread.
	return c, derr
}
