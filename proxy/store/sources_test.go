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
			out, _, err = g.SourceStates(ctx)
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

// TestSourceMarks: marks of routed writes and deletes, by source path, are
// read by every later transaction's SourceStates; a mark only moves forward.
func TestSourceMarks(t *testing.T) {
	t.Parallel()
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	marks := func() map[string]SourceMark {
		t.Helper()
		var out map[string]SourceMark
		if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
			var err error
			_, out, err = g.SourceStates(ctx)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := marks(); len(got) != 0 {
		t.Fatalf("marks before any write: %v", got)
	}
	t1 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Minute)
	if err := s.MarkSources(ctx, []string{"/api/me"}, []string{"/api/todos"}, t2); err != nil {
		t.Fatal(err)
	}
	// An older mark (a slower replica's) moves nothing back; a write-only
	// mark leaves the delete alone.
	if err := s.MarkSources(ctx, []string{"/api/me", "/api/todos"}, []string{"/api/me"}, t1); err != nil {
		t.Fatal(err)
	}
	got := marks()
	if m := got["/api/todos"]; !m.Write.Equal(t2) || !m.Delete.Equal(t2) {
		t.Errorf("/api/todos = %+v, want the DELETE's write and delete at %v", m, t2)
	}
	if m := got["/api/me"]; !m.Write.Equal(t2) || !m.Delete.Equal(t1) {
		t.Errorf("/api/me = %+v, want write %v, delete %v", m, t2, t1)
	}
}
