// Package poke tells open Replicache clients to pull now: a Hub holds this
// process's subscribers (the poke streams), decides which of them may stay,
// and delivers coalesced pokes to them; a Pacer merges the pokes one caller
// causes; a Bus carries pokes between the sidecar's replicas through
// Postgres LISTEN/NOTIFY on the sidecar's own database.
//
// # Fairness between callers
//
// Streams and pokes are shared by every caller, so each has a rule that one
// caller cannot take them all. Every rule is keyed on the caller's key
// (identity.Caller.Key: the user when known, the client's address
// otherwise), never on a client group or client id, which the caller
// invents at will:
//
//   - A key holds at most Limits.PerKey streams in a process
//     (PerKeyLimit: max(8, Max/64)). A new stream past it ends the key's
//     oldest: the newest tab wins, and a vanished client's stream gives way.
//   - When the process holds Limits.Max streams, a key with no stream can
//     still open one: the oldest stream of the key holding the most ends.
//     A key that holds some opens another only when that evens the
//     holdings out (another key holds at least two more); else ErrFull.
//   - A stream ends after Limits.Lifetime (at a moment spread over its
//     last tenth), so no stream holds a slot for ever.
//   - A stream ended to make room carries a reconnect hint of 30 to 60 s
//     (Subscriber.End), so its client comes back, but not at once.
//   - The pokes one key causes go out at most once per Pacer interval,
//     merged; none is lost.
//
// These rules do not depend on how a stream is written. A writer of one
// stream (Subscribe) watches Subscriber.C for pokes, Subscriber.Ended for
// the hub's decision to end it, and Hub.Done for shutdown; a writer of many
// (SubscribeTo) is told both through a Sink, and watches Hub.Done.
//
// A subscriber costs the hub no goroutine and no timer of its own: the
// lifetimes are kept in one heap, under one timer for the earliest.
package poke

import (
	"container/heap"
	"container/list"
	"errors"
	"hash/fnv"
	mathrand "math/rand/v2"
	"sync"
	"time"
)

// ErrFull: the process holds Limits.Max streams and the caller already
// holds its share of them.
var ErrFull = errors.New("too many poke subscribers")

// ErrClosed: the hub is closed (the process is shutting down).
var ErrClosed = errors.New("poke hub closed")

// Limits bound a hub's subscribers.
type Limits struct {
	// Max is the process's bound (SIDECAR_POKE_MAX_SUBSCRIBERS); 0: none.
	Max int
	// PerKey bounds one key's subscribers; 0: PerKeyLimit(Max).
	PerKey int
	// Lifetime ends a subscriber this long after it subscribed
	// (SIDECAR_POKE_MAX_LIFETIME); 0: never.
	Lifetime time.Duration
	// Spread bounds how long one delivery takes to reach every subscriber
	// it pokes (SIDECAR_POKE_SPREAD): a wave is handed out in batches over
	// up to this long, so the pulls it causes do not all start in the same
	// millisecond (spreadStep per subscriber: 40 streams take 10 ms, 1,000
	// take 250 ms). 0: all at once.
	Spread time.Duration
	// GenerationPerUser: a delivery to some users' subscribers moves
	// only their Generation (SIDECAR_POKE_SCOPE=user, where a write
	// concerns its user alone). false: every delivery moves every user's.
	GenerationPerUser bool
}

// spreadBatch and spreadStep: a delivery pokes spreadBatch subscribers at a
// time, a batch every spreadBatch*spreadStep, within Limits.Spread.
const (
	spreadBatch = 16
	spreadStep  = 250 * time.Microsecond
)

// PerKeyLimit is how many streams one caller may hold in a process that
// holds limit: a 64th of it, and at least 8 (more tabs and devices than
// anyone has open at once), so the process is never shared by fewer than
// 64 callers when it is large, whatever limit is.
func PerKeyLimit(limit int) int { return max(8, limit/64) }

// End says why the hub ended a subscriber.
type End string

const (
	// Evicted: it made room for another stream (past its key's PerKey, or
	// for a caller with fewer streams while the process was full).
	Evicted End = "evicted"
	// Expired: it lived Limits.Lifetime.
	Expired End = "lifetime"
)

