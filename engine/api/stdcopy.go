package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Stream identifies the stream of a frame in a multiplexed (non-TTY)
// attach or exec stream, as in Docker's raw-stream format: each frame is
// an 8-byte header [stream, 0, 0, 0, size (big endian uint32)] followed by
// size bytes.
type Stream byte

// The streams of a multiplexed stream.
const (
	Stdin  Stream = 0
	Stdout Stream = 1
	Stderr Stream = 2
	// Systemerr carries an error of the server; it ends the stream.
	Systemerr Stream = 3
)

// MediaTypeRawStream is the Content-Type of a hijacked attach/exec stream.
const MediaTypeRawStream = "application/vnd.docker.raw-stream"

// MuxWriter writes frames of one stream to a shared writer. Writers of
// different streams sharing one underlying writer must share mu. Safe for
// concurrent use.
type MuxWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	stream Stream
}

// NewMuxWriters returns writers for stdout and stderr that frame their
// writes onto w.
func NewMuxWriters(w io.Writer) (stdout, stderr *MuxWriter) {
	mu := &sync.Mutex{}
	return &MuxWriter{mu: mu, w: w, stream: Stdout}, &MuxWriter{mu: mu, w: w, stream: Stderr}
}

// Write writes p as one frame (split if larger than 1 MiB).
func (m *MuxWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), 1<<20)]
		var hdr [8]byte
		hdr[0] = byte(m.stream)
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(chunk)))
		m.mu.Lock()
		_, err := m.w.Write(append(hdr[:], chunk...))
		m.mu.Unlock()
		if err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// WriteError writes err as a Systemerr frame.
func (m *MuxWriter) WriteError(err error) error {
	s := &MuxWriter{mu: m.mu, w: m.w, stream: Systemerr}
	_, werr := s.Write([]byte(err.Error()))
	return werr
}

// Demux copies a multiplexed stream from r to stdout and stderr until EOF.
// A Systemerr frame ends it with that error.
func Demux(stdout, stderr io.Writer, r io.Reader) error {
	var hdr [8]byte
	buf := make([]byte, 32<<10)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		size := int(binary.BigEndian.Uint32(hdr[4:]))
		if size > len(buf) {
			buf = make([]byte, size)
		}
		if _, err := io.ReadFull(r, buf[:size]); err != nil {
			return err
		}
		var w io.Writer
		switch Stream(hdr[0]) {
		case Stdin, Stdout:
			w = stdout
		case Stderr:
			w = stderr
		case Systemerr:
			return fmt.Errorf("pouchd: %s", buf[:size])
		default:
			return fmt.Errorf("bad stream id %d in multiplexed stream", hdr[0])
		}
		if w != nil {
			if _, err := w.Write(buf[:size]); err != nil {
				return err
			}
		}
	}
}
