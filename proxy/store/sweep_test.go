package store

import (
	"context"
	"testing"
	"time"
)

// TestSweepRejections: records past the TTL go, in batches, whatever their
// group; newer ones stay.
func TestSweepRejections(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	for _, group := range []string{"g1", "g2"} {
		err := s.Locked(ctx, group, "u", func(g *GroupTx) error {
			for i := int64(1); i <= 5; i++ {
				if err := g.RecordRejection(ctx, Rejection{ClientID: group + "c", MutationID: i, Mutator: "m", Reason: "no"}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.mutation_rejections SET created_at = now() - interval '2 days' WHERE mutation_id <= 4`)); err != nil {
		t.Fatal(err)
	}
	n, err := s.SweepRejections(ctx, 24*time.Hour, 3)
	var left int
	_ = s.pool.QueryRow(ctx, s.sql(`SELECT count(*) FROM {schema}.mutation_rejections`)).Scan(&left)
	if err != nil || n != 8 || left != 2 {
		t.Errorf("swept %d (%v), %d left; want 8 swept in batches of 3 and the 2 recent ones left", n, err, left)
	}
}
