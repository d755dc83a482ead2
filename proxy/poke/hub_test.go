package poke

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func received(s *Subscriber, within time.Duration) bool {
	select {
	case <-s.C:
		return true
	case <-time.After(within):
		return false
	}
}

func mustSubscribe(t *testing.T, h *Hub, key string) *Subscriber {
	t.Helper()
	s, err := h.Subscribe(key, key)
	if err != nil {
		t.Fatalf("Subscribe(%s): %v", key, err)
	}
	return s
}

func TestHub(t *testing.T) {
	h := NewHub(Limits{Max: 3}, 30*time.Millisecond)
	alice := mustSubscribe(t, h, "alice")
	bob := mustSubscribe(t, h, "bob")
	// A burst after a quiet window: the first poke at once (leading edge),
	// the other 49 merged into one more at the window's end, no third.
	start := time.Now()
	for range 50 {
		h.Poke(nil)
	}
	if !received(alice, time.Second) || !received(bob, time.Second) {
		t.Fatal("a burst of pokes did not reach both subscribers")
	}
	if waited := time.Since(start); waited > 20*time.Millisecond {
		t.Errorf("the first poke of a quiet window came after %v, want at once", waited)
	}
	if !received(alice, time.Second) {
		t.Fatal("the rest of the burst was not delivered at the window's end")
	}
	if waited := time.Since(start); waited < 25*time.Millisecond {
		t.Errorf("the rest of the burst came after %v, before the 30ms window ended", waited)
	}
	_ = received(bob, time.Second)
	if received(alice, 100*time.Millisecond) {
		t.Error("50 pokes in one window delivered more than two pokes")
	}
	time.Sleep(40 * time.Millisecond) // quiet again
	// A user's poke reaches only that user's subscribers.
	h.Poke([]string{"bob"})
	if !received(bob, time.Second) || received(alice, 100*time.Millisecond) {
		t.Error("a poke for bob did not reach bob only")
	}
	h.Unsubscribe(bob)
	h.Unsubscribe(bob) // twice: counted once
	if h.Count() != 1 {
		t.Errorf("count %d after one left, want 1", h.Count())
	}
	h.Close()
	select {
	case <-h.Done():
	default:
		t.Error("Done is not closed after Close")
	}
	if _, err := h.Subscribe("erin", "erin"); !errors.Is(err, ErrClosed) {
		t.Errorf("subscribe after Close: %v, want ErrClosed", err)
	}
}

