package piece

import (
	"context"
	"io"
	"time"
)

// Meta describes a task's content as a store keeps it.
type Meta struct {
	// TaskID is the task's identity (see TaskID).
	TaskID string `json:"task_id"`
	// ContentLength is the content size in bytes, -1 while unknown.
	ContentLength int64 `json:"content_length"`
	// PieceSize is the size of every piece but the last.
	PieceSize int32 `json:"piece_size"`
	// Digest is the whole-content digest when known ("sha256:<hex>").
	Digest string `json:"digest,omitempty"`
}

// Count returns the number of pieces, 0 while the length is unknown.
func (m Meta) Count() int { return Count(m.ContentLength, m.PieceSize) }

// Stat is a task's state in a store.
type Stat struct {
	Meta
	// Bitmap holds the pieces stored.
	Bitmap Bitmap
	// Complete is true once Finish succeeded: every piece is present and the
	// length is final.
	Complete bool
	// Bytes is the disk (or memory) space the task uses.
	Bytes int64
	// LastAccess is the last time a piece was written or read.
	LastAccess time.Time
}

// Reader is a stored piece or content range opened for reading. Close
// releases it. For disk stores R is an *io.LimitedReader over an *os.File so
// that io.Copy into a TCP connection uses sendfile.
type Reader struct {
	R    io.Reader
	Size int64
	c    io.Closer
}

// Read reads from R.
func (r *Reader) Read(p []byte) (int, error) { return r.R.Read(p) }

// Close releases the underlying file, if any.
func (r *Reader) Close() error {
	if r.c == nil {
		return nil
	}
	return r.c.Close()
}

// Store keeps the pieces of tasks. Implementations are safe for concurrent
// use; concurrent writes of the same piece are allowed (the last verified
// write wins, both hold the same bytes).
//
// Errors wrap errdefs classes: ErrNotFound for an unknown task or a piece
// not held, ErrInvalid for out-of-range input, ErrDigestMismatch for a piece
// whose bytes do not match, ErrNoSpace when the store is full.
type Store interface {
	// Create prepares a task. It is idempotent: creating an existing task
	// with the same piece size keeps its pieces, and fills in a length that
	// was unknown. A different piece size is ErrInvalid.
	Create(ctx context.Context, meta Meta) error
	// WritePiece reads piece n from r and stores it if its SHA-256 equals
	// sum (nil sum: store unverified, for the CDN which computes it). It
	// returns the SHA-256 of what it read. On any error the piece is not
	// marked present. Writers of one piece are serialised; when the piece is
	// already present, r is not read and the stored sum is returned, so
	// verified bytes are never rewritten. r must yield exactly the piece's size when the length
	// is known; with an unknown length any size up to the piece size is
	// accepted and a short piece must be the last one.
	WritePiece(ctx context.Context, taskID string, n int, r io.Reader, sum []byte) ([]byte, error)
	// ReadPiece opens piece n for reading.
	ReadPiece(ctx context.Context, taskID string, n int) (*Reader, error)
	// ReadAt opens the content from offset off for at most size bytes; the
	// caller must know the covering pieces are present.
	ReadAt(ctx context.Context, taskID string, off, size int64) (*Reader, error)
	// Finish marks the task complete with its final length. Every piece
	// must be present (ErrInvalid otherwise).
	Finish(ctx context.Context, taskID string, length int64) error
	// Stat returns the task's state.
	Stat(ctx context.Context, taskID string) (Stat, error)
	// List returns the state of every task.
	List(ctx context.Context) ([]Stat, error)
	// Delete removes a task and its pieces; deleting an unknown task is not
	// an error.
	Delete(ctx context.Context, taskID string) error
	// PieceSums returns the stored SHA-256 of each present piece (nil for
	// absent ones), used to offer held tasks after a restart.
	PieceSums(ctx context.Context, taskID string) ([][]byte, error)
}
