package main

import (
	"context"
	"time"

	"golang.org/x/sys/unix"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/scheduler"
)

// Scheduler call kinds, for the per-call accounting.
const (
	callHello = iota
	callRegister
	callReport
	callNeedParents
	callDone
	callSeed // SeedMeta, SeedPiece, SeedDone
	callHousekeep
	callHeld
	numCalls
)

var callNames = [numCalls]string{"hello", "register", "report_pieces", "need_parents", "done", "seed", "housekeep", "held"}

// schedCall is one packet on its way to the scheduler.
type schedCall struct {
	kind    int
	fn      func(*scheduler.Scheduler)
	arrived int64
}

type outPkt struct {
	h int32
	p *schedulerv1.SchedulerPacket
}

// Send implements scheduler.Sender: packets are buffered during a call and
// leave when the call ends (see Sim.exec).
func (s *Sim) Send(hostID string, p *schedulerv1.SchedulerPacket) {
	h, ok := s.byID[hostID]
	if !ok {
		return
	}
	s.out = append(s.out, outPkt{h, p})
}

// Disconnect implements scheduler.Disconnecter: the host's session ends and
// comes back after the agent's 100 ms backoff.
func (s *Sim) Disconnect(hostID string) {
	h, ok := s.byID[hostID]
	if !ok {
		return
	}
	s.stats.timeouts++
	s.q.push(event{at: s.now + int64(100*time.Millisecond) + s.rtt, kind: evReconnect, h: h})
}

// Seed implements scheduler.Seeder: the CDN asks the origin; the answer
// (length, then the stream) comes after one RTT.
func (s *Sim) Seed(_ context.Context, req scheduler.SeedRequest) {
	s.stats.seeds++
	s.q.push(event{at: s.now + s.rtt, kind: evOriginStart})
}

var (
	_ scheduler.Sender       = (*Sim)(nil)
	_ scheduler.Disconnecter = (*Sim)(nil)
	_ scheduler.Seeder       = (*Sim)(nil)
)

// toSched sends a packet from a host to the scheduler: it arrives one way
// later.
func (s *Sim) toSched(kind int, fn func(*scheduler.Scheduler)) {
	s.q.push(event{at: s.now + s.oneWay, kind: evSchedArrive, c: &schedCall{kind: kind, fn: fn}})
}

// arrive handles a packet reaching the scheduler. With the zero cost model
// it runs at once; with the measured model the scheduler is one server (its
// mutex): a call waits for the previous ones, and takes as long in virtual
// time as it took in CPU time here.
func (s *Sim) arrive(c *schedCall) {
	c.arrived = s.now
	if !s.cfg.MeasuredCost {
		s.exec(c)
		return
	}
	if s.now < s.busyUntil || len(s.waiting) > 0 {
		if len(s.waiting) == 0 {
			s.q.push(event{at: s.busyUntil, kind: evSchedWake})
		}
		s.waiting = append(s.waiting, c)
		return
	}
	s.exec(c)
}

func (s *Sim) wake() {
	if len(s.waiting) == 0 {
		return
	}
	c := s.waiting[0]
	s.waiting[0] = nil
	s.waiting = s.waiting[1:]
	s.exec(c)
	if len(s.waiting) > 0 {
		s.q.push(event{at: s.busyUntil, kind: evSchedWake})
	}
}

// exec runs one scheduler call now, timing it, and puts the packets it sent
// on their way to the hosts.
func (s *Sim) exec(c *schedCall) {
	w := s.now - c.arrived
	s.stats.waitSum += w
	s.stats.waitMax = max(s.stats.waitMax, w)
	c0 := threadCPU()
	t0 := time.Now()
	c.fn(s.sched)
	d := time.Since(t0)
	cpu := max(threadCPU()-c0, 0)
	s.stats.callCPU[c.kind] += cpu
	s.stats.callN[c.kind]++
	s.stats.callT[c.kind] += d
	depart := s.now
	if s.cfg.MeasuredCost {
		// The call's CPU time (not its wall time: the machine is shared).
		depart += int64(cpu)
		s.busyUntil = depart
	}
	for _, o := range s.out {
		s.deliver(o.h, o.p, depart+s.oneWay)
	}
	clear(s.out)
	s.out = s.out[:0]
}

// deliver queues p for host h at time at (times are non-decreasing per
// host, so the inbox stays in order).
func (s *Sim) deliver(h int32, p *schedulerv1.SchedulerPacket, at int64) {
	if _, ok := p.Body.(*schedulerv1.SchedulerPacket_Parents); ok {
		s.stats.decisions++
	}
	host := s.hosts[h]
	host.inbox = append(host.inbox, inPkt{at: at, p: p})
	if !host.inboxArmed {
		host.inboxArmed = true
		s.q.push(event{at: at, kind: evInbox, h: h})
	}
}

// threadCPU is the CPU time of the calling thread (the simulation runs on
// one locked OS thread), so the scheduler's cost is measured without the
// time other processes on the machine take from it.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
