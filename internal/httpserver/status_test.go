package httpserver

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestStatusRecorder(t *testing.T) {
	w := httptest.NewRecorder()
	r := &StatusRecorder{ResponseWriter: w}
	if r.Sent() != 0 || r.Status() != http.StatusOK {
		t.Fatalf("nothing sent: Sent %d Status %d", r.Sent(), r.Status())
	}
	r.WriteHeader(http.StatusEarlyHints) // informational: not the final status
	if r.Sent() != 0 {
		t.Fatalf("1xx recorded as the status: %d", r.Sent())
	}
	r.WriteHeader(http.StatusPartialContent)
	r.WriteHeader(http.StatusTeapot) // superfluous: the first final one counts
	if r.Status() != http.StatusPartialContent {
		t.Fatalf("status %d", r.Status())
	}
	r2 := &StatusRecorder{ResponseWriter: httptest.NewRecorder()}
	if n, err := r2.ReadFrom(strings.NewReader("body")); n != 4 || err != nil || r2.Sent() != http.StatusOK {
		t.Fatalf("ReadFrom: %d %v, status %d", n, err, r2.Sent())
	}
	if got := r2.ResponseWriter.(*httptest.ResponseRecorder).Body.String(); got != "body" {
		t.Fatalf("body %q", got)
	}
	if http.NewResponseController(r).Flush() != nil {
		t.Fatal("Flush does not reach the wrapped writer")
	}
}
