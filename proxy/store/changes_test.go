package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRoutedChanges: the count of routed changes starts at 0; NoteChange
// moves it; a settled mutation moves it with the transaction's next round
// trip, where another connection sees it before the COMMIT (a sequence is
// not transactional: the push pokes after the COMMIT, the order holds),
// and a rolled-back one leaves it moved (a count moved for nothing only
// costs a merge). A pull's transaction reads it with its source states,
// and ChangeCount then returns that value.
func TestRoutedChanges(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	count := func() int64 {
		t.Helper()
		n, err := s.ChangeCount(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
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
		n, err := g.ChangeCount(ctx)
		if n != 3 {
			t.Errorf("the count read with the source states = %d, want 3 (as read then)", n)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		n, err := g.ChangeCount(ctx) // no source states read: its own round trip
		if n != 4 {
			t.Errorf("the count read on its own = %d, want 4", n)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
