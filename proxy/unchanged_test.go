package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// groupRows returns, per table keyed by the group, the row versions of the
// group's rows (xmin and ctid: an UPDATE of a row, HOT or not, changes
// both; a row lock changes neither).
func (h *harness) groupRows(t testing.TB, inst *instance, group string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for table, col := range map[string]string{"client_groups": "id", "clients": "client_group_id", "view_entries": "client_group_id",
		"view_versions": "client_group_id", "view_pages": "client_group_id", "view_sources": "client_group_id",
		"view_record_holders": "client_group_id"} {
		var v string
		q := `SELECT coalesce(string_agg(xmin::text || ctid::text, ',' ORDER BY ctid), '') FROM ` +
			pgx.Identifier{h.schema, table}.Sanitize() + ` WHERE ` + col + ` = $1`
		if err := inst.pool.QueryRow(context.Background(), q, group).Scan(&v); err != nil {
			t.Fatal(err)
		}
		out[table] = v
	}
	return out
}

// changedTables lists the tables whose rows of the group differ.
func changedTables(before, after map[string]string) []string {
	var out []string
	for table, v := range before {
		if after[table] != v {
			out = append(out, table)
		}
	}
	return out
}

// sameCookie reports whether two cookies are the same JSON value, as the
// Replicache client compares them (deepEqual).
func sameCookie(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	// Maps encode with their keys sorted.
	ex, _ := json.Marshal(x)
	ey, _ := json.Marshal(y)
	return bytes.Equal(ex, ey)
}