func TestPerKeyLimit(t *testing.T) {
	for _, tc := range []struct{ limit, want int }{
		{0, 8},       // no process bound (tests): the floor
		{100, 8},     // a small process: still 8 tabs and devices
		{2000, 31},   // deploy/'s bound: 64 callers at least fill it
		{10000, 156}, // the default
	} {
		if got := PerKeyLimit(tc.limit); got != tc.want {
			t.Errorf("PerKeyLimit(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

// TestHubFairness: who may open a stream, and whose stream ends to make
// room. Each step subscribes for a key; it either fails with ErrFull or
// succeeds, possibly ending the stream opened at an earlier step.
func TestHubFairness(t *testing.T) {
	type step struct {
		key    string
		full   bool // refused with ErrFull
		evicts int  // the step whose stream ends to make room; -1: none
	}
	ok := func(key string) step { return step{key: key, evicts: -1} }
	tests := []struct {
		name   string
		limits Limits
		steps  []step
	}{
		{
			// Past its own cap a key's newest stream replaces its oldest:
			// the newest tab wins, and a vanished client gives way.
			name: "per key: the key's oldest ends", limits: Limits{PerKey: 2},
			steps: []step{ok("a"), ok("a"), {key: "a", evicts: 0}, ok("b")},
		},
		{
			// Finding 5: a caller with no stream can always open one; the
			// oldest stream of whoever holds the most ends.
			name: "full: a newcomer ends the biggest holder's oldest", limits: Limits{Max: 4},
			steps: []step{ok("m"), ok("b"), ok("m"), ok("m"), {key: "c", evicts: 0}},
		},
		{
			// Among equal holders, the one with the oldest stream gives
			// way: the longest served.
			name: "full: ties go to the oldest stream", limits: Limits{Max: 4},
			steps: []step{ok("x"), ok("y"), ok("y"), ok("x"), {key: "z", evicts: 0}},
		},
		{
			// Even when every key holds one stream (more callers than
			// slots), a caller with none gets in.
			name: "full of single streams: a newcomer still gets in", limits: Limits{Max: 3},
			steps: []step{ok("a"), ok("b"), ok("c"), {key: "d", evicts: 0}},
		},
		{
			// A holder gets another stream only when that evens the
			// holdings out: b (1) may take one of m's (3).
			name: "full: a small holder evens out", limits: Limits{Max: 4},
			steps: []step{ok("m"), ok("m"), ok("m"), ok("b"), {key: "b", evicts: 0}},
		},
		{
			// ... but not when it would only swap who holds more: b (2)
			// against m (2) is refused, or they would evict each other.
			name: "full: no swapping between equals", limits: Limits{Max: 4},
			steps: []step{ok("m"), ok("m"), ok("b"), ok("b"), {key: "b", full: true, evicts: -1}},
		},
		{
			// The biggest holder is refused: that is what the 503 is for.
			name: "full: the biggest holder is refused", limits: Limits{Max: 3},
			steps: []step{ok("m"), ok("m"), ok("b"), {key: "m", full: true, evicts: -1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHub(tc.limits, 0)
			subs := make([]*Subscriber, len(tc.steps))
			evicted := map[int]bool{}
			for i, st := range tc.steps {
				s, err := h.Subscribe(st.key, st.key)
				if st.full != errors.Is(err, ErrFull) || (err != nil && !st.full) {
					t.Fatalf("step %d (%s): %v, want full=%v", i, st.key, err, st.full)
				}
				subs[i] = s
				if st.evicts < 0 {
					continue
				}
				evicted[st.evicts] = true
				victim := subs[st.evicts]
				select {
				case <-victim.Ended():
				default:
					t.Fatalf("step %d did not end step %d's stream", i, st.evicts)
				}
				why, retry := victim.End()
				if why != Evicted || retry < 30*time.Second || retry > time.Minute {
					t.Errorf("ended with %s, reconnect hint %v; want evicted, 30–60 s", why, retry)
				}
				h.Unsubscribe(victim) // its writer's defer: a no-op now
			}
			live := 0
			for i, s := range subs {
				if s == nil {
					continue
				}
				ended := false
				select {
				case <-s.Ended():
					ended = true
				default:
					live++
				}
				if ended != evicted[i] {
					t.Errorf("step %d's stream ended: %v, want %v", i, ended, evicted[i])
				}
			}
			if h.Count() != live {
				t.Errorf("Count() = %d, but %d streams are live", h.Count(), live)
			}
		})
	}
}

// TestHubLifetime: a subscriber ends after Limits.Lifetime (spread over
// its last tenth) with no reconnect hint of its own; one that leaves
// before is forgotten, timer and all.
func TestHubLifetime(t *testing.T) {
	h := NewHub(Limits{Max: 10, Lifetime: 100 * time.Millisecond}, 0)
	start := time.Now()
	s := mustSubscribe(t, h, "alice")
	gone := mustSubscribe(t, h, "bob")
	h.Unsubscribe(gone)
	select {
	case <-s.Ended():
	case <-time.After(5 * time.Second):
		t.Fatal("a subscriber outlived its lifetime")
	}
	if lived := time.Since(start); lived < 90*time.Millisecond {
		t.Errorf("ended after %v, before 90%% of its 100ms lifetime", lived)
	}
	if why, retry := s.End(); why != Expired || retry != 0 {
		t.Errorf("End() = %s, %v; want lifetime, 0", why, retry)
	}
	if n := h.Count(); n != 0 {
		t.Errorf("%d subscribers after the only one expired", n)
	}
	select {
	case <-gone.Ended():
		t.Error("a subscriber that left was ended by its lifetime")
	default:
	}
}

// TestHubManyKeys: the per-key bookkeeping stays consistent through
// churn: every subscriber that leaves frees its slot once.
func TestHubManyKeys(t *testing.T) {
	h := NewHub(Limits{Max: 64}, 0)
	var subs []*Subscriber
	for i := range 200 {
		s, err := h.Subscribe(fmt.Sprint("k", i%20), "u")
		if err != nil {
			continue
		}
		subs = append(subs, s)
	}
	if n := h.Count(); n != 64 {
		t.Fatalf("%d subscribers, want the process's 64", n)
	}
	for _, s := range subs {
		h.Unsubscribe(s)
	}
	if n := h.Count(); n != 0 {
		t.Errorf("%d subscribers after all left", n)
	}
	if len(h.keys) != 0 || len(h.perUser) != 0 {
		t.Errorf("bookkeeping left behind: %d keys, %d users", len(h.keys), len(h.perUser))
	}
}

func TestChannel(t *testing.T) {
	if c := Channel("replicache"); c != "replicache_sidecar_replicache" {
		t.Errorf("Channel(replicache) = %q", c)
	}
	long := Channel("a_schema_name_that_is_long_enough_to_push_the_channel_over_63_bytes")
	if len(long) > 63 || long == Channel("another_schema_name_that_is_long_enough_to_push_it_over_63_bytes") {
		t.Errorf("long channel %q: over 63 bytes, or the same for two schemas", long)
	}
}

// TestSpread: a delivery to many subscribers is handed out over Spread (not
// all in the same millisecond); one to a few is at once.
func TestSpread(t *testing.T) {
	h := NewHub(Limits{Max: 1000, PerKey: 1000, Spread: 100 * time.Millisecond}, 0)
	var subs []*Subscriber
	for i := range 400 {
		subs = append(subs, mustSubscribe(t, h, fmt.Sprint("u", i)))
	}
	start := time.Now()
	h.Poke(nil)
	// Sweep the subscribers until each was poked: how many the first sweep
	// that found any found says whether the wave went out at once, the time
	// between the first and the last whether it was spread. (Ratios, not
	// absolute times: the race detector and a busy machine slow everything.)
	poked := make([]bool, len(subs))
	var firstSweep, n int
	var first, last time.Duration
	for n < len(subs) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d of %d subscribers poked after 5s", n, len(subs))
		}
		found := 0
		for i, s := range subs {
			if poked[i] {
				continue
			}
			select {
			case <-s.C:
				poked[i], found = true, found+1
			default:
			}
		}
		if found > 0 {
			now := time.Since(start)
			if n == 0 {
				first, firstSweep = now, found
			}
			n += found
			last = now
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("400 subscribers: the first %d poked after %v, the last after %v", firstSweep, first, last)
	if firstSweep > len(subs)/2 || last-first < 50*time.Millisecond {
		t.Errorf("the first sweep found %d of %d poked, the wave took %v: want it spread over about 100 ms", firstSweep, len(subs), last-first)
	}
}

// sink records what the hub tells a SubscribeTo subscriber.
type sink struct {
	pokes atomic.Int64
	ended atomic.Int64
}

func (s *sink) Poke()  { s.pokes.Add(1) }
func (s *sink) Ended() { s.ended.Add(1) }

// TestHubSinks: a subscriber with a Sink is told its pokes and its end
// instead of through channels, under the same rules: a poke for its user
// or everyone, eviction past its key's share (told once, with the
// reconnect hint), nothing once it left.
func TestHubSinks(t *testing.T) {
	h := NewHub(Limits{Max: 10, PerKey: 1}, 0)
	var first, second, bob sink
	s1, err := h.SubscribeTo("alice", "alice", &first)
	if err != nil {
		t.Fatal(err)
	}
	if s1.C != nil || s1.Ended() != nil {
		t.Error("a subscriber with a sink has channels")
	}
	sb, _ := h.SubscribeTo("bob", "bob", &bob)
	h.Poke([]string{"alice"})
	if first.pokes.Load() != 1 || bob.pokes.Load() != 0 {
		t.Errorf("a poke for alice: alice told %d, bob %d; want 1, 0", first.pokes.Load(), bob.pokes.Load())
	}
	if _, err := h.SubscribeTo("alice", "alice", &second); err != nil {
		t.Fatal(err)
	}
	if first.ended.Load() != 1 {
		t.Fatalf("alice's first subscriber past her share: told its end %d times, want 1", first.ended.Load())
	}
	if why, retry := s1.End(); why != Evicted || retry < 30*time.Second {
		t.Errorf("End() = %s, %v; want evicted with a hint of 30 s or more", why, retry)
	}
	h.Unsubscribe(sb)
	h.Poke(nil)
	if first.pokes.Load() != 1 || second.pokes.Load() != 1 || bob.pokes.Load() != 0 {
		t.Errorf("a poke for everyone told the ended one %d, the new one %d, the one that left %d; want 1, 1, 0",
			first.pokes.Load(), second.pokes.Load(), bob.pokes.Load())
	}
	if first.ended.Load() != 1 || bob.ended.Load() != 0 {
		t.Error("an end was told twice, or to a subscriber that left")
	}
}

// TestHubLifetimesInOrder: many subscribers with lifetimes share one timer;
// each ends after its own lifetime whatever the order they subscribed and
// left in, and the ones that left are not ended.
func TestHubLifetimesInOrder(t *testing.T) {
	h := NewHub(Limits{Lifetime: 150 * time.Millisecond}, 0)
	start := time.Now()
	var subs []*Subscriber
	for i := range 50 {
		subs = append(subs, mustSubscribe(t, h, fmt.Sprint("k", i)))
		if i == 25 {
			time.Sleep(50 * time.Millisecond) // a later half, ending later
		}
	}
	for i := 0; i < 50; i += 3 {
		h.Unsubscribe(subs[i])
	}
	for i, s := range subs {
		if i%3 == 0 {
			continue
		}
		select {
		case <-s.Ended():
		case <-time.After(5 * time.Second):
			t.Fatalf("subscriber %d outlived its lifetime", i)
		}
		floor := 135 * time.Millisecond // 90% of its lifetime
		if i > 25 {
			floor += 50 * time.Millisecond
		}
		if lived := time.Since(start); lived < floor {
			t.Errorf("subscriber %d ended after %v, before %v", i, lived, floor)
		}
	}
	for i := 0; i < 50; i += 3 {
		select {
		case <-subs[i].Ended():
			t.Errorf("subscriber %d left, and was ended by its lifetime", i)
		default:
		}
	}
	if n := h.Count(); n != 0 || len(h.expiries) != 0 {
		t.Errorf("%d subscribers, %d lifetimes after all ended", n, len(h.expiries))
	}
}

// TestGenerationPerUser: a delivery to every subscriber moves every user's
// generation; with GenerationPerUser, a delivery to some users'
// subscribers moves theirs (and those of users sharing their bucket), not
// another's; without it, every user's.
func TestGenerationPerUser(t *testing.T) {
	t.Parallel()
	if genBucket("alice") == genBucket("bob") {
		t.Fatal("the test's users share a bucket; pick others")
	}
	h := NewHub(Limits{Max: 10, GenerationPerUser: true}, 0) // no window: delivered at once
	a0, b0 := h.Generation("alice"), h.Generation("bob")
	h.Poke([]string{"bob"})
	if a, b := h.Generation("alice"), h.Generation("bob"); a != a0 || b != b0+1 {
		t.Errorf("after a delivery to bob: alice %d → %d, bob %d → %d; want alice unchanged, bob one more", a0, a, b0, b)
	}
	h.Poke(nil)
	if a, b := h.Generation("alice"), h.Generation("bob"); a != a0+1 || b != b0+2 {
		t.Errorf("after a delivery to everyone: alice %d → %d, bob %d → %d; want each one more", a0, a, b0, b)
	}
	h.Poke([]string{"alice", "bob", "alice"})
	if a, b := h.Generation("alice"), h.Generation("bob"); a != a0+2 || b != b0+3 {
		t.Errorf("after a delivery to both: alice %d → %d, bob %d → %d; want each one more", a0, a, b0, b)
	}
	// Without GenerationPerUser (scope all), every delivery moves every
	// user's generation, as one count did.
	one := NewHub(Limits{Max: 10}, 0)
	one.Poke([]string{"bob"})
	if a, b := one.Generation("alice"), one.Generation("bob"); a != 1 || b != 1 {
		t.Errorf("one generation: after a delivery to bob, alice %d, bob %d; want 1 each", a, b)
	}
}