// evictedRetry is the reconnect hint of an evicted stream: its client
// comes back after a while, spread so that evicted streams do not all come
// back at once, and not so soon that it evicts another at once.
func evictedRetry() time.Duration {
	return 30*time.Second + mathrand.N(30*time.Second)
}

// Sink is told what the hub decides for one subscriber, in place of
// Subscriber.C and Subscriber.Ended: for a writer that serves many streams
// from one goroutine, which cannot wait on every stream's channels. Its
// methods may be called with the hub's lock held: they must return at once
// and must not call the hub.
type Sink interface {
	// Poke: a poke is due. It may come again before the last one was
	// written: pokes that pile up are one poke.
	Poke()
	// Ended: the hub ended the subscriber (Subscriber.End says why). It
	// comes once; a Poke of a delivery already under way may still follow,
	// and is to be ignored.
	Ended()
}

// Subscriber is one open poke stream: C receives a value when a poke is
// due (it holds at most one: pokes that pile up while the stream writes
// are one poke); Ended is closed when the hub ends the stream (End says
// why). A subscriber with a Sink (SubscribeTo) has neither: its sink is
// told instead.
type Subscriber struct {
	Key  string // the caller's identity.Caller.Key: every rule is per key
	User string // whose pokes it receives
	C    chan struct{}

	sink   Sink
	ended  chan struct{}
	end    End           // set before ended is closed
	retry  time.Duration // ditto
	seq    uint64        // order of subscription: the oldest has the least
	elem   *list.Element // in its key's list; nil once removed (h.mu)
	expiry int64         // the end of its lifetime (UnixNano; 0: none)
	index  int           // in h.expiries; -1: not there (h.mu)
}

// Ended is closed when the hub ends s (not when s unsubscribes, nor at
// shutdown: see Hub.Done). A subscriber with a Sink has none (nil: it
// never closes).
func (s *Subscriber) Ended() <-chan struct{} { return s.ended }

// End says, once Ended is closed, why the hub ended s and how long its
// client should wait before it reconnects (0: the stream's own hint).
func (s *Subscriber) End() (End, time.Duration) { return s.end, s.retry }

// Hub holds the subscribers of one process and delivers pokes to them. The
// first poke after a quiet window (NewHub's window) is delivered at once;
// the pokes that follow within the window are merged and delivered at its
// end, so a burst of mutations is two pokes per subscriber at most and the
// last change of the burst is in the second. A delivery to many
// subscribers is spread over Limits.Spread. A Hub is safe for concurrent
// use.
type Hub struct {
	limits Limits
	window time.Duration

	mu      sync.Mutex
	keys    map[string]*list.List // each key's subscribers, oldest first
	count   int
	seq     uint64
	perUser map[string]int
	gen     uint64             // deliveries to every subscriber so far
	genOf   [genBuckets]uint64 // deliveries to some users' subscribers, by genBucket
	all     bool               // pending: every subscriber
	users   map[string]bool    // pending: these users' subscribers
	armed   bool               // a delivery is scheduled
	last    time.Time          // when the last delivery began
	closed  bool
	done    chan struct{}

	expiries expiries    // subscribers with a lifetime, the earliest first
	expire   *time.Timer // fires at the earliest's end (nil until needed)
}

// NewHub returns a hub for subscribers within limits that coalesces pokes
// over window (0: delivers at once).
func NewHub(limits Limits, window time.Duration) *Hub {
	if limits.PerKey <= 0 {
		limits.PerKey = PerKeyLimit(limits.Max)
	}
	return &Hub{limits: limits, window: window, keys: map[string]*list.List{}, perUser: map[string]int{}, users: map[string]bool{},
		done: make(chan struct{})}
}

// PerKey is how many subscribers one key may hold.
func (h *Hub) PerKey() int { return h.limits.PerKey }

// Subscribe adds a subscriber to user's pokes for the caller whose key is
// key, ending another subscriber to make room when the rules say so (see
// the package doc). It fails with ErrFull when there is no room for this
// key, and ErrClosed after Close.
func (h *Hub) Subscribe(key, user string) (*Subscriber, error) {
	return h.subscribe(key, user, nil)
}

