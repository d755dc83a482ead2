package upstream

import (
	"context"
	"sync"
	"time"
)

// limiter bounds the upstream requests in flight at once
// (SIDECAR_UPSTREAM_MAX_INFLIGHT) and hands free slots out in turn between
// callers: each caller waiting has its own queue, and a freed slot goes to
// the next caller in a round, not to whoever asked first. A poke that makes
// a thousand clients pull at once becomes a ramp the API can absorb, and
// one client group's many pages do not hold back everyone else's.
//
// With max 0 it admits everything and only counts what is in flight. It
// is safe for concurrent use.
type limiter struct {
	max int // 0: no bound

	mu       sync.Mutex
	inFlight int
	queues   map[string][]*slotWait // by caller
	round    []string               // callers with waiters, in turn order
}

type slotWait struct {
	ready  chan struct{}
	handed bool // a release gave this waiter the slot
}

func newLimiter(max int) *limiter {
	return &limiter{max: max, queues: map[string][]*slotWait{}}
}

// acquire waits for a slot for caller until ctx ends, and returns the
// function that gives it back (once).
func (l *limiter) acquire(ctx context.Context, caller string) (release func(), err error) {
	l.mu.Lock()
	if l.max <= 0 || l.inFlight < l.max && len(l.round) == 0 {
		l.inFlight++
		l.mu.Unlock()
		return l.releaser(), nil
	}
	w := &slotWait{ready: make(chan struct{})}
	if len(l.queues[caller]) == 0 {
		l.round = append(l.round, caller)
	}
	l.queues[caller] = append(l.queues[caller], w)
	l.mu.Unlock()
	select {
	case <-w.ready:
		return l.releaser(), nil
	case <-ctx.Done():
		l.mu.Lock()
		if w.handed {
			l.mu.Unlock()
			l.releaser()() // handed to us as we gave up: pass it on
			return nil, ctx.Err()
		}
		q := l.queues[caller]
		for i, x := range q {
			if x == w {
				q = append(q[:i], q[i+1:]...)
				break
			}
		}
		l.setQueue(caller, q)
		l.mu.Unlock()
		return nil, ctx.Err()
	}
}

// releaser gives one slot back, to the next caller in the round if any.
func (l *limiter) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if len(l.round) == 0 {
				l.inFlight--
				return
			}
			caller := l.round[0]
			l.round = l.round[1:]
			q := l.queues[caller]
			w := q[0]
			l.setQueue(caller, q[1:])
			if len(q) > 1 {
				l.round = append(l.round, caller) // its next waiter, after the others
			}
			w.handed = true
			close(w.ready)
		})
	}
}

// setQueue stores caller's queue, dropping the caller from the round when
// it is empty; l.mu is held.
func (l *limiter) setQueue(caller string, q []*slotWait) {
	if len(q) > 0 {
		l.queues[caller] = q
		return
	}
	delete(l.queues, caller)
	for i, c := range l.round {
		if c == caller {
			l.round = append(l.round[:i], l.round[i+1:]...)
			break
		}
	}
}

// inFlightNow is the number of slots held (for the gauge).
func (l *limiter) inFlightNow() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inFlight
}

type callerKey struct{}

// WithCaller returns ctx naming who the upstream calls made with it are
// for: the key the limiter's turns are taken by (identity.Caller.Key).
func WithCaller(ctx context.Context, caller string) context.Context {
	return context.WithValue(ctx, callerKey{}, caller)
}

func callerOf(ctx context.Context) string {
	c, _ := ctx.Value(callerKey{}).(string)
	return c
}

// waitBound bounds how long a call waits for a slot when its context has
// no deadline of its own: as long as a call may take.
func waitBound(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, timeout)
}
