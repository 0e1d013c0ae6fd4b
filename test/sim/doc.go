// Command sim is a discrete-event simulator of a Pouchfly swarm that
// drives the real scheduler package: N simulated hosts pull one blob from
// a CDN fed by a simulated origin, over simulated links, and every control
// message goes through scheduler.Scheduler exactly as the supernode's
// session layer would pass it. It reports completion percentiles against
// the physical limit (size / host cap), origin and CDN egress, parent-set
// churn, and the scheduler's CPU time per decision.
//
//	go run ./test/sim --hosts 10,100,1000,10000 --size 64MiB \
//	    --host-cap-mbit 50 --origin-cap-mbit 200 --report sim-report.json --plot sim.png
//
// # Scheduler (real)
//
// scheduler.New with scheduler.DefaultConfig (flags override a few
// fields), a clock.Fake advanced by the event loop, and the simulator as
// its Sender, Disconnecter and Seeder. The CDN is a host with CDN set.
// Hosts send what agents send: Hello (AddHost) before the pull, Register
// when the download starts, PieceReports batched on a ReportInterval
// ticker (100 ms, as told in Welcome), NeedParents once a second while
// starved (fewer than two parents, or none holding a missing piece not
// already in flight) and every fifth second otherwise, and at once when a
// parent is dropped after failures, and Done. The supernode's Run loop is modelled by a Housekeep call every
// HousekeepingInterval; a host it times out reconnects 100 ms later
// (Hello + Held for a finished task). Packets take RTT/2 each way.
//
// Scheduler cost: by default the scheduler is infinitely fast in
// simulated time and its real cost is only measured (thread CPU time of
// each call, so other processes on the machine do not inflate it; wall
// time is reported too). With --sched-cost measured the scheduler is one
// server (its mutex): a call waits for the previous ones and takes its
// measured CPU time in simulated time before its packets leave.
//
// A decision is one ParentSet sent (one assignLocked). "CPU µs/decision"
// is all scheduler CPU time (every call: registrations, reports,
// NeedParents, seeding, housekeeping) over the number of decisions;
// "sched cores" is that CPU time over the simulated makespan, i.e. the
// cores a real supernode would need on average to keep up.
//
// # Origin and CDN
//
// The first Register makes the scheduler call Seed; one RTT later the
// origin answers (SeedMeta with the length and piece.SizeFor's piece
// size) and streams the blob to the CDN node at min(origin cap, supernode
// cap); each piece is announced with SeedPiece as it completes, then
// SeedDone. The CDN serves pieces like a peer, with the supernode's
// upload_max_concurrent (256) slots; a request beyond them is answered
// 503 after one RTT.
//
// # Hosts (a model of peer/task.go)
//
// Each host runs a model of the agent's per-task loop, written after
// peer/task.go with the same names: handleInfo, handleParents (parents'
// bitmaps merged with what PieceAvailable said, dropped parents kept
// while pieces are in flight from them), schedule (rarest first among the
// parents, random among equals, up to max_parallel_pieces in flight,
// endgame duplicates when every missing piece is in flight), pickParent
// (per_parent_pieces per parent; cdn_parallel_pieces from the CDN while
// another peer parent has a non-empty bitmap; peers before the CDN, then
// the least busy, the fewest failures, the fastest; not a parent resting
// after a 503), handleResult (a 503 rests that parent for
// --retry-after-503, 1 s, and is neither reported nor counted; three real
// failures drop the parent, flush the reports and send NeedParents with
// it as failed; the first verified copy of a piece cancels the others),
// and finish (flush, Done). As in the agent, a new ParentSet does not
// carry a parent's rest over. Upload servers accept max_uploads (64)
// concurrent requests and answer 503 beyond.
//
// Where the model differs from the agent:
//
//   - The agent calls schedule after every loop event, timer ticks
//     included; the model calls it after events that change its state
//     (packets, results, a Retry-After expiring). schedule is a function
//     of that state, so this only saves time.
//   - The agent ranges over Go maps (parents, in-flight pieces); the model
//     uses slices visited in a seeded random order, so runs repeat for a
//     seed (up to the scheduler's own map iteration order, which is not
//     seeded: two runs with the same seed differ slightly).
//   - Canceled endgame copies stop at once; the agent learns of the
//     cancellation from the download goroutine a moment later.
//   - No faults: no corrupt pieces, no timeouts (piece, stall, task), no
//     lost sessions, no back-to-source, no disk, CPU or hashing cost. The
//     only failure is a 503 from a full upload server.
//   - The agent's 250 ms tick runs schedule, so a rested parent is asked
//     again within 250 ms of its rest ending; the model does at once.
//   - --retry-after-503 0 models the agent before 1bee27a: a 503 was a
//     network failure (reported, three of them drop the parent).
//
// Hosts are connected before the pull starts, and all start at t=0 unless
// --start-spread is set; the order of simultaneous starts and the host
// IDs (whose hashes break the scheduler's ties and pick its super-seeding
// targets) depend on --seed.
//
// # Network
//
// Every host has an uplink and a downlink capped at --host-cap-mbit, the
// origin an uplink at --origin-cap-mbit, the CDN both at
// --supernode-cap-mbit. A piece request reaches the parent after RTT/2;
// if it has a free upload slot the bytes flow (fluid model below), and
// the piece reaches the child RTT/2 after the last byte left. Fluid
// models (--model):
//
//   - maxmin (default): when a transfer starts or stops between s and r,
//     the rates of all transfers on s's uplink and r's downlink are solved
//     max-min fair by progressive filling, each also limited by what the
//     other transfers at its other end leave free. Spare capacity
//     elsewhere is picked up at the next event there. No link ever
//     exceeds its cap (the tests check it).
//   - share: rate = min(up cap / uploads, down cap / downloads) at the two
//     ends. Cheaper, and wasteful: a transfer held back at one end leaves
//     its share at the other end unused (about 20% slower at N=8).
//
// --burst D gives every host's caps a token bucket of D × cap bytes, full
// at the start, spent at line rate (1 GB/s) — the agents' own rate
// limiters (upload_rate, download_rate) have a 1 s burst, the testbed's
// tbf only 5 ms (strict caps, the default here).
//
// # Output
//
// One JSON object per run, DESIGN.md §5's fields (scenario "sim";
// cpu_seconds_per_gb is not measured, digests_ok is vacuous) plus a
// "detail" object: the model, decisions and scheduler cost per call kind,
// parent sets per host-second and new parents per set (churn), reparents
// by reason, 503s at the CDN and at peers, the CDN's peak uploads, and
// averages over 250 ms samples while hosts download: download and upload
// utilisation (rate / cap), hosts uploading nothing, downloading hosts
// with nothing in flight, the CDN's children and the largest number of
// children one host had in the scheduler's sets. The plot shows p50, p99
// and max completion time against N on a log axis with the limit.
//
// --compare-cluster runs the in-process loopback cluster (test/cluster)
// at the first N with the same caps next to the simulator set up like it
// (1 s burst, uncapped CDN, 0.2 ms RTT); --compare-testbed FILE simulates
// every p2p run of a testbed benchmark report (make bench) at the same N,
// size and caps. See README.md for results.
package main
