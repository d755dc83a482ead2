package poke

import (
	"sync"
	"time"
)

// Pacer merges the pokes one caller causes. The first poke of a caller
// that has been quiet for an interval goes out at once; the pokes that
// follow within the interval are merged and go out together at its end,
// and so on while they keep coming. A flood of writes by one caller costs
// one poke per interval, and the flood's last change is in the poke that
// follows it: nothing is lost, it is only later. Callers are told apart by
// their key (identity.Caller.Key). Each poke carries when its change
// happened; merged pokes go out with the earliest. A Pacer is safe for
// concurrent use.
type Pacer struct {
	interval time.Duration
	send     func(users []string, at time.Time)

	mu      sync.Mutex
	callers map[string]*paced // callers that poked within the last interval
}

// paced is one caller's pokes since its last went out.
type paced struct {
	pending bool
	all     bool
	users   map[string]bool
	since   time.Time   // the earliest change merged
	timer   *time.Timer // the end of the interval
}

// NewPacer returns a pacer that sends a caller's pokes (users: whose
// streams; none: everyone's; at: when the earliest change they carry
// happened) at most once per interval (0: all at once) through send,
// which is called without locks held.
func NewPacer(interval time.Duration, send func(users []string, at time.Time)) *Pacer {
	return &Pacer{interval: interval, send: send, callers: map[string]*paced{}}
}

// Poke pokes users (none: everyone) for the caller key, for a change that
// happened at: at once when key was quiet for an interval, else at the
// end of the current one.
func (p *Pacer) Poke(key string, users []string, at time.Time) {
	if p.interval <= 0 {
		p.send(users, at)
		return
	}
	p.mu.Lock()
	c, busy := p.callers[key]
	if busy {
		c.add(users, at)
		p.mu.Unlock()
		return
	}
	c = &paced{}
	p.callers[key] = c
	c.timer = time.AfterFunc(p.interval, func() { p.release(key, c) })
	p.mu.Unlock()
	p.send(users, at)
}

// release ends c's interval: what was merged goes out and a new interval
// begins; a caller with nothing merged is forgotten (its next poke goes out
// at once).
func (p *Pacer) release(key string, c *paced) {
	p.mu.Lock()
	if p.callers[key] != c { // flushed meanwhile
		p.mu.Unlock()
		return
	}
	if !c.pending {
		delete(p.callers, key)
		p.mu.Unlock()
		return
	}
	users, at := c.take()
	c.timer.Reset(p.interval)
	p.mu.Unlock()
	p.send(users, at)
}

// Flush sends every merged poke now and forgets every caller: at shutdown,
// so no poke waits for an interval the process will not see end.
func (p *Pacer) Flush() {
	type merged struct {
		users []string
		at    time.Time
	}
	p.mu.Lock()
	var out []merged
	for key, c := range p.callers {
		c.timer.Stop()
		if c.pending {
			users, at := c.take()
			out = append(out, merged{users, at})
		}
		delete(p.callers, key)
	}
	p.mu.Unlock()
	for _, m := range out {
		p.send(m.users, m.at)
	}
}

// Callers returns how many callers poked within the last interval (what
// the pacer holds).
func (p *Pacer) Callers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.callers)
}

// add merges a poke for a change at at; p.mu is held.
func (c *paced) add(users []string, at time.Time) {
	if !c.pending || at.Before(c.since) {
		c.since = at
	}
	c.pending = true
	if len(users) == 0 {
		c.all = true
	}
	if c.all {
		c.users = nil
		return
	}
	if c.users == nil {
		c.users = map[string]bool{}
	}
	for _, u := range users {
		c.users[u] = true
	}
	if len(c.users) > maxPendingUsers {
		c.all, c.users = true, nil
	}
}

// take returns what was merged (users nil: everyone; at: the earliest
// change) and clears it; p.mu is held.
func (c *paced) take() (users []string, at time.Time) {
	if !c.all {
		users = make([]string, 0, len(c.users))
		for u := range c.users {
			users = append(users, u)
		}
	}
	at = c.since
	c.pending, c.all, c.users, c.since = false, false, nil, time.Time{}
	return users, at
}
