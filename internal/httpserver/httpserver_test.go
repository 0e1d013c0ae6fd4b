package httpserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := DefaultLimits()
	l.ReadHeaderTimeout = 300 * time.Millisecond
	srv := l.Server(h, nil)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// A body trickled slower than the timeout is cut; a body sent at once
// leaves the handler free to stream a long answer (the deadline does not
// cancel it).
func TestBoundBody(t *testing.T) {
	h := BoundBody(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		w.WriteHeader(200)
		for i := 0; i < 6; i++ {
			if r.Context().Err() != nil {
				return
			}
			fmt.Fprintf(w, "%s%d\n", b, i)
			http.NewResponseController(w).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}), 1<<10, 200*time.Millisecond)
	addr := serve(t, h)

	resp, err := http.Post("http://"+addr+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Count(string(body), "\n") != 6 {
		t.Fatalf("long answer after a quick body: %d %q", resp.StatusCode, body)
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
	start := time.Now()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge || time.Since(start) > 2*time.Second {
		t.Fatalf("slow body: %d after %v", resp.StatusCode, time.Since(start))
	}

	for _, tc := range []struct{ method, cl string }{{"GET", "5"}, {"POST", "5000"}} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "%s / HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n", tc.method, tc.cl)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Fatalf("%s with a %s-byte body: %v %v", tc.method, tc.cl, resp, err)
		}
	}
}
