package flight

import (
	"context"
	"sync"
	"time"
)

// Reads shares reads of a value (the counts of routed changes) between
// callers that each need a read begun after they asked: an asker joins
// the read not begun yet, never one under way, so a burst of askers makes
// two reads, not one each. The zero value is ready; it is safe for
// concurrent use.
type Reads[T any] struct {
	mu   sync.Mutex
	next *read[T] // not begun yet: askers join it
	busy bool     // a read is under way (run is going)
}

type read[T any] struct {
	done   chan struct{}
	askers int // Reads.mu
	v      T
	err    error
}

// ReadTimeout bounds one read.
const ReadTimeout = 2 * time.Second

// Read returns the value from a call of fn begun after Read was called
// (fn gets a context bounded by ReadTimeout, not ctx: other askers share
// it), or ctx's error when ctx ends first.
func (r *Reads[T]) Read(ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	r.mu.Lock()
	rd := r.next
	if rd == nil {
		rd = &read[T]{done: make(chan struct{})}
		r.next = rd
	}
	rd.askers++
	if !r.busy {
		r.busy = true
		go r.run(fn)
	}
	r.mu.Unlock()
	select {
	case <-rd.done:
		return rd.v, rd.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// waiting is how many askers wait for the read not begun yet (tests).
func (r *Reads[T]) waiting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next == nil {
		return 0
	}
	return r.next.askers
}

// run makes the reads asked for, one after another, until none is.
func (r *Reads[T]) run(fn func(context.Context) (T, error)) {
	for {
		r.mu.Lock()
		rd := r.next
		if rd == nil {
			r.busy = false
			r.mu.Unlock()
			return
		}
		r.next = nil
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), ReadTimeout)
		rd.v, rd.err = fn(ctx)
		cancel()
		close(rd.done)
	}
}
