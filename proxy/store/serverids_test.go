package store

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"
)

// TestServerIDs: a record is seen by later statements of its transaction
// and, once committed, by every later transaction of its group only; the
// first record of a temporary id stands (in one transaction or across
// them); a rolled-back one is gone; any bytes may make a temporary id; the
// sweep of idle groups takes the records with their group.
func TestServerIDs(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	read := func(group string, ids ...string) map[string]string {
		t.Helper()
		var got map[string]string
		if err := s.Locked(ctx, group, "u", func(g *GroupTx) (err error) {
			got, err = g.ServerIDs(ctx, ids)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	odd := "tmp-\x00-\xff" // NUL and invalid UTF-8: text could hold neither
	err := s.Locked(ctx, "g1", "u", func(g *GroupTx) error {
		g.RecordServerID("tmp-1", `17`, "c1", 1)
		g.RecordServerID("tmp-1", `99`, "c1", 2) // the same temporary id again: the first stands
		g.RecordServerID(odd, `"a b"`, "c1", 3)
		got, err := g.ServerIDs(ctx, []string{"tmp-1", odd, "tmp-3"})
		if want := map[string]string{"tmp-1": `17`, odd: `"a b"`}; err != nil || !maps.Equal(got, want) {
			t.Errorf("within the transaction: %q (%v), want %q", got, err, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	errRollback := errors.New("roll back")
	err = s.Locked(ctx, "g1", "u", func(g *GroupTx) error {
		g.RecordServerID("tmp-1", `18`, "c2", 1) // recorded before: changes nothing
		g.RecordServerID("tmp-4", `20`, "c2", 2) // rolled back: gone
		_, err := g.ServerIDs(ctx, nil)
		return errors.Join(err, errRollback)
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	err = s.Locked(ctx, "g1", "u", func(g *GroupTx) error {
		g.RecordServerID("tmp-1", `19`, "c2", 3)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := read("g1", "tmp-1", odd, "tmp-4", ""), map[string]string{"tmp-1": `17`, odd: `"a b"`}; !maps.Equal(got, want) {
		t.Errorf("committed: %q, want %q", got, want)
	}
	if got := read("g2", "tmp-1", odd); len(got) != 0 {
		t.Errorf("another group sees %q", got)
	}

	// Idle groups go with their records; a group in use keeps its own.
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET last_used_at = now() - interval '2 hours' WHERE id = 'g1'`)); err != nil {
		t.Fatal(err)
	}
	err = s.Locked(ctx, "g2", "u", func(g *GroupTx) error {
		g.RecordServerID("tmp-1", `5`, "c3", 1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if swept, err := s.SweepGroups(ctx, time.Hour, 4*time.Hour, 10); err != nil || swept.Groups != 1 {
		t.Fatalf("sweep = %+v, %v; want g1 deleted", swept, err)
	}
	var left map[string]int
	rows, err := s.pool.Query(ctx, s.sql(`SELECT client_group_id, count(*)::int FROM {schema}.server_ids GROUP BY 1`))
	if err == nil {
		left = map[string]int{}
		for rows.Next() {
			var g string
			var n int
			if err = rows.Scan(&g, &n); err != nil {
				break
			}
			left[g] = n
		}
		rows.Close()
	}
	if want := map[string]int{"g2": 1}; err != nil || !maps.Equal(left, want) {
		t.Errorf("records left after the sweep: %v (%v), want %v", left, err, want)
	}
	// Expired tombstones go with any record left behind.
	if _, err := s.pool.Exec(ctx, s.sql(`INSERT INTO {schema}.server_ids (client_group_id, temp_id, server_id, client_id, mutation_id)
		VALUES ('g1', 'x', '1', 'c', 1);
		UPDATE {schema}.client_groups SET deleted_at = now() - interval '5 hours' WHERE id = 'g1'`)); err != nil {
		t.Fatal(err)
	}
	if swept, err := s.SweepGroups(ctx, time.Hour, 4*time.Hour, 10); err != nil || swept.Tombstones != 1 {
		t.Fatalf("sweep = %+v, %v; want g1's tombstone expired", swept, err)
	}
	var n int
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT count(*) FROM {schema}.server_ids WHERE client_group_id = 'g1'`)).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d records of an expired tombstone left (%v)", n, err)
	}
}
