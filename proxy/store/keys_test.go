package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestPreviousKeysThrough: while the idempotency secret is rotated, a
// client whose last consumed mutation was not keyed by a replica with the
// current secret (none yet, or a replica still on the previous one) keeps
// the previous secret's keys for the batch after its last mutation id; the
// mark is recorded with the transaction, worked out again the same after a
// rollback, stands once a replica on the current secret has consumed, and
// rises again after a replica on the previous secret has.
func TestPreviousKeysThrough(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	const cur, prev, batch = 11, 22, 64
	boom := errors.New("boom")
	// step locks the group (with the client read along when prefetch),
	// claims the client, reads its mark, and consumes through lmid keyed
	// by secret (0: consumes nothing); fail rolls it back.
	step := func(prefetch bool, lmid, secret int64, fail bool) int64 {
		t.Helper()
		var mark int64
		fn := func(g *GroupTx) error {
			if err := g.ClaimClient(ctx, "c", 0, nil); err != nil {
				return err
			}
			var err error
			if mark, err = g.PreviousKeysThrough(ctx, "c", cur, batch); err != nil {
				return err
			}
			if again, err := g.PreviousKeysThrough(ctx, "c", cur, batch); err != nil || again != mark {
				t.Errorf("asked twice in one transaction: %d then %d (%v)", mark, again, err)
			}
			if lmid > 0 {
				if _, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: lmid, Outcome: Applied, KeySecret: secret}); err != nil {
					return err
				}
				if after, err := g.PreviousKeysThrough(ctx, "c", cur, batch); err != nil || after != mark && secret == cur {
					t.Errorf("after consuming %d keyed with %d: mark %d, want %d (%v)", lmid, secret, after, mark, err)
				}
			}
			if fail {
				return boom
			}
			return nil
		}
		var err error
		if prefetch {
			err = s.LockedClient(ctx, "g", "u", "c", fn)
		} else {
			err = s.Locked(ctx, "g", "u", fn)
		}
		if err != nil && !errors.Is(err, boom) {
			t.Fatal(err)
		}
		return mark
	}
	// A new client: its first batch may have gone out keyed with the
	// previous secret, its commit lost.
	if m := step(true, 3, cur, true); m != batch {
		t.Errorf("new client: mark %d, want %d", m, batch)
	}
	if m := step(false, 0, 0, false); m != batch {
		t.Errorf("after a rollback: mark %d, want %d again", m, batch)
	}
	// Consumed by a replica on the current secret: the mark stands.
	step(true, 3, cur, false)
	if m := step(false, 5, cur, false); m != batch {
		t.Errorf("after a consume keyed with the current secret: mark %d, want %d", m, batch)
	}
	// Consumed further by a replica still on the previous secret: the batch
	// after it may have gone out with the previous key too.
	step(true, 70, prev, false)
	if m := step(true, 0, 0, false); m != 70+batch {
		t.Errorf("after a consume keyed with the previous secret: mark %d, want %d", m, 70+batch)
	}
	if m := step(false, 0, 0, false); m != 70+batch {
		t.Errorf("read without the client prefetched: mark %d, want %d", m, 70+batch)
	}
	// Another group cannot read the client's mark.
	err := s.Locked(ctx, "other", "u", func(g *GroupTx) error {
		_, err := g.PreviousKeysThrough(ctx, "c", cur, batch)
		return err
	})
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("another group's client: %v, want ErrClientForbidden", err)
	}
}
