// Package chaos is Pouchfly's fault-injection suite (issue #7): one set of
// scenarios, written against Env, run on two kinds of cluster —
//
//   - LoopbackEnv: test/cluster in the test process (real supernode and
//     agents on 127.0.0.x, host caps as agent rate limits); `go test
//     ./test/chaos`, part of `make test`, small and quick (LoopbackProfile);
//   - TestbedEnv: the network-namespace testbed of test/testbed (real
//     processes, tc tbf caps, SIGKILL); `make chaos` through the command
//     test/chaos/cmd/pouchfly-chaos, 16 hosts (TestbedProfile).
//
// The scenarios (Scenarios):
//
//	kill       a quarter of the hosts SIGKILLed at random points of a download and restarted
//	supernode  the supernode SIGKILLed mid-transfer and restarted past the agents' supernode_wait
//	malicious  a host serving flipped bytes, half pieces, trickles and "not held" (EvilStore)
//	trickler   a host serving only trickles (peer.slow_piece_*: quarantined like a liar)
//	origin     the origin answering 5xx, resetting mid-body, stalling, and never recovering
//	disk       a host whose data directory is a small tmpfs (root)
//	requests   1000 concurrent requests through the agents' local APIs, supernode RPC p99
//
// Each writes a Result: a DESIGN.md §5 report object with the scenario's
// figures and series, and the verdicts of its checks, which Verify derives
// from the report alone (the tests write the report, read it back and
// judge what they read). No check compares a wall-clock time with a
// constant: times are compared with other times of the same run.
package chaos