// SubscribeTo is Subscribe for a subscriber whose pokes and end are told
// to sink instead of through channels. sink may be told before
// SubscribeTo returns.
func (h *Hub) SubscribeTo(key, user string, sink Sink) (*Subscriber, error) {
	return h.subscribe(key, user, sink)
}

func (h *Hub) subscribe(key, user string, sink Sink) (*Subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	held := 0
	if l := h.keys[key]; l != nil {
		held = l.Len()
	}
	switch {
	case held >= h.limits.PerKey:
		h.end(h.keys[key].Front().Value.(*Subscriber), Evicted, evictedRetry())
	case h.limits.Max > 0 && h.count >= h.limits.Max:
		most := h.most(key)
		if most == nil || (held > 0 && most.Len() < held+2) {
			return nil, ErrFull
		}
		h.end(most.Front().Value.(*Subscriber), Evicted, evictedRetry())
	}
	h.seq++
	s := &Subscriber{Key: key, User: user, sink: sink, seq: h.seq, index: -1}
	if sink == nil {
		s.C, s.ended = make(chan struct{}, 1), make(chan struct{})
	}
	l := h.keys[key]
	if l == nil {
		l = list.New()
		h.keys[key] = l
	}
	s.elem = l.PushBack(s)
	h.count++
	h.perUser[user]++
	if d := h.limits.Lifetime; d > 0 {
		// Spread over the last tenth, so streams opened together (after a
		// replica restarts) do not all come back together.
		d -= mathrand.N(d/10 + 1)
		s.expiry = time.Now().Add(d).UnixNano()
		heap.Push(&h.expiries, s)
		if s.index == 0 {
			h.armExpiry()
		}
	}
	return s, nil
}

// most returns the subscribers of the key other than except holding the
// most, the one with the oldest stream among equals; nil when there is
// none. It looks at every key, and is called only when the process is
// full: at most Limits.Max of them. h.mu is held.
func (h *Hub) most(except string) *list.List {
	var best *list.List
	for k, l := range h.keys {
		if k == except {
			continue
		}
		if best == nil || l.Len() > best.Len() ||
			(l.Len() == best.Len() && l.Front().Value.(*Subscriber).seq < best.Front().Value.(*Subscriber).seq) {
			best = l
		}
	}
	return best
}

// end removes s and tells its writer why; h.mu is held.
func (h *Hub) end(s *Subscriber, why End, retry time.Duration) {
	if !h.remove(s) {
		return
	}
	s.end, s.retry = why, retry
	if s.sink != nil {
		s.sink.Ended()
		return
	}
	close(s.ended)
}

// remove takes s out of the hub, reporting whether it was in; h.mu is
// held.
func (h *Hub) remove(s *Subscriber) bool {
	if s.elem == nil {
		return false
	}
	l := h.keys[s.Key]
	l.Remove(s.elem)
	s.elem = nil
	if l.Len() == 0 {
		delete(h.keys, s.Key)
	}
	h.count--
	if h.perUser[s.User]--; h.perUser[s.User] <= 0 {
		delete(h.perUser, s.User)
	}
	if s.index >= 0 {
		heap.Remove(&h.expiries, s.index)
	}
	return true
}

// armExpiry sets the hub's one lifetime timer to the earliest end; h.mu is
// held. (A timer that fires early, its subscriber gone, only re-arms.)
func (h *Hub) armExpiry() {
	if len(h.expiries) == 0 {
		return
	}
	d := time.Until(time.Unix(0, h.expiries[0].expiry))
	if h.expire == nil {
		h.expire = time.AfterFunc(d, h.expired)
		return
	}
	h.expire.Reset(d)
}

// expired ends the subscribers whose lifetime is over.
func (h *Hub) expired() {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now().UnixNano()
	for len(h.expiries) > 0 && h.expiries[0].expiry <= now {
		h.end(h.expiries[0], Expired, 0) // removes it from the heap
	}
	h.armExpiry()
}

