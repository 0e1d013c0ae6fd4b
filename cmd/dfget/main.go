// Command dfget downloads files peer-to-peer through Pouchfly and runs the
// per-host peer agent (`dfget daemon`).
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}
