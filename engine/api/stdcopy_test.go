package api

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestMuxDemux(t *testing.T) {
	var wire bytes.Buffer
	o, e := NewMuxWriters(&wire)
	o.Write([]byte("out1\n"))
	e.Write([]byte("err1\n"))
	big := strings.Repeat("x", 3<<20) // split into 1 MiB frames
	o.Write([]byte(big))
	var so, se bytes.Buffer
	if err := Demux(&so, &se, bytes.NewReader(wire.Bytes())); err != nil {
		t.Fatal(err)
	}
	if so.String() != "out1\n"+big || se.String() != "err1\n" {
		t.Errorf("stdout %d bytes, stderr %q", so.Len(), se.String())
	}
	// A system error frame ends the stream with that error.
	wire.Reset()
	o.Write([]byte("partial"))
	o.WriteError(errors.New("exec failed"))
	so.Reset()
	err := Demux(&so, &se, bytes.NewReader(wire.Bytes()))
	if err == nil || !strings.Contains(err.Error(), "exec failed") || so.String() != "partial" {
		t.Errorf("systemerr: %v %q", err, so.String())
	}
	// A truncated frame is an error.
	if err := Demux(&so, &se, bytes.NewReader([]byte{1, 0, 0, 0, 0, 0, 0, 9, 'a'})); err == nil {
		t.Errorf("truncated frame accepted")
	}
}

func TestErrorClasses(t *testing.T) {
	for status, class := range map[int]error{404: nil, 409: ErrConflict} {
		e := &Error{Status: status, Message: "m"}
		if class != nil && !errors.Is(e, class) {
			t.Errorf("%d is not %v", status, class)
		}
	}
	if _, err := NewClient("ftp://x"); err == nil {
		t.Errorf("bad host accepted")
	}
}
