package piece_test

import (
	"testing"

	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/piece/piecetest"
)

func TestDiskStore(t *testing.T) {
	piecetest.Run(t, func(t *testing.T) (piece.Store, func() piece.Store) {
		dir := t.TempDir()
		s, err := piece.NewDiskStore(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, func() piece.Store {
			s.Close()
			s2, err := piece.NewDiskStore(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s2.Close() })
			return s2
		}
	})
}

func TestMemoryStore(t *testing.T) {
	piecetest.Run(t, func(t *testing.T) (piece.Store, func() piece.Store) {
		return piece.NewMemoryStore(0, nil), nil
	})
}
