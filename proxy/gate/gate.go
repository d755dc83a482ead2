// Package gate makes the requests of one client group take turns inside
// the process before they take a database connection. A request that must
// wait for its group waits here, in arrival order, holding nothing; the
// Postgres row lock then only settles the order between replicas. So a
// queue on one group never drains the connection pool for the others.
package gate

import (
	"context"
	"errors"
	"sync"
)

// ErrBusy: the group already has as many waiting requests as allowed.
var ErrBusy = errors.New("too many requests are waiting for this client group")

// Gate admits at most Slots requests per key at once and lets at most
// MaxWaiting more wait per key, and RidersPerWaiting times as many ride
// (Ride). It is safe for concurrent use.
type Gate struct {
	slots, maxWaiting int

	mu      sync.Mutex
	keys    map[string]*queue
	waiting int // over all keys
	busy    int64
}

type queue struct {
	holders int
	waiters []*waiter // in arrival order
	riders  int       // waiting without needing a slot (Ride)
}

type waiter struct {
	ready  chan struct{}
	handed bool // given a slot by a release
}

// RidersPerWaiting bounds the requests that ride per key (Ride), as a
// multiple of maxWaiting: a rider holds no slot, connection or lock, only
// its request, while it waits for a fetch under way; a poke that reaches
// a thousand clients of one group makes a thousand pulls that should ride
// one or two fetches, not wait their turns.
const RidersPerWaiting = 32

// New returns a gate of slots per key, with at most maxWaiting waiting per
// key and RidersPerWaiting × maxWaiting riding.
func New(slots, maxWaiting int) *Gate {
	return &Gate{slots: max(slots, 1), maxWaiting: maxWaiting, keys: map[string]*queue{}}
}

// Enter waits for one of key's slots, in arrival order, and returns the
// function that gives it back. It fails at once with ErrBusy when key has
// MaxWaiting requests waiting already, and with ctx's error when ctx ends
// first.
func (g *Gate) Enter(ctx context.Context, key string) (release func(), err error) {
	g.mu.Lock()
	q := g.keys[key]
	if q == nil {
		q = &queue{}
		g.keys[key] = q
	}
	if q.holders < g.slots && len(q.waiters) == 0 {
		q.holders++
		g.mu.Unlock()
		return g.releaser(key, q), nil
	}
	if len(q.waiters) >= g.maxWaiting {
		g.busy++
		g.mu.Unlock()
		return nil, ErrBusy
	}
	w := &waiter{ready: make(chan struct{})}
	q.waiters = append(q.waiters, w)
	g.waiting++
	g.mu.Unlock()

	select {
	case <-w.ready:
		return g.releaser(key, q), nil
	case <-ctx.Done():
		g.mu.Lock()
		if w.handed {
			// A release gave us the slot as we gave up: pass it on.
			g.mu.Unlock()
			g.releaser(key, q)()
			return nil, ctx.Err()
		}
		for i, x := range q.waiters {
			if x == w {
				q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
				break
			}
		}
		g.waiting--
		g.forget(key, q)
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}

// releaser gives a slot back once: to the first waiter if any.
func (g *Gate) releaser(key string, q *queue) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if len(q.waiters) > 0 {
				w := q.waiters[0]
				q.waiters = q.waiters[1:]
				g.waiting--
				w.handed = true
				close(w.ready)
				return
			}
			q.holders--
			g.forget(key, q)
		})
	}
}

// Ride counts one more request waiting for key without needing a slot (a
// pull answered from another pull's fetch), within RidersPerWaiting ×
// MaxWaiting. The returned function ends the wait.
func (g *Gate) Ride(key string) (done func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	q := g.keys[key]
	if q == nil {
		q = &queue{}
		g.keys[key] = q
	}
	if q.riders >= RidersPerWaiting*g.maxWaiting {
		g.busy++
		g.forget(key, q)
		return nil, ErrBusy
	}
	q.riders++
	g.waiting++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			q.riders--
			g.waiting--
			g.forget(key, q)
		})
	}, nil
}

// forget drops an idle key's queue; g.mu is held.
func (g *Gate) forget(key string, q *queue) {
	if q.holders == 0 && len(q.waiters) == 0 && q.riders == 0 && g.keys[key] == q {
		delete(g.keys, key)
	}
}

// Waiting is the number of requests waiting, over all keys.
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// Busy counts the requests refused with ErrBusy.
func (g *Gate) Busy() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.busy
}

// Keys is the number of keys with holders or waiters (for tests: nothing is
// left behind).
func (g *Gate) Keys() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.keys)
}
