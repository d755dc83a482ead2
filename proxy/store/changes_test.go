package store

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"
)

// TestRoutedChanges: the count of routed changes starts at 0; NoteChange
// moves it; a settled mutation moves it with the transaction's next round
// trip, where another connection sees it before the COMMIT (a sequence is
// not transactional: the push pokes after the COMMIT, the order holds),
// and a rolled-back one leaves it moved (a count moved for nothing only
// costs a merge). A pull's transaction reads it with its source states,
// and ChangeCounts then returns that value.
func TestRoutedChanges(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	count := func() int64 {
		t.Helper()
		n, err := s.ChangeCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n.For("")
	}
	if n := count(); n != 0 {
		t.Fatalf("a new schema's count = %d, want 0", n)
	}
	if err := s.NoteChange(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("after NoteChange: %d, want 1", n)
	}
	rolledBack := errors.New("rolled back")
	err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		if _, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 1, Outcome: Applied}); err != nil {
			return err
		}
		if n := count(); n != 1 {
			t.Errorf("a settlement held, not sent: %d, want 1", n)
		}
		if _, err := g.LastMutationIDs(ctx); err != nil { // the next round trip
			return err
		}
		if n := count(); n != 2 {
			t.Errorf("a settlement sent, before the COMMIT: %d, want 2", n)
		}
		return rolledBack
	})
	if !errors.Is(err, rolledBack) {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Errorf("after the rollback: %d, want 2 (not transactional)", n)
	}
	if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 1, Outcome: Rejected, Reason: "no"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 3 {
		t.Errorf("after a committed rejection: %d, want 3", n)
	}
	if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		if _, _, err := g.SourceStates(ctx); err != nil {
			return err
		}
		if err := s.NoteChange(ctx); err != nil { // after the read
			return err
		}
		n, err := g.ChangeCounts(ctx)
		if n.For("") != 3 {
			t.Errorf("the count read with the source states = %d, want 3 (as read then)", n.For(""))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		n, err := g.ChangeCounts(ctx) // no source states read: its own round trip
		if n.For("") != 4 {
			t.Errorf("the count read on its own = %d, want 4", n.For(""))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// TestRoutedChangesPerUser: a change noted for a user (NoteChange with
// users, a settlement's ChangeFor) moves that user's count and no other
// user's (in another bucket) nor everyone's; a change noted for everyone
// (no users, or a user "") moves every user's count; For("") reads
// everyone's count alone. Read in a transaction, the counts are as read
// now (ChangeCountsNow) too.
func TestRoutedChangesPerUser(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	alice, bob := "alice", "bob"
	for i := 0; changeBucket(bob) == changeBucket(alice); i++ {
		bob = "bob" + strconv.Itoa(i)
	}
	type counts struct{ all, alice, bob int64 }
	read := func() counts {
		t.Helper()
		n, err := s.ChangeCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return counts{n.For(""), n.For(alice), n.For(bob)}
	}
	want := func(step string, w counts) {
		t.Helper()
		if got := read(); got != w {
			t.Errorf("%s: counts (everyone's, alice's, bob's) = %v, want %v", step, got, w)
		}
	}
	want("a new schema", counts{0, 0, 0})
	if err := s.NoteChange(ctx, alice); err != nil {
		t.Fatal(err)
	}
	want("noted for alice", counts{0, 1, 0})
	if err := s.NoteChange(ctx, alice, alice); err != nil {
		t.Fatal(err)
	}
	want("noted for alice twice in one call", counts{0, 2, 0})
	if err := s.NoteChange(ctx, alice, bob); err != nil {
		t.Fatal(err)
	}
	want("noted for alice and bob", counts{0, 3, 1})
	if err := s.NoteChange(ctx); err != nil {
		t.Fatal(err)
	}
	want("noted for everyone", counts{1, 4, 2})
	if err := s.NoteChange(ctx, bob, ""); err != nil {
		t.Fatal(err)
	}
	want(`noted for bob and user ""`, counts{2, 5, 3})
	if err := s.Locked(ctx, "g", alice, func(g *GroupTx) error {
		if _, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 1, Outcome: Applied, ChangeFor: alice}); err != nil {
			return err
		}
		n, err := g.ChangeCountsNow(ctx) // the next round trip sends the settlement
		if err == nil && (n.For("") != 2 || n.For(alice) != 6 || n.For(bob) != 3) {
			t.Errorf("in the settling transaction: (%d, %d, %d), want (2, 6, 3)", n.For(""), n.For(alice), n.For(bob))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want("a settlement for alice", counts{2, 6, 3})
	if err := s.Locked(ctx, "g", alice, func(g *GroupTx) error {
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 2, Outcome: Applied})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want("a settlement for everyone", counts{3, 7, 4})
}
