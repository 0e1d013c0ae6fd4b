package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/piece"
)

// TestSwarmMostBytesFromPeers simulates 8 peers starting together on a
// blob the CDN streams in, driven only by the packets the scheduler sends
// (ParentSet, PieceAvailable). Each host uploads one piece per tick (the
// CDN two), each peer downloads one piece per tick, preferring peers over
// the CDN and rarest pieces first, and asks for parents every tick. Most
// bytes must come from peers, and everyone must finish.
func TestSwarmMostBytesFromPeers(t *testing.T) {
	const peers, pieces, cdnCap = 8, 64, 2
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(42)
	type sim struct {
		id      string
		have    piece.Bitmap
		parents map[string]piece.Bitmap
		done    bool
	}
	var ps []*sim
	for i := range peers {
		id := fmt.Sprint("peer", i)
		e.host(id, fmt.Sprint("z", i%2))
		e.must(e.s.Register(id, reg(task)))
		ps = append(ps, &sim{id: id})
	}
	e.s.SeedMeta(task, pieces<<20, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	from := map[string]int{}
	seeded := 0
	for tick := 0; tick < 1000; tick++ {
		// The CDN streams 8 pieces per tick from the origin.
		for range 8 {
			if seeded < pieces {
				e.s.SeedPiece(task, seeded, sum(task, seeded))
				seeded++
				if seeded == pieces {
					e.s.SeedDone(task, pieces<<20, "")
				}
			}
		}
		for _, p := range ps {
			for _, pkt := range e.rec.take(p.id) {
				switch b := pkt.Body.(type) {
				case *schedulerv1.SchedulerPacket_Parents:
					p.parents = map[string]piece.Bitmap{}
					for _, par := range b.Parents.Parents {
						p.parents[par.HostId] = piece.Bitmap(par.Bitmap).Clone()
					}
				case *schedulerv1.SchedulerPacket_Available:
					if bits, ok := p.parents[b.Available.HostId]; ok {
						for _, n := range b.Available.Pieces {
							bits.Set(int(n))
						}
						p.parents[b.Available.HostId] = bits
					}
				}
			}
		}
		capacity := map[string]int{"cdn": cdnCap}
		for _, p := range ps {
			capacity[p.id] = 1
		}
		allDone := true
		for k := range ps {
			p := ps[(k+tick)%len(ps)]
			if p.done {
				continue
			}
			allDone = false
			pick := func(cdn bool) (string, int) {
				best, bestRarity, bestParent := -1, 1<<30, ""
				for id, bits := range p.parents {
					if (id == "cdn") != cdn || capacity[id] == 0 {
						continue
					}
					for n := range pieces {
						if !bits.Has(n) || p.have.Has(n) {
							continue
						}
						r := 0
						for _, ob := range p.parents {
							if ob.Has(n) {
								r++
							}
						}
						if r < bestRarity || (r == bestRarity && rng.IntN(2) == 0) {
							best, bestRarity, bestParent = n, r, id
						}
					}
				}
				return bestParent, best
			}
			par, n := pick(false)
			if n < 0 {
				par, n = pick(true)
			}
			if n >= 0 {
				capacity[par]--
				p.have.Set(n)
				from[par]++
				e.report(p.id, task, res(par, n, vNone, 100))
			}
			if p.have.Full(pieces) {
				p.done = true
				e.s.Done(p.id, &schedulerv1.TaskDone{TaskId: task, Success: true})
				continue
			}
			e.s.NeedParents(p.id, &schedulerv1.NeedParents{TaskId: task})
		}
		if allDone {
			total := 0
			for _, c := range from {
				total += c
			}
			share := float64(from["cdn"]) / float64(total)
			t.Logf("finished in %d ticks; pieces from the CDN: %d of %d (%.0f%%)", tick, from["cdn"], total, 100*share)
			if total != peers*pieces {
				t.Fatalf("downloaded %d pieces, want %d", total, peers*pieces)
			}
			if share > 0.35 {
				t.Fatalf("CDN served %.0f%% of the pieces, want most from peers", 100*share)
			}
			return
		}
	}
	t.Fatal("swarm did not finish in 1000 ticks")
}
