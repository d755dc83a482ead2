// Package poke tells open Replicache clients to pull now: a Hub holds this
// process's subscribers (the poke streams) and delivers coalesced pokes to
// them; a Bus carries pokes between the sidecar's replicas through
// Postgres LISTEN/NOTIFY on the sidecar's own database.
package poke

import (
	"errors"
	"sync"
	"time"
)

// ErrFull: the process already holds its maximum of subscribers.
var ErrFull = errors.New("too many poke subscribers")

// ErrUserFull: the user already holds MaxPerUser subscribers here.
var ErrUserFull = errors.New("too many poke subscribers for this user")

// MaxPerUser bounds one user's streams in one process, so one user (or a
// leaked token) cannot take every slot: far more tabs and devices than
// anyone has open.
const MaxPerUser = 100

// ErrClosed: the hub is closed (the process is shutting down).
var ErrClosed = errors.New("poke hub closed")

// Subscriber is one open poke stream: C receives a value when a poke is
// due (it holds at most one: pokes that pile up while the stream writes
// are one poke).
type Subscriber struct {
	User string
	C    chan struct{}
}

// Hub holds the subscribers of one process and delivers pokes to them. A
// poke is not sent at once: every poke within a window (NewHub's window)
// is merged and delivered at the window's end, so a burst of mutations is
// one poke per subscriber and the last change of the burst is in it.
type Hub struct {
	max    int
	window time.Duration

	mu      sync.Mutex
	subs    map[*Subscriber]struct{}
	perUser map[string]int
	gen     uint64          // deliveries so far
	all     bool            // pending: every subscriber
	users   map[string]bool // pending: these users' subscribers
	armed   bool            // a delivery is scheduled
	closed  bool
	done    chan struct{}
}

// NewHub returns a hub for at most max subscribers (0: no limit) that
// coalesces pokes over window (0: delivers at once).
func NewHub(max int, window time.Duration) *Hub {
	return &Hub{max: max, window: window, subs: map[*Subscriber]struct{}{}, perUser: map[string]int{}, users: map[string]bool{},
		done: make(chan struct{})}
}

// Subscribe adds a subscriber for user's pokes.
func (h *Hub) Subscribe(user string) (*Subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return nil, ErrClosed
	case h.max > 0 && len(h.subs) >= h.max:
		return nil, ErrFull
	case h.perUser[user] >= MaxPerUser:
		return nil, ErrUserFull
	}
	s := &Subscriber{User: user, C: make(chan struct{}, 1)}
	h.subs[s] = struct{}{}
	h.perUser[user]++
	return s, nil
}

// Unsubscribe removes s.
func (h *Hub) Unsubscribe(s *Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	if h.perUser[s.User]--; h.perUser[s.User] <= 0 {
		delete(h.perUser, s.User)
	}
}

// Generation counts the deliveries so far: a pull that starts after a
// delivery sees a larger one than any work begun before it.
func (h *Hub) Generation() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gen
}

// Count returns the number of subscribers.
func (h *Hub) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Poke pokes the subscribers of users (none: every subscriber) at the end
// of the current window.
func (h *Hub) Poke(users []string) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	if len(users) == 0 {
		h.all = true
	}
	for _, u := range users {
		h.users[u] = true
	}
	if len(h.users) > len(h.perUser) && len(h.users) > maxPendingUsers {
		h.all = true // more users than could be subscribed here
		clear(h.users)
	}
	if h.armed {
		h.mu.Unlock()
		return
	}
	h.armed = true
	h.mu.Unlock()
	if h.window <= 0 {
		h.flush()
		return
	}
	time.AfterFunc(h.window, h.flush)
}

// flush delivers what is pending.
func (h *Hub) flush() {
	h.mu.Lock()
	all, users := h.all, h.users
	h.all, h.users, h.armed = false, map[string]bool{}, false
	h.gen++
	for s := range h.subs {
		if !all && !users[s.User] {
			continue
		}
		select {
		case s.C <- struct{}{}:
		default: // one is already due
		}
	}
	h.mu.Unlock()
}

// Close ends every stream (Done closes) and refuses new subscribers: at
// shutdown, so clients reconnect to another replica.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// Done is closed when the hub is.
func (h *Hub) Done() <-chan struct{} { return h.done }
