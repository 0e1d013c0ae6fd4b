package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
)

type hasher struct{ h hash.Hash }

func newHasher() *hasher                      { return &hasher{h: sha256.New()} }
func (h *hasher) Write(b []byte) (int, error) { return h.h.Write(b) }
func (h *hasher) digest() string              { return "sha256:" + hex.EncodeToString(h.h.Sum(nil)) }
