package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestAttempts: answered attempts of a pending mutation are counted
// durably (committed transactions only) and forgotten once the mutation is
// consumed.
func TestAttempts(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	record := func(id int64, commit bool) Attempts {
		t.Helper()
		var a Attempts
		err := s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
			var err error
			if a, err = g.RecordAttempt(ctx, "c", id, 503); err != nil {
				return err
			}
			if !commit {
				return errors.New("rolled back")
			}
			return nil
		})
		if commit && err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := record(1, true); a.Count != 1 {
		t.Fatalf("first attempt: %+v", a)
	}
	record(1, false) // rolled back: not counted
	if a := record(1, true); a.Count != 2 || a.Span < 0 {
		t.Fatalf("second committed attempt: %+v, want count 2", a)
	}
	if a := record(2, true); a.Count != 1 {
		t.Errorf("another mutation's first attempt: %+v", a)
	}
	if err := s.Locked(ctx, "g", "u", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c", 1) }); err != nil {
		t.Fatal(err)
	}
	var left []int64
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT mutation_id FROM {schema}.mutation_attempts ORDER BY 1`))
	left, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(left) != 1 || left[0] != 2 {
		t.Errorf("attempts left after consuming mutation 1: %v (%v), want [2]", left, err)
	}
}

// TestTrimRejections keeps the newest within the cap and none past the TTL.
func TestTrimRejections(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		for i := int64(1); i <= 6; i++ {
			if err := g.RecordRejection(ctx, Rejection{ClientID: "c", MutationID: i, Mutator: "m", Reason: "no"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.mutation_rejections SET created_at = now() - interval '2 days' WHERE mutation_id = 1`)); err != nil {
		t.Fatal(err)
	}
	var deleted int64
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		var err error
		deleted, err = g.TrimRejections(ctx, 3, 24*time.Hour)
		return err
	})
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT mutation_id FROM {schema}.mutation_rejections ORDER BY 1`))
	left, _ := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || deleted != 3 || len(left) != 3 || left[0] != 4 {
		t.Errorf("after trimming: %v left, %d deleted (%v); want the newest 3 (4, 5, 6)", left, deleted, err)
	}
}