// expiries is a heap of subscribers by the end of their lifetime; each
// knows its index (Subscriber.index), so one that leaves is removed.
type expiries []*Subscriber

func (e expiries) Len() int           { return len(e) }
func (e expiries) Less(i, j int) bool { return e[i].expiry < e[j].expiry }
func (e expiries) Swap(i, j int) {
	e[i], e[j] = e[j], e[i]
	e[i].index, e[j].index = i, j
}

func (e *expiries) Push(x any) {
	s := x.(*Subscriber)
	s.index = len(*e)
	*e = append(*e, s)
}

func (e *expiries) Pop() any {
	old := *e
	s := old[len(old)-1]
	old[len(old)-1] = nil
	s.index = -1
	*e = old[:len(old)-1]
	return s
}

// Unsubscribe removes s (its stream ended); again, or after the hub ended
// it, it does nothing.
func (h *Hub) Unsubscribe(s *Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(s)
}

// Generation counts the deliveries so far that reached user's
// subscribers: those to every subscriber, and those to user's (counted
// per genBucket of the user id, so a delivery to a user sharing the
// bucket counts too); without Limits.GenerationPerUser, every delivery. A pull of user that starts after such a delivery
// sees a larger one than any work begun before it; a delivery only to
// other users' subscribers (SIDECAR_POKE_SCOPE=user) mostly leaves it as
// it was.
func (h *Hub) Generation(user string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gen + h.genOf[genBucket(user)]
}

// genBuckets is how many counts users' deliveries are spread over: users
// sharing one only see each other's deliveries in Generation.
const genBuckets = 64

func genBucket(user string) int {
	f := fnv.New32a()
	_, _ = f.Write([]byte(user))
	return int(f.Sum32() % genBuckets)
}

// Count returns the number of subscribers.
func (h *Hub) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
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
	wait := h.window - time.Since(h.last)
	h.mu.Unlock()
	if wait <= 0 {
		h.flush() // the first poke of a quiet window: at once
		return
	}
	time.AfterFunc(wait, h.flush) // within the window: merged, at its end
}

// flush delivers what is pending: at once to a few subscribers, spread
// over Limits.Spread to many.
func (h *Hub) flush() {
	h.mu.Lock()
	all, users := h.all, h.users
	h.all, h.users, h.armed = false, map[string]bool{}, false
	if all || !h.limits.GenerationPerUser || users[""] {
		// Every user's: a delivery naming no known user counts for
		// everyone, as its count of routed changes does (store).
		h.gen++
	} else {
		var bumped [genBuckets]bool
		for u := range users {
			if b := genBucket(u); !bumped[b] {
				bumped[b] = true
				h.genOf[b]++
			}
		}
	}
	h.last = time.Now()
	var to []*Subscriber
	for _, l := range h.keys {
		for e := l.Front(); e != nil; e = e.Next() {
			if s := e.Value.(*Subscriber); all || users[s.User] {
				to = append(to, s)
			}
		}
	}
	h.mu.Unlock()
	if len(to) <= spreadBatch || h.limits.Spread <= 0 {
		poke(to)
		return
	}
	// Batches at even intervals, the last within Spread: each tick hands
	// out the batches due by then, so a tick that comes late (a busy
	// process) does not push the rest of the wave later.
	every := max(1, min(spreadBatch*spreadStep, h.limits.Spread*spreadBatch/time.Duration(len(to))))
	start := time.Now()
	poke(to[:spreadBatch])
	go func() {
		t := time.NewTicker(max(every, time.Millisecond/4))
		defer t.Stop()
		for done := spreadBatch; done < len(to); {
			<-t.C
			due := min(len(to), spreadBatch*(1+int(time.Since(start)/every)))
			poke(to[done:due])
			done = due
		}
	}()
}

// poke tells each subscriber a poke is due (one pending is enough).
func poke(subs []*Subscriber) {
	for _, s := range subs {
		if s.sink != nil {
			s.sink.Poke()
			continue
		}
		select {
		case s.C <- struct{}{}:
		default: // one is already due
		}
	}
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