// TestUnchangedPullKeepsItsCookie: a pull with the group's current cookie,
// when nothing changed since it was issued (the view, the last mutation
// ids), is answered with that very cookie, an empty patch and no last
// mutation id changes (what the Replicache client takes for "nothing new":
// it logs an error for a patch or an id change under an unchanged cookie)
// and writes no row of the group, through either replica. A moved last
// mutation id, or a cookie that is not the group's current one, gets a new
// cookie; a group whose last use is due to be noted notes it, keeping the
// cookie.
func TestUnchangedPullKeepsItsCookie(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a, b := h.start(), h.start()
	if r := a.push(t, "alice", "g", create("c1", 1, "x"), create("c1", 2, "y")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	c := newReplica()
	first := a.pullInto(t, "alice", "g", c)
	if !first.reset() {
		t.Fatalf("first pull = %+v; want a reset", first.Patch)
	}
	unchanged := func(t *testing.T, inst *instance, c *replica, what string) {
		t.Helper()
		cookie := c.cookie
		ans := inst.pullInto(t, "alice", "g", c)
		if !sameCookie(ans.Cookie, cookie) || len(ans.Patch) != 0 || len(ans.LastMutationIDChanges) != 0 {
			t.Errorf("%s: pull = cookie %s, patch %+v, ids %v; want its own cookie %s, an empty patch and no ids",
				what, ans.Cookie, ans.Patch, ans.LastMutationIDChanges, cookie)
		}
	}

	rows := h.groupRows(t, a, "g")
	unchanged(t, b, c, "unchanged, through the other replica")
	unchanged(t, a, c, "unchanged, through the first replica")
	if changed := changedTables(rows, h.groupRows(t, a, "g")); len(changed) > 0 {
		t.Errorf("unchanged pulls wrote rows of the group in %v", changed)
	}

	// A mutation the API rejects moves the client's last mutation id and
	// changes nothing in the view: the next pull tells it, with a new cookie.
	if r := a.push(t, "alice", "g", mut{"c1", 3, "createTodo", map[string]any{"id": "z", "title": ""}}); r.status != http.StatusOK || r.json["rejected"] != float64(1) {
		t.Fatalf("rejected push = %d %s", r.status, r.raw)
	}
	ans := b.pullInto(t, "alice", "g", c)
	var ck struct {
		Order int64 `json:"order"`
	}
	if err := json.Unmarshal(ans.Cookie, &ck); err != nil || ck.Order != 2 || len(ans.Patch) != 0 || ans.LastMutationIDChanges["c1"] != 3 {
		t.Errorf("pull after a moved last mutation id = cookie %s, patch %+v, ids %v; want order 2, an empty patch, c1 at 3",
			ans.Cookie, ans.Patch, ans.LastMutationIDChanges)
	}
	unchanged(t, a, c, "unchanged after the new cookie")

	// Another tab of the group, which lost the answers since the first
	// pull: its cookie is not the group's current one, so it is answered
	// as before (a new cookie, the ids).
	tab := &replica{cookie: first.Cookie, state: map[string]string{}}
	ans = a.pullInto(t, "alice", "g", tab)
	if err := json.Unmarshal(ans.Cookie, &ck); err != nil || ck.Order != 3 || ans.LastMutationIDChanges["c1"] != 3 {
		t.Errorf("pull with the group's previous cookie = cookie %s, ids %v; want order 3, c1 at 3", ans.Cookie, ans.LastMutationIDChanges)
	}
	c.cookie = tab.cookie

	// The group's last use, noted over the touch interval ago: an unchanged
	// pull notes it (the sweep deletes idle groups by it), and only that.
	ctx := context.Background()
	if _, err := a.pool.Exec(ctx, `UPDATE `+pgx.Identifier{h.schema, "client_groups"}.Sanitize()+
		` SET last_used_at = now() - interval '2 days' WHERE id = 'g'`); err != nil {
		t.Fatal(err)
	}
	rows = h.groupRows(t, a, "g")
	unchanged(t, a, c, "unchanged, last use due")
	if changed := changedTables(rows, h.groupRows(t, a, "g")); len(changed) != 1 || changed[0] != "client_groups" {
		t.Errorf("an unchanged pull of a group whose last use is due wrote rows in %v; want client_groups only", changed)
	}
	var order int64
	var noted bool
	if err := a.pool.QueryRow(ctx, `SELECT cookie_order, last_used_at > now() - interval '1 minute' FROM `+
		pgx.Identifier{h.schema, "client_groups"}.Sanitize()+` WHERE id = 'g'`).Scan(&order, &noted); err != nil {
		t.Fatal(err)
	}
	if order != 3 || !noted {
		t.Errorf("after an unchanged pull with its last use due: cookie order %d, last use noted %v; want 3 and true", order, noted)
	}
	rows = h.groupRows(t, a, "g")
	unchanged(t, b, c, "unchanged, last use noted")
	if changed := changedTables(rows, h.groupRows(t, a, "g")); len(changed) > 0 {
		t.Errorf("unchanged pull wrote rows of the group in %v", changed)
	}
}

// TestUnchangedPullsMerged: pulls answered from one fetch each get their own
// answer: those holding the group's current cookie keep it, one holding an
// older cookie of the same record gets a new one (and the ids).
func TestUnchangedPullsMerged(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("c1", 1, "x")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	older, current := newReplica(), newReplica()
	sc.pullInto(t, "alice", "g", older)   // order 1
	sc.pullInto(t, "alice", "g", current) // order 2, the same record version
	rows := h.groupRows(t, sc, "g")

	// The first fetch waits until the other pulls ride on it.
	release := make(chan struct{})
	var once sync.Once
	h.up.SetHook(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" {
			once.Do(func() { <-release })
		}
		return false
	})
	merged := testutil.ToFloat64(sc.sc.core.Metrics.PullsMerged)
	cookies := []*replica{current.clone(), current.clone(), current.clone(), older.clone()}
	answers := make([]patchAnswer, len(cookies))
	var wg sync.WaitGroup
	for i, c := range cookies {
		wg.Go(func() { answers[i] = sc.pullInto(t, "alice", "g", c) })
	}
	proxytest.WaitFor(t, "the other pulls to ride on the first", func() bool { return sc.sc.core.Turns.Waiting() == len(cookies)-1 })
	close(release)
	wg.Wait()
	if n := testutil.ToFloat64(sc.sc.core.Metrics.PullsMerged) - merged; n != float64(len(cookies)-1) {
		t.Fatalf("%v pulls merged; want %d", n, len(cookies)-1)
	}
	for i, ans := range answers[:3] {
		if !sameCookie(ans.Cookie, current.cookie) || len(ans.Patch) != 0 || len(ans.LastMutationIDChanges) != 0 {
			t.Errorf("pull %d with the current cookie = cookie %s, patch %+v, ids %v; want its own cookie, nothing else",
				i, ans.Cookie, ans.Patch, ans.LastMutationIDChanges)
		}
	}
	var ck struct {
		Order int64 `json:"order"`
	}
	if ans := answers[3]; json.Unmarshal(ans.Cookie, &ck) != nil || ck.Order != 3 || len(ans.Patch) != 0 || ans.LastMutationIDChanges["c1"] != 1 {
		t.Errorf("pull with the older cookie = cookie %s, patch %+v, ids %v; want order 3, an empty patch, c1 at 1",
			ans.Cookie, ans.Patch, ans.LastMutationIDChanges)
	}
	// Only the new cookie was written.
	if changed := changedTables(rows, h.groupRows(t, sc, "g")); len(changed) != 1 || changed[0] != "client_groups" {
		t.Errorf("the merged pulls wrote rows in %v; want client_groups only (the new cookie)", changed)
	}
}

