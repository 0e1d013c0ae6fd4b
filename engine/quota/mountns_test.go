package quota

import (
	"testing"

	"github.com/pouchfly/pouchfly/internal/testenv"
)

// TestMain runs the tests in a private mount namespace: they loop-mount
// filesystems that another namespace must not copy (see
// testenv.MainInPrivateMountNS).
func TestMain(m *testing.M) { testenv.MainInPrivateMountNS(m) }
