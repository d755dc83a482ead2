package proxy

import (
	"context"
	"fmt"
	"maps"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestViewRecordsPerUserAreBounded (security round 3, finding 6): one user
// pulling fresh client group ids, each pull writing a whole view record,
// grows the sidecar's Postgres by at most SIDECAR_MAX_VIEW_RECORDS_PER_USER
// groups' records: the least recently used group's record is evicted. That
// group keeps its clients and last mutation ids; its next pull, with the
// cookie it holds, is answered with a reset (never ClientStateNotFound,
// never an error), and the one after with a diff again. Another user's
// records are untouched. Before: every fresh group kept its record (31
// records here).
func TestViewRecordsPerUserAreBounded(t *testing.T) {
	t.Parallel()
	const max, flood = 4, 30
	h := newHarness(t, map[string]string{"SIDECAR_MAX_VIEW_RECORDS_PER_USER": fmt.Sprint(max)})
	a := h.start()
	ctx := context.Background()
	if r := a.push(t, "alice", "victim", create("c", 1, "a1"), create("c", 2, "a2")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	victim := newReplica()
	if ans := a.pullInto(t, "alice", "victim", victim); !ans.reset() || len(victim.state) != 3 {
		t.Fatalf("first pull: %+v, holds %v", ans, victim.state)
	}
	bob := newReplica()
	a.pullInto(t, "bob", "bobs", bob)
	for i := range flood {
		if ans := a.pullInto(t, "alice", fmt.Sprintf("fresh-%d", i), newReplica()); ans.Error != "" {
			t.Fatalf("pull of a fresh group: %+v", ans)
		}
	}
	schema := pgx.Identifier{h.schema}.Sanitize()
	held := func(user string) (groups, entries int) {
		t.Helper()
		err := a.pool.QueryRow(ctx, `SELECT count(DISTINCT v.client_group_id), (SELECT count(*) FROM `+schema+`.view_entries e
				JOIN `+schema+`.client_groups g ON g.id = e.client_group_id WHERE g.user_id = $1)
			FROM `+schema+`.view_versions v JOIN `+schema+`.client_groups g ON g.id = v.client_group_id WHERE g.user_id = $1`, user).Scan(&groups, &entries)
		if err != nil {
			t.Fatal(err)
		}
		return groups, entries
	}
	if groups, entries := held("alice"); groups > max || entries > max*3 {
		t.Errorf("alice's %d fresh groups keep %d records (%d entries), want at most %d", flood+1, groups, entries, max)
	}
	if groups, _ := held("bob"); groups != 1 {
		t.Errorf("bob's record was evicted by alice's pulls (%d left)", groups)
	}
	if n := testutil.ToFloat64(a.sc.core.Metrics.RecordEvictions); n != flood+1-max {
		t.Errorf("view_record_evictions_total = %v, want %d", n, flood+1-max)
	}

	// The victim's group was used least recently: evicted. Its next pull,
	// with the cookie it holds, is a reset with everything, and its last
	// mutation ids are intact.
	before := maps.Clone(victim.state)
	ans := a.pullInto(t, "alice", "victim", victim)
	if ans.Error != "" || !ans.reset() || !maps.Equal(victim.state, before) || ans.LastMutationIDChanges["c"] != 2 {
		t.Errorf("pull of the evicted group with its cookie: error %q, reset %v, lastMutationIDs %v; holds %v, want a reset to %v and lastMutationID 2",
			ans.Error, ans.reset(), ans.LastMutationIDChanges, victim.state, before)
	}
	if ans := a.pullInto(t, "alice", "victim", victim); ans.Error != "" || ans.reset() || len(ans.Patch) != 0 {
		t.Errorf("the pull after: %+v, want an empty diff", ans)
	}
	if r := a.push(t, "alice", "victim", create("c", 3, "a3")); r.status != 200 || h.lmid(t, a.pool, "c") != 3 {
		t.Errorf("push to the evicted group: %d %s, lastMutationID %d", r.status, r.raw, h.lmid(t, a.pool, "c"))
	}
	if ans := a.pullInto(t, "alice", "victim", victim); ans.Error != "" || ans.reset() || len(victim.state) != 4 {
		t.Errorf("a diff after a push: %+v, holds %v", ans, victim.state)
	}
	if groups, _ := held("alice"); groups > max {
		t.Errorf("alice keeps %d records, want at most %d", groups, max)
	}
	if n := testutil.ToFloat64(a.sc.core.Metrics.RecordEvictions); n != flood+2-max {
		t.Errorf("view_record_evictions_total = %v, want %d (the victim's record written again evicts one more)", n, flood+2-max)
	}
	a.sc.sweepOnce(ctx)
	if n := testutil.ToFloat64(a.sc.core.Metrics.RecordStorage); n <= 0 {
		t.Errorf("view_record_storage_bytes = %v after a sweep, want the records' size", n)
	}
}