// TestUnchangedPullWritesWhatItRead: a pull that changed nothing keeps its
// cookie and writes no source state while its maxAge sources are fresh
// (not read); once they are read again, the read is written (or the next
// pull would read them again), and still the cookie is kept.
func TestUnchangedPullWritesWhatItRead(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	seed(api, "alice", 5)
	h := deltaHarness(t, api, "1h", nil)
	sc := h.start()
	c := newReplica()
	sc.pullInto(t, "alice", "g", c)
	unchanged := func(what string) {
		t.Helper()
		cookie := c.cookie
		ans := sc.pullInto(t, "alice", "g", c)
		if !sameCookie(ans.Cookie, cookie) || len(ans.Patch) != 0 || len(ans.LastMutationIDChanges) != 0 {
			t.Errorf("%s: pull = cookie %s, patch %+v, ids %v; want its own cookie, nothing else", what, ans.Cookie, ans.Patch, ans.LastMutationIDChanges)
		}
	}

	rows := h.groupRows(t, sc, "g")
	api.ResetStats()
	unchanged("fresh sources")
	if changed := changedTables(rows, h.groupRows(t, sc, "g")); len(changed) > 0 {
		t.Errorf("an unchanged pull that read only /api/todos by its changes wrote rows in %v", changed)
	}
	if lists := api.GETs("/api/lists"); lists != 0 {
		t.Fatalf("%d GETs of /api/lists within its maxAge; want 0", lists)
	}

	// The maxAge sources' last read, two minutes ago: read again, and that
	// read is written.
	if _, err := sc.pool.Exec(context.Background(), `UPDATE `+pgx.Identifier{h.schema, "view_sources"}.Sanitize()+
		` SET read_at = read_at - interval '2 minutes' WHERE client_group_id = 'g'`); err != nil {
		t.Fatal(err)
	}
	rows = h.groupRows(t, sc, "g")
	api.ResetStats()
	unchanged("maxAge sources due")
	if changed := changedTables(rows, h.groupRows(t, sc, "g")); len(changed) != 1 || changed[0] != "view_sources" {
		t.Errorf("an unchanged pull that read its maxAge sources wrote rows in %v; want view_sources only", changed)
	}
	if lists := api.GETs("/api/lists"); lists != 1 {
		t.Errorf("%d GETs of /api/lists past its maxAge; want 1", lists)
	}
	rows = h.groupRows(t, sc, "g")
	api.ResetStats()
	unchanged("fresh again")
	if changed := changedTables(rows, h.groupRows(t, sc, "g")); len(changed) > 0 {
		t.Errorf("an unchanged pull after the read was written wrote rows in %v", changed)
	}
	if lists := api.GETs("/api/lists"); lists != 0 {
		t.Errorf("%d GETs of /api/lists after its read was written; want 0", lists)
	}
}
