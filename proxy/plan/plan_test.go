package plan

import (
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

func testView(t *testing.T) (*clientview.View, []clientview.SourceInfo) {
	t.Helper()
	v, err := clientview.Compile([]clientview.Source{
		{Path: "/api/todos", Items: "todos", Key: "todo/{id}", Changes: &clientview.Changes{Param: "updated_after", Field: "updated_at"}},
		{Path: "/api/me", Key: "me", MaxAge: "1m"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return v, v.Sources()
}

// TestDecideReadsWhatTheDatabaseMarked: a replica that has not heard of a
// DELETE another replica routed (its own marks are empty) still reads the
// source in full when the database holds the mark; a write under a maxAge
// source makes it read that again. A mark this replica made or heard
// counts at its time; one it did not, MarkSkew later (another clock).
func TestDecideReadsWhatTheDatabaseMarked(t *testing.T) {
	v, infos := testView(t)
	start := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	readAt := start.Add(10 * time.Second) // both sources read then (todos in full)
	now := readAt.Add(5 * time.Second)
	states := map[string]store.SourceState{}
	for _, s := range infos {
		states[s.ID] = store.SourceState{Source: s.ID, Watermark: "2026-12-07T09:00:00Z", FullAt: readAt, ReadAt: readAt}
	}
	todos, me := infos[0].ID, infos[1].ID
	decide := func(w *Writes, marks map[string]store.SourceMark) Decision {
		return Decide(Input{Sources: infos, View: v, States: states, Current: true, Writes: w, Marks: marks, Now: now})
	}
	fresh := func() *Writes { w := NewWrites(start); w.Sources(infos); return w }

	d := decide(fresh(), nil)
	if d.Plans[todos].Mode != clientview.Delta || d.Plans[me].Mode != clientview.Skip {
		t.Fatalf("no marks: %v %v; want todos by their changes, me skipped", d.Plans, d.Reasons)
	}
	later := readAt.Add(2 * time.Second)
	d = decide(fresh(), map[string]store.SourceMark{"/api/todos": {Write: later, Delete: later}, "/api/me": {Write: later}})
	if d.Plans[todos].Mode != clientview.Full || d.Reasons[todos] != ReasonDeleted {
		t.Errorf("a DELETE only the database knows of: todos %v (%s); want a full read", d.Plans[todos], d.Reasons[todos])
	}
	if d.Plans[me].Mode != clientview.Full || d.Reasons[me] != ReasonStale {
		t.Errorf("a write only the database knows of: me %v (%s); want read again", d.Plans[me], d.Reasons[me])
	}
	// A mark from before the read, by another clock: within MarkSkew it may
	// still be after the read, so it is read again; well before, it is not.
	just := readAt.Add(-MarkSkew / 2)
	if d = decide(fresh(), map[string]store.SourceMark{"/api/todos": {Delete: just}}); d.Plans[todos].Mode != clientview.Full {
		t.Errorf("an unheard DELETE %v before the full read: %v; want read in full again (MarkSkew)", readAt.Sub(just), d.Plans[todos])
	}
	long := readAt.Add(-2 * MarkSkew)
	if d = decide(fresh(), map[string]store.SourceMark{"/api/todos": {Delete: long}}); d.Plans[todos].Mode != clientview.Delta {
		t.Errorf("an unheard DELETE %v before the full read: %v; want by its changes", readAt.Sub(long), d.Plans[todos])
	}
	// The same mark, made by this replica (its own stamp as late): no skew.
	w := fresh()
	w.Saw("DELETE", "/api/todos/7", just)
	if d = decide(w, map[string]store.SourceMark{"/api/todos": {Write: just.Truncate(time.Microsecond), Delete: just.Truncate(time.Microsecond)}}); d.Plans[todos].Mode != clientview.Delta {
		t.Errorf("this replica's own DELETE before the full read: %v (%s); want by its changes", d.Plans[todos], d.Reasons[todos])
	}
}

// TestSawTellsWhatMatters: a write is worth telling the other replicas and
// the database only under a maxAge source (a delta source reads it by its
// changes); a DELETE under any source.
func TestSawTellsWhatMatters(t *testing.T) {
	_, infos := testView(t)
	w := NewWrites(time.Now())
	w.Sources(infos)
	if written, deleted := w.Saw("PATCH", "/api/todos/7?x=1", time.Now()); len(written) != 0 || len(deleted) != 0 {
		t.Errorf("PATCH under a delta source: written %v, deleted %v; want nothing to tell", written, deleted)
	}
	if written, deleted := w.Saw("DELETE", "/api/todos/7", time.Now()); len(written) != 0 || len(deleted) != 1 || deleted[0] != "/api/todos" {
		t.Errorf("DELETE under a delta source: written %v, deleted %v; want deleted [/api/todos]", written, deleted)
	}
	if written, _ := w.Saw("PUT", "/api/me", time.Now()); len(written) != 1 || written[0] != "/api/me" {
		t.Errorf("PUT under a maxAge source: written %v; want [/api/me]", written)
	}
}

// TestAfterMovesTheWatermarkOnlyPastWhatAReadProves: a delta read of
// several pages that cannot show they fit together may have skipped an
// item (one deleted on a page already read moves the next up onto it), so
// its watermark stays and the next delta read asks for the window again;
// one answer, or pages that fit together, move it; a full read always does.
func TestAfterMovesTheWatermarkOnlyPastWhatAReadProves(t *testing.T) {
	_, infos := testView(t)
	todos := infos[0].ID
	const was, read = "2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"
	states := map[string]store.SourceState{todos: {Source: todos, Watermark: was, FullAt: time.Unix(1, 0), ReadAt: time.Unix(1, 0)}}
	for _, c := range []struct {
		name string
		r    clientview.SourceResult
		want string
	}{
		// The bug: two link pages without a total; an item can be skipped.
		{"delta, two pages, unproven", clientview.SourceResult{Mode: clientview.Delta, Requests: 2}, was},
		// One answer cannot skip anything.
		{"delta, one page", clientview.SourceResult{Mode: clientview.Delta, Requests: 1}, read},
		// A total that matched, or cursor pages.
		{"delta, two pages, provable", clientview.SourceResult{Mode: clientview.Delta, Requests: 2, Provable: true}, read},
		// Where a group starts; its deletions are confirmed elsewhere.
		{"full, two pages, unproven", clientview.SourceResult{Mode: clientview.Full, Requests: 2}, read},
	} {
		c.r.Source, c.r.Watermark = todos, read
		got := was
		for _, st := range After(states, []clientview.SourceResult{c.r}, infos, time.Unix(2, 0)) {
			got = st.Watermark
		}
		if got != c.want {
			t.Errorf("%s: watermark %s; want %s", c.name, got, c.want)
		}
	}
}
