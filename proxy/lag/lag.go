// Package lag measures how long a change takes to reach the clients it
// pokes: from when the sidecar knows of it (a push's commit, a write
// through the pass-through, the invalidate hook, or another replica's
// announcement of one of those) to the pull that answers it, per client
// group with a poke stream open in this process.
//
// # Definition
//
// A change at time T pokes the streams of some users (or everyone's). For
// each client group one of whose poke streams here it pokes, the first
// pull of that group that this process answers after T, and that read the
// view after T, observes its completion − T. Several changes answered by
// one pull are observed once, from the earliest: the lag of the change that
// waited longest.
//
// What is not observed, rather than observed wrongly:
//
//   - A group whose client pulls through another replica than the one
//     holding its stream (no session affinity): the replica holding the
//     stream sees the group's cookie order move past what it issued (a
//     pull elsewhere may have answered the change, at a time it cannot
//     know), and forgets the change without observing it. So does a
//     change that came before the first pull of the group this replica
//     answered since the stream opened.
//   - A group whose streams all end: its pending change is forgotten.
//   - Streams that name no group (the client group is named by the
//     stream's clientGroupID query parameter).
//
// A change announced by another replica is dated by that replica's clock
// but never later than when this replica heard of it (poke.Bus clamps
// it), so a clock ahead of this one's cannot make a lag negative; a clock
// behind this one's makes the lags it causes look longer by the skew.
//
// # Bounds
//
// A Tracker holds one entry per (group, user) with a stream open in this
// process: at most as many as the process holds streams
// (SIDECAR_POKE_MAX_SUBSCRIBERS), each a few words, and it is dropped
// with the last of its streams. A stream is counted under the user it was
// identified as, and a pull observes only the entry of its own user: a
// caller naming another user's group in its stream can neither cause nor
// hide that group's observations.
package lag

import (
	"sync"
	"time"
)

// Tracker follows the changes that poke each client group with a stream
// in this process until a pull answers them. It is safe for concurrent
// use.
type Tracker struct {
	observe func(seconds float64)

	mu      sync.Mutex
	entries map[key]*entry
	byUser  map[string]map[string]*entry // user → group → entry
}

type key struct{ group, user string }

// entry is one group's streams of one user, and what is pending for it.
type entry struct {
	streams int
	// order is the group's cookie order as of the last pull of it this
	// process answered (the highest it issued then); -1 before the first.
	order int64
	// pending is when the earliest change not yet answered happened
	// (zero: none).
	pending time.Time
}

// New returns a tracker that reports each observed lag, in seconds, to
// observe (a histogram's Observe), never negative.
func New(observe func(seconds float64)) *Tracker {
	return &Tracker{observe: observe, entries: map[key]*entry{}, byUser: map[string]map[string]*entry{}}
}

// Open notes a poke stream of user that names group, until the returned
// function is called (once, when the stream ends). A stream that names
// no group ("") is not tracked.
func (t *Tracker) Open(group, user string) (closeStream func()) {
	if group == "" {
		return func() {}
	}
	k := key{group, user}
	t.mu.Lock()
	e := t.entries[k]
	if e == nil {
		e = &entry{order: -1}
		t.entries[k] = e
		if t.byUser[user] == nil {
			t.byUser[user] = map[string]*entry{}
		}
		t.byUser[user][group] = e
	}
	e.streams++
	t.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { t.close(k) }) }
}

func (t *Tracker) close(k key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[k]
	if e == nil {
		return
	}
	if e.streams--; e.streams > 0 {
		return
	}
	delete(t.entries, k)
	delete(t.byUser[k.user], k.group)
	if len(t.byUser[k.user]) == 0 {
		delete(t.byUser, k.user)
	}
}

// Streams returns how many streams of user naming group are open in this
// process.
func (t *Tracker) Streams(group, user string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entries[key{group, user}]; e != nil {
		return e.streams
	}
	return 0
}

// Changed notes a change that happened at at (never later than now) and
// pokes the streams of users (none: everyone's).
func (t *Tracker) Changed(users []string, at time.Time) {
	if now := time.Now(); at.After(now) {
		at = now
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	mark := func(e *entry) {
		if e.pending.IsZero() || at.Before(e.pending) {
			e.pending = at
		}
	}
	if len(users) == 0 {
		for _, e := range t.entries {
			mark(e)
		}
		return
	}
	for _, u := range users {
		for _, e := range t.byUser[u] {
			mark(e)
		}
	}
}

// Answered notes a pull of group by user, answered at done from a view
// read from readAt on: before is the group's cookie order before the pull
// (as its transaction found it), issued the order its cookie got. It
// observes the pending change's lag when this pull answers it (see the
// package doc).
func (t *Tracker) Answered(group, user string, before, issued int64, readAt, done time.Time) {
	t.mu.Lock()
	e := t.entries[key{group, user}]
	if e == nil {
		t.mu.Unlock()
		return
	}
	var lag time.Duration
	observed := false
	if !e.pending.IsZero() {
		switch {
		case e.order < 0 || before > e.order:
			// A pull this process did not answer came in between: it may
			// have answered the change, when is not known here.
			e.pending = time.Time{}
		case !readAt.Before(e.pending):
			lag, observed = max(0, done.Sub(e.pending)), true
			e.pending = time.Time{}
		}
	}
	e.order = max(e.order, issued)
	t.mu.Unlock()
	if observed {
		t.observe(lag.Seconds())
	}
}
