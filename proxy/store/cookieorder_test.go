package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestCookieOrdersOnlyGrow: every order issued to a group exceeds both the
// request's and every earlier one, also when the request comes from a fork
// with a larger order, and a rolled-back pull issues nothing.
func TestCookieOrdersOnlyGrow(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	next := func(req int64, fail bool) int64 {
		t.Helper()
		var got int64
		err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			var err error
			if got, err = g.NextCookieOrder(ctx, req); err != nil {
				return err
			}
			if fail {
				return errors.New("rolled back")
			}
			return nil
		})
		if err != nil && !fail {
			t.Fatal(err)
		}
		return got
	}
	for _, step := range []struct {
		req  int64
		fail bool
		want int64
	}{
		{0, false, 1},
		{0, false, 2},   // a stale request cookie still gets a fresh order
		{10, false, 11}, // a forked client's larger order is exceeded
		{3, true, 12},   // issued, then rolled back…
		{3, false, 12},  // …so the next pull gets the same order again
	} {
		if got := next(step.req, step.fail); got != step.want {
			t.Errorf("request order %d: got %d, want %d", step.req, got, step.want)
		}
	}
	// Near JSON's largest safe integer: the last order is issued, and then
	// nothing more, whatever the request carries.
	if got := next(maxCookieOrder-1, false); got != maxCookieOrder {
		t.Fatalf("request order max-1: got %d, want %d", got, int64(maxCookieOrder))
	}
	for _, req := range []int64{0, maxCookieOrder} {
		err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			_, err := g.NextCookieOrder(ctx, req)
			return err
		})
		if !errors.Is(err, ErrCookieExhausted) {
			t.Errorf("request order %d on an exhausted group: %v, want ErrCookieExhausted", req, err)
		}
	}
}

// TestCookieOrdersForSeveralPulls: one statement issues each pull its own
// order, strictly increasing and above each request's; the next
// transaction continues above them; an exhausted request gets 0 alone.
func TestCookieOrdersForSeveralPulls(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	orders := func(reqs ...int64) []int64 {
		t.Helper()
		var got []int64
		if err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			var err error
			got, err = g.NextCookieOrders(ctx, reqs)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := orders(0, 5, 0); !slices.Equal(got, []int64{1, 6, 7}) {
		t.Errorf("orders for requests 0, 5, 0 = %v, want [1 6 7]", got)
	}
	if got := orders(2); !slices.Equal(got, []int64{8}) {
		t.Errorf("next order = %v, want [8]", got)
	}
	if got := orders(maxCookieOrder, 0); !slices.Equal(got, []int64{0, 9}) {
		t.Errorf("orders for an exhausted request and a fresh one = %v, want [0 9]", got)
	}
}
