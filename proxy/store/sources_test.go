package store

import (
	"context"
	"testing"
	"time"
)

// TestSourceStates: source states staged in a pull's transaction are
// written with its cookies and the record's change, read back by the next
// pull of the group, and belong to the record: a group whose record is
// replaced (a new record id) starts with none; a rolled-back transaction
// writes none.
func TestSourceStates(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	pull := func(st ...SourceState) {
		t.Helper()
		err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
			c, err := g.CompareView(ctx, 1, func(int) (string, uint64) { return "todo/1", 1 }, nil, nil)
			if err != nil {
				return err
			}
			g.StageSources(st)
			_, err = g.IssueCookies(ctx, []int64{0}, c, nil)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	read := func() map[string]SourceState {
		t.Helper()
		var out map[string]SourceState
		if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
			var err error
			out, err = g.SourceStates(ctx)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := read(); len(got) != 0 {
		t.Fatalf("a group without a record has states %v", got)
	}
	pull(SourceState{Source: "s1", Watermark: "2026-12-01T10:00:00Z", FullAt: at, ReadAt: at}, SourceState{Source: "s2", ReadAt: at})
	got := read()
	if st := got["s1"]; st.Watermark != "2026-12-01T10:00:00Z" || !st.FullAt.Equal(at) || !st.ReadAt.Equal(at) {
		t.Errorf("s1 = %+v", st)
	}
	if st := got["s2"]; st.Watermark != "" || !st.FullAt.IsZero() || !st.ReadAt.Equal(at) {
		t.Errorf("s2 = %+v", st)
	}
	// A later pull moves one watermark; the other stays.
	pull(SourceState{Source: "s1", Watermark: "2026-12-01T10:05:00Z", FullAt: at, ReadAt: at.Add(time.Minute)})
	if st := read()["s1"]; st.Watermark != "2026-12-01T10:05:00Z" || len(read()) != 2 {
		t.Errorf("after the second pull: s1 = %+v, states %d", st, len(read()))
	}
	// A rolled-back pull writes nothing.
	_ = s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		g.StageSources([]SourceState{{Source: "s1", Watermark: "later"}})
		if _, err := g.IssueCookies(ctx, []int64{0}, nil, nil); err != nil {
			return err
		}
		return context.Canceled // roll back
	})
	if st := read()["s1"]; st.Watermark != "2026-12-01T10:05:00Z" {
		t.Errorf("a rolled-back pull moved the watermark to %q", st.Watermark)
	}
	// Another record (the group's record replaced): its states are gone.
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET view_record_id = 12345 WHERE id = 'g'`)); err != nil {
		t.Fatal(err)
	}
	if got := read(); len(got) != 0 {
		t.Errorf("states of another record are read: %v", got)
	}
}
