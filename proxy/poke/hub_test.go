package poke

import (
	"errors"
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

func TestHub(t *testing.T) {
	h := NewHub(3, 30*time.Millisecond)
	alice, _ := h.Subscribe("alice")
	bob, _ := h.Subscribe("bob")
	// A burst within one window is one poke, delivered at the window's end.
	start := time.Now()
	for range 50 {
		h.Poke(nil)
	}
	if !received(alice, time.Second) || !received(bob, time.Second) {
		t.Fatal("a burst of pokes did not reach both subscribers")
	}
	if waited := time.Since(start); waited < 25*time.Millisecond {
		t.Errorf("delivered after %v, before the 30ms window ended", waited)
	}
	if received(alice, 100*time.Millisecond) {
		t.Error("50 pokes in one window delivered more than one poke")
	}
	// A user's poke reaches only that user's subscribers.
	h.Poke([]string{"bob"})
	if !received(bob, time.Second) || received(alice, 100*time.Millisecond) {
		t.Error("a poke for bob did not reach bob only")
	}
	// The bound, and closing.
	if _, err := h.Subscribe("carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Subscribe("dave"); !errors.Is(err, ErrFull) {
		t.Errorf("fourth subscriber of 3: %v, want ErrFull", err)
	}
	h.Unsubscribe(bob)
	if h.Count() != 2 {
		t.Errorf("count %d after one left, want 2", h.Count())
	}
	h.Close()
	select {
	case <-h.Done():
	default:
		t.Error("Done is not closed after Close")
	}
	if _, err := h.Subscribe("erin"); !errors.Is(err, ErrClosed) {
		t.Errorf("subscribe after Close: %v, want ErrClosed", err)
	}
}

// TestHubPerUser: one user cannot take every slot.
func TestHubPerUser(t *testing.T) {
	h := NewHub(0, 0)
	var mine []*Subscriber
	for range MaxPerUser {
		s, err := h.Subscribe("mallory")
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, s)
	}
	if _, err := h.Subscribe("mallory"); !errors.Is(err, ErrUserFull) {
		t.Errorf("subscriber %d of one user: %v, want ErrUserFull", MaxPerUser+1, err)
	}
	if _, err := h.Subscribe("alice"); err != nil {
		t.Errorf("another user: %v", err)
	}
	h.Unsubscribe(mine[0])
	h.Unsubscribe(mine[0]) // twice: counted once
	if _, err := h.Subscribe("mallory"); err != nil {
		t.Errorf("after one left: %v", err)
	}
	if _, err := h.Subscribe("mallory"); !errors.Is(err, ErrUserFull) {
		t.Errorf("a second unsubscribe of the same stream freed a slot: %v", err)
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
