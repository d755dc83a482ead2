package proxy

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestClientGroupLifecycle: groups unused for SIDECAR_CLIENT_GROUP_TTL are
// deleted by the sweep, once, with two replicas sweeping at the same time;
// their clients then get ClientStateNotFound through either replica, a
// group forked from one is answered normally, groups in use stay, and
// tombstones expire.
func TestClientGroupLifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_CLIENT_GROUP_TTL": "1h", "SIDECAR_EXPOSE_REJECTIONS": "true"})
	a, b := h.start(), h.start()
	ctx := context.Background()
	schema := pgx.Identifier{h.schema}.Sanitize()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := a.pool.Exec(ctx, fmt.Sprintf(q, schema), args...); err != nil {
			t.Fatal(err)
		}
	}
	count := func(q string, args ...any) (n int) {
		t.Helper()
		if err := a.pool.QueryRow(ctx, fmt.Sprintf(q, schema), args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	cookies := map[string]*replica{}
	for i, g := range []string{"idle1", "idle2", "idle3", "active", "pushing"} {
		client := fmt.Sprint("c-", g)
		if r := a.push(t, "alice", g, create(client, 1, fmt.Sprint("t", i)), mut{client, 2, "createTodo", map[string]any{"id": "bad"}}); r.status != 200 {
			t.Fatalf("push %s = %d %s", g, r.status, r.raw)
		}
		cookies[g] = newReplica()
		a.pullInto(t, "alice", g, cookies[g])
	}
	exec(`UPDATE %s.client_groups SET last_used_at = now() - interval '2 hours' WHERE id LIKE 'idle%%' OR id = 'pushing'`)
	// A push to "pushing" makes it used again (its mutation is processed).
	if r := b.push(t, "alice", "pushing", create("c-pushing", 3, "p3")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}

	var wg sync.WaitGroup
	for _, inst := range []*instance{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); inst.sc.sweepOnce(ctx) }()
	}
	wg.Wait()
	deleted := testutil.ToFloat64(a.sc.core.Metrics.GroupsDeleted) + testutil.ToFloat64(b.sc.core.Metrics.GroupsDeleted)
	if deleted != 3 {
		t.Errorf("client_groups_deleted_total over both replicas = %v, want 3", deleted)
	}
	for _, table := range []string{"clients", "view_entries", "view_versions", "mutation_rejections", "group_history"} {
		if n := count(`SELECT count(*) FROM %s.` + table + ` WHERE client_group_id LIKE 'idle%%'`); n != 0 {
			t.Errorf("%d rows of deleted groups left in %s", n, table)
		}
	}
	if n := count(`SELECT count(*) FROM %s.client_groups WHERE deleted_at IS NOT NULL`); n != 3 {
		t.Errorf("%d tombstones, want 3", n)
	}

	for _, inst := range []*instance{a, b} {
		r := inst.post(t, "/replicache/pull", "Bearer alice", pullBody("idle1", cookies["idle1"].cookie))
		if r.status != 200 || string(r.raw) != `{"error":"ClientStateNotFound"}` {
			t.Errorf("pull of a deleted group = %d %s; want ClientStateNotFound", r.status, r.raw)
		}
		if r := inst.push(t, "alice", "idle2", create("c-idle2", 3, "late")); r.status != 200 || string(r.raw) != `{"error":"ClientStateNotFound"}` {
			t.Errorf("push to a deleted group = %d %s; want ClientStateNotFound", r.status, r.raw)
		}
	}
	// A new group forked from a deleted one carries its cookie: answered
	// normally.
	fork := cookies["idle1"].clone()
	if ans := b.pullInto(t, "alice", "forked-from-idle1", fork); ans.Error != "" || !ans.reset() {
		t.Errorf("pull of a group forked from a deleted one = %+v; want a reset", ans)
	}
	// The groups in use stay, and keep diffing.
	for _, g := range []string{"active", "pushing"} {
		if ans := b.pullInto(t, "alice", g, cookies[g]); ans.Error != "" || ans.reset() {
			t.Errorf("pull of %s after the sweep = %+v; want a diff", g, ans)
		}
	}

	// Tombstones expire after 4 × the TTL.
	exec(`UPDATE %s.client_groups SET deleted_at = now() - interval '5 hours' WHERE id = 'idle3'`)
	a.sc.sweepOnce(ctx)
	if n := count(`SELECT count(*) FROM %s.client_groups WHERE id = 'idle3'`); n != 0 {
		t.Errorf("an expired tombstone is still there")
	}
	if got := testutil.ToFloat64(a.sc.core.Metrics.Pruned.WithLabelValues("tombstones")); got != 1 {
		t.Errorf(`bookkeeping_pruned_total{what="tombstones"} = %v, want 1`, got)
	}
	// Its clients, coming back later still, start over too: their cookie
	// names an order the recreated group never issued. Both tabs (they share
	// the group's cookie): the first one's answer must not make the second
	// one's cookie look issued.
	for tab := range 2 {
		r := a.post(t, "/replicache/pull", "Bearer alice", pullBody("idle3", cookies["idle3"].cookie))
		if r.status != http.StatusOK || string(r.raw) != `{"error":"ClientStateNotFound"}` {
			t.Errorf("tab %d: pull with the cookie of a group whose tombstone expired = %d %s; want ClientStateNotFound", tab, r.status, r.raw)
		}
	}
}

// TestSweepSkipsBusyGroups: a group locked by a push or pull right now is
// skipped, and the sweep goes on to the idle groups behind it, even one
// batch of one at a time.
func TestSweepSkipsBusyGroups(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_CLIENT_GROUP_TTL": "1h"})
	a := h.start()
	ctx := context.Background()
	schema := pgx.Identifier{h.schema}.Sanitize()
	for _, g := range []string{"busy", "idle"} {
		a.pullInto(t, "alice", g, newReplica())
	}
	if _, err := a.pool.Exec(ctx, fmt.Sprintf(`UPDATE %s.client_groups SET last_used_at = now() - CASE id WHEN 'busy' THEN interval '3 hours' ELSE interval '2 hours' END`, schema)); err != nil {
		t.Fatal(err)
	}
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf(`SELECT 1 FROM %s.client_groups WHERE id = 'busy' FOR UPDATE`, schema)); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	swept, err := a.sc.core.Store.SweepGroups(sctx, time.Hour, 4*time.Hour, 1)
	if err != nil || swept.Groups != 1 || sctx.Err() != nil {
		t.Errorf("sweep with the oldest idle group busy = %+v, %v (deadline passed: %v); want the other one deleted", swept, err, sctx.Err() != nil)
	}
}
