// Package piece holds the piece math shared by the supernode and the agents:
// piece-size policy, task identity, piece bitmaps, and the Store interface
// with its disk and memory implementations.
package piece

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

const (
	// MinSize is the smallest piece size the policy picks. Small pieces
	// let a fresh piece hop from host to host quickly while a swarm ramps
	// up (each hop is store-and-forward): in the simulator, 256 KiB instead
	// of 1 MiB pieces for a 64 MiB blob took N=32 hosts from 1.21× to
	// 1.07× the physical limit (p50) and N=1000 from 1.52× to 1.18×.
	MinSize = 256 << 10
	// MaxSize is the largest piece size the policy picks (and accepts).
	MaxSize = 16 << 20
	// DefaultSize is used when the content length is unknown.
	DefaultSize = 4 << 20
	// TargetCount is the piece count the policy aims at for large content.
	TargetCount = 256
	// MaxCount bounds the number of pieces of one task.
	MaxCount = 1 << 20
)

// SizeFor returns the piece size for content of the given length (-1 when
// unknown): a power of two between MinSize and MaxSize giving about
// TargetCount pieces, so small blobs still split among many peers and big
// ones keep per-piece overhead low.
func SizeFor(length int64) int32 {
	if length < 0 {
		return DefaultSize
	}
	size := int64(MinSize)
	for size < MaxSize && length/size > TargetCount {
		size <<= 1
	}
	return int32(size)
}

// Count returns how many pieces of size pieceSize cover length bytes.
func Count(length int64, pieceSize int32) int {
	if length <= 0 || pieceSize <= 0 {
		return 0
	}
	return int((length-1)/int64(pieceSize) + 1) // no overflow near MaxInt64
}

// Range returns the offset and length of piece n.
func Range(n int, length int64, pieceSize int32) (off, size int64) {
	off = int64(n) * int64(pieceSize)
	size = int64(pieceSize)
	if length >= 0 && off+size > length {
		size = length - off
	}
	if size < 0 {
		size = 0
	}
	return off, size
}

var (
	taskIDRe = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}|[a-f0-9]{64})$`)
	digestRe = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// ValidTaskID reports whether id is a well-formed task ID: an OCI digest
// ("sha256:<hex>") or the 64-hex SHA-256 of a normalized URL.
func ValidTaskID(id string) error {
	if !taskIDRe.MatchString(id) {
		return fmt.Errorf("task id %q: %w", truncate(id, 80), errdefs.ErrInvalid)
	}
	return nil
}

// ValidDigest checks a whole-content digest; only sha256 is accepted.
func ValidDigest(d string) error {
	if !digestRe.MatchString(d) {
		return fmt.Errorf("digest %q: want sha256:<64 hex>: %w", truncate(d, 80), errdefs.ErrInvalid)
	}
	return nil
}

// DefaultFilterQuery lists the query keys left out of task identity by
// default (request signatures and their expiry: they change per request
// for the same content).
var DefaultFilterQuery = []string{"Signature", "Expires", "X-Amz-Signature", "X-Amz-Date", "X-Amz-Credential", "X-Amz-Security-Token"}

// TaskID returns the identity of a download. A known digest is the task ID
// (one swarm per content, whatever the URL). Otherwise it is the SHA-256 of
// the normalized URL, with the query parameters named in filter removed
// (signatures, expiry), plus the byte range if any.
func TaskID(rawURL, digest string, filter []string, byteRange string) (string, error) {
	if digest != "" {
		if err := ValidDigest(digest); err != nil {
			return "", err
		}
		if byteRange == "" {
			return digest, nil
		}
	}
	norm, err := NormalizeURL(rawURL, filter)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(norm))
	if digest != "" {
		h.Write([]byte("\x00" + digest))
	}
	if byteRange != "" {
		h.Write([]byte("\x00" + byteRange))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// NormalizeURL lower-cases scheme and host, drops the fragment and default
// ports, removes filtered query keys and sorts the rest.
func NormalizeURL(rawURL string, filter []string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("url %q: %v: %w", truncate(rawURL, 200), err, errdefs.ErrInvalid)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("url %q: scheme must be http or https: %w", truncate(rawURL, 200), errdefs.ErrInvalid)
	}
	if u.Host == "" {
		return "", fmt.Errorf("url %q: no host: %w", truncate(rawURL, 200), errdefs.ErrInvalid)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Host)
	host = strings.TrimSuffix(host, map[string]string{"http": ":80", "https": ":443"}[u.Scheme])
	u.Host = host
	u.Fragment = ""
	u.User = nil
	q := u.Query()
	for _, k := range filter {
		q.Del(k)
	}
	u.RawQuery = q.Encode() // Encode sorts by key
	return u.String(), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
