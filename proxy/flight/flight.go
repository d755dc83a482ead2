// Package flight lets requests that arrive while the same work is running
// share that one run instead of repeating it: the first request for a key
// leads a Flight, later ones board it as riders until the leader seals it,
// and every rider is woken when it lands. The pull engine uses it to answer
// many pulls of one client group from one fetch of the view.
//
// # Contract
//
//   - A Group holds at most one open flight per key. Join boards the
//     key's flight when it is open (not sealed) and accept agrees, or
//     starts a new one whose leader is the caller.
//   - The leader seals the flight (Seal) at the point after which a rider
//     could no longer be served correctly, and gets the riders it has; it
//     then writes each rider's answer into the rider (R is usually a
//     pointer) before it lands the flight (Land). A rider reads its answer
//     only after Wait returns nil: Land happens before Wait returns, so the
//     answers are visible to it.
//   - Land seals the flight if the leader failed before sealing, records
//     the error every rider gets, and removes the flight from its Group.
//     Exactly one Land per flight.
//
// A Group is safe for concurrent use; its zero value is ready.
package flight

import (
	"context"
	"sync"
)

// Group is the open flights, by key.
type Group[M, R any] struct {
	mu   sync.Mutex
	open map[string]*Flight[M, R]
}

// Flight is one run of the work, with the riders that share it.
type Flight[M, R any] struct {
	// Meta is the leader's description of the run, fixed when it starts;
	// accept decides from it whether a newcomer may board.
	Meta M

	g      *Group[M, R]
	key    string
	done   chan struct{}
	sealed bool // guarded by g.mu
	riders []R  // guarded by g.mu until sealed
	err    error
}

// Join boards the open flight for key with rider r when accept(its Meta)
// agrees, or else starts a new flight for key described by meta, with the
// caller as its leader. accept runs under the group's lock: it must be
// quick, and may refuse with an error (returned; nothing is joined).
func (g *Group[M, R]) Join(key string, meta M, r R, accept func(M) (bool, error)) (f *Flight[M, R], leader bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f := g.open[key]; f != nil && !f.sealed {
		ok, err := accept(f.Meta)
		if err != nil {
			return nil, false, err
		}
		if ok {
			f.riders = append(f.riders, r)
			return f, false, nil
		}
	}
	f = &Flight[M, R]{Meta: meta, g: g, key: key, done: make(chan struct{})}
	if g.open == nil {
		g.open = map[string]*Flight[M, R]{}
	}
	g.open[key] = f // a sealed or refused flight runs on without newcomers
	return f, true, nil
}

// Open reports whether key has a flight open to riders now (a newcomer
// that needs to prepare before it may board checks first; the flight may
// be sealed by the time it calls Join).
func (g *Group[M, R]) Open(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := g.open[key]
	return f != nil && !f.sealed
}

// Seal closes f to new riders and returns the riders it has. Later calls
// return the same riders.
func (f *Flight[M, R]) Seal() []R {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	f.sealLocked()
	return f.riders
}

// SealAlone seals f if no rider has joined it, and reports whether it
// did (a flight already sealed without riders counts): for a leader that
// can serve only itself from there on.
func (f *Flight[M, R]) SealAlone() bool {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	if len(f.riders) > 0 {
		return false
	}
	f.sealLocked()
	return true
}

func (f *Flight[M, R]) sealLocked() {
	f.sealed = true
	if f.g.open[f.key] == f {
		delete(f.g.open, f.key)
	}
}

// Land ends the flight with err (nil: every rider's answer is written) and
// wakes the riders.
func (f *Flight[M, R]) Land(err error) {
	f.g.mu.Lock()
	f.sealLocked()
	f.err = err
	f.g.mu.Unlock()
	close(f.done)
}

// Wait waits until the flight lands (returning its error) or ctx ends
// (returning ctx's).
func (f *Flight[M, R]) Wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
