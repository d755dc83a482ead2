package store

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// recordPull is a diff-mode pull of group by user, held for holder, with a
// view of n entries (values v): what a pull does with the store. It
// returns the record before, the change, and whether the group became one
// more of the holder's records.
func recordPull(t *testing.T, s *Store, group, user, holder string, n int, v uint64, cookieVersions ...int64) (before ViewRecord, c *ViewChange, heldAnew bool) {
	t.Helper()
	ctx := context.Background()
	err := s.Locked(ctx, group, user, func(g *GroupTx) error {
		g.HoldRecord(holder)
		before = g.Record()
		var err error
		c, err = g.CompareView(ctx, n, func(i int) (string, uint64) { return fmt.Sprint("k", i), v }, cookieVersions, nil)
		if err != nil {
			return err
		}
		if _, err := g.IssueCookies(ctx, []int64{0}, c, nil); err != nil {
			return err
		}
		heldAnew = g.HeldAnew()
		return nil
	})
	if err != nil {
		t.Fatalf("pull of %s: %v", group, err)
	}
	return before, c, heldAnew
}

func countRows(t *testing.T, s *Store, table, group string) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), s.sql(`SELECT count(*) FROM {schema}.`+table+` WHERE client_group_id = $1`), group).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEvictRecords: a holder keeps records for at most max groups. The
// pull that makes one more is told so; EvictRecords then deletes the rows
// of the least recently used group's record (entries, version tags,
// remembered pages), and that group keeps its record id, version numbers
// and cookie order: a cookie naming any version it issued is no sign of a
// lost history (not Foreign) and gets no diff (not Covered), and its next
// pull writes the record again, one more of the holder's again. Another
// holder's records are not touched; a busy group is skipped; a deleted
// group is only forgotten.
func TestEvictRecords(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	const holder, max = "user:u", 2
	evict := func(want int64) Evicted {
		t.Helper()
		e, err := s.EvictRecords(ctx, holder, max)
		if err != nil {
			t.Fatal(err)
		}
		if e.Records != want {
			t.Fatalf("evicted %+v, want %d records", e, want)
		}
		return e
	}
	_, c1, anew := recordPull(t, s, "g1", "u", holder, 5, 1)
	if !anew {
		t.Fatal("the group's first record is not one more of its holder's")
	}
	if _, _, again := recordPull(t, s, "g1", "u", holder, 5, 1, c1.Record.Version); again {
		t.Error("a second pull of the same group counts as one more record")
	}
	recordPull(t, s, "other", "v", "user:v", 5, 1) // another holder's
	recordPull(t, s, "g2", "u", holder, 5, 1)
	evict(0) // two: within max
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.view_record_holders SET used_at = used_at - interval '1 hour' WHERE client_group_id = 'g1'`)); err != nil {
		t.Fatal(err)
	}
	_, _, anew = recordPull(t, s, "g3", "u", holder, 5, 1)
	if !anew {
		t.Fatal("a third group's first record is not one more")
	}
	if e := evict(1); e.Bytes != 5*(2+recordRowBytes) {
		t.Errorf("evicted %d bytes, want %d (5 keys of 2 bytes, with hash and version)", e.Bytes, 5*(2+recordRowBytes))
	}
	if n, v := countRows(t, s, "view_entries", "g1"), countRows(t, s, "view_versions", "g1"); n != 0 || v != 0 {
		t.Errorf("g1 keeps %d entries and %d version tags after its eviction", n, v)
	}
	if n := countRows(t, s, "view_entries", "g2") + countRows(t, s, "view_entries", "other"); n != 10 {
		t.Errorf("g2 and another holder's group keep %d entries, want 10", n)
	}

	// g1's next pull: its record is evicted, no cookie of it is foreign or
	// covered, and it is written again, with a new version.
	before, c, anew := recordPull(t, s, "g1", "u", holder, 5, 1, c1.Record.Version)
	switch {
	case !before.Evicted || before.ID != c1.Record.ID || before.Version != c1.Record.Version:
		t.Errorf("g1 as locked: %+v, want evicted, record %d at version %d", before, c1.Record.ID, c1.Record.Version)
	case !c.Evicted():
		t.Error("the change does not say the record had been evicted")
	case c.Foreign(before, c1.Record.ID, c1.Record.Version, c1.Record.Tag):
		t.Error("a cookie of the evicted record is taken for a lost history")
	case c.Covers(c1.Record.ID, c1.Record.Version, c1.Record.Tag):
		t.Error("a cookie of the evicted record would get a diff")
	case !c.Foreign(before, c1.Record.ID, c1.Record.Version+1, 7):
		t.Error("a version the evicted record never reached is not foreign")
	case c.Record.ID != c1.Record.ID || c.Record.Version != c1.Record.Version+1 || c.Record.MinVersion != c.Record.Version || len(c.Versions) != 5:
		t.Errorf("g1 written again as %+v, want record %d at version %d, diffable from it only", c.Record, c1.Record.ID, c1.Record.Version+1)
	case !anew:
		t.Error("g1 written again is not one more of its holder's records")
	}
	if n := countRows(t, s, "view_entries", "g1"); n != 5 {
		t.Errorf("g1 written again has %d entries, want 5", n)
	}
	// And the next pull after that is a plain one: not evicted any more.
	if before, c, _ := recordPull(t, s, "g1", "u", holder, 5, 2, c.Record.Version); before.Evicted || c.Evicted() || !c.Covers(c.Record.ID, c.Record.Version-1, c.tags[c.Record.Version-1]) {
		t.Errorf("the pull after g1 was written again: before %+v, evicted %v; want a record like any other", before, c.Evicted())
	}

	// g2 is now the least recently used: evicted, unless busy.
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.view_record_holders SET used_at = used_at - interval '2 hours' WHERE client_group_id = 'g2'`)); err != nil {
		t.Fatal(err)
	}
	locked, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- s.Locked(ctx, "g2", "u", func(*GroupTx) error { close(locked); <-release; return nil })
	}()
	<-locked
	evict(0) // busy: skipped
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	evict(1)
	// A group deleted since (the idle sweep) is only forgotten.
	recordPull(t, s, "g4", "u", holder, 5, 1)
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET deleted_at = now() WHERE id = 'g3';
		UPDATE {schema}.view_record_holders SET used_at = used_at - interval '3 hours' WHERE client_group_id = 'g3'`)); err != nil {
		t.Fatal(err)
	}
	evict(0)
	var holders int
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT count(*) FROM {schema}.view_record_holders WHERE holder = $1`), holder).Scan(&holders); err != nil {
		t.Fatal(err)
	}
	if holders != max {
		t.Errorf("%s holds %d records, want %d", holder, holders, max)
	}
	if n, err := s.RecordStorageBytes(ctx); err != nil || n <= 0 {
		t.Errorf("RecordStorageBytes = %d, %v", n, err)
	}
}

// TestSweepRecords: the sweep evicts the records of every holder over the
// cap (one the pull path left over it) and forgets holders' notes of
// groups deleted since.
func TestSweepRecords(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	for _, user := range []string{"a", "b"} {
		for g := range 4 {
			recordPull(t, s, fmt.Sprintf("%s%d", user, g), user, "user:"+user, 3, 1)
		}
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET deleted_at = now() WHERE id = 'b3'`)); err != nil {
		t.Fatal(err)
	}
	e, err := s.SweepRecords(ctx, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if e.Records != 3 { // a: 2 of 4; b: 1 of 3 left once b3 is forgotten
		t.Errorf("the sweep evicted %+v, want 3 records", e)
	}
	for _, g := range []string{"a0", "a1", "b0"} {
		if n := countRows(t, s, "view_versions", g); n != 0 {
			t.Errorf("%s keeps its record after the sweep", g)
		}
	}
	for _, g := range []string{"a2", "a3", "b1", "b2"} {
		if n := countRows(t, s, "view_versions", g); n == 0 {
			t.Errorf("%s lost its record, one of its holder's two most recent", g)
		}
	}
}
