package scheduler

import (
	"testing"
)

// The pieces a quarantined host held do not count as copies in the swarm:
// when it held the only copies the CDN had handed out, the CDN hands them
// out again (else the swarm starves: nobody may fetch from the quarantined
// host, and the CDN thinks its fanout is spent). Found by the chaos suite
// (test/chaos, malicious host).
func TestQuarantinedHolderPiecesHandedOutAgain(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CDNFanout = 1
	e := newEnv(t, cfg, &fakeSeeder{})
	task := taskID(31)
	const count = 3
	e.host("bad", "")
	e.must(e.s.Register("bad", reg(task)))
	e.s.SeedMeta(task, count<<20, 1<<20)
	e.s.SeedPieces(task, 0, sums(task, count))
	if got := cdnHeard(e.rec.take("bad")); len(got) != count {
		t.Fatalf("the only host was handed %v, want all %d pieces", got, count)
	}
	for n := range count {
		e.report("bad", task, res("cdn", n, vNone, 100))
	}
	for _, h := range []string{"c1", "c2"} {
		e.host(h, "")
		e.must(e.s.Register(h, reg(task)))
		if got := cdnHeard(e.rec.take(h)); len(got) != 0 {
			t.Fatalf("%s was handed %v while the fanout was spent", h, got)
		}
	}
	for n := range count {
		e.report("c1", task, res("bad", n, vVerify, 10))
	}
	if q := e.s.Snapshot().Quarantined; len(q) != 1 {
		t.Fatalf("quarantined %v", q)
	}
	handed := map[int]bool{}
	for _, h := range []string{"c1", "c2"} {
		for n := range cdnHeard(e.rec.take(h)) {
			handed[n] = true
		}
	}
	if len(handed) != count {
		t.Fatalf("after the quarantine the CDN handed out %v, want all %d pieces again", handed, count)
	}
}
