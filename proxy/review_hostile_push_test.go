package proxy

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestHostileGapInALaterClientKeepsWhatWasApplied: a push of two clients
// whose second client comes with a gap answers 400 MutationIDGap naming
// it, after the first client's mutations were applied and committed: the
// client's corrected retry must not send them again.
func TestHostileGapInALaterClientKeepsWhatWasApplied(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	r := sc.push(t, "alice", "g", create("c1", 1, "a"), create("c1", 2, "b"), create("c2", 3, "z"))
	if r.status != http.StatusBadRequest || r.str("error") != "MutationIDGap" || r.json["clientID"] != "c2" {
		t.Fatalf("push = %d %s; want 400 MutationIDGap naming c2", r.status, r.raw)
	}
	if got := h.lmid(t, sc.pool, "c1"); got != 2 {
		t.Fatalf("c1's lastMutationID = %d, want 2 (applied before the gap)", got)
	}
	r = sc.push(t, "alice", "g", create("c1", 1, "a"), create("c1", 2, "b"), create("c2", 1, "z"))
	if r.status != http.StatusOK || r.json["applied"] != 1.0 || r.json["duplicate"] != 2.0 {
		t.Fatalf("retry = %d %s; want 200, 1 applied, 2 duplicates", r.status, r.raw)
	}
	for _, k := range []string{keyOf("alice", "g", "c1", 1), keyOf("alice", "g", "c1", 2), keyOf("alice", "g", "c2", 1)} {
		if n := h.up.CallsFor(k); n != 1 {
			t.Errorf("key %s… sent %d times, want 1", k[:8], n)
		}
	}
}

// TestHostileDatabaseGoesAwayMidBatch: the sidecar's connection holding
// the group's lock is killed while a batch's second call is out. The
// push answers a clear 503 (JSON), nothing of the batch commits, and the
// client's retry sends the same keys: every mutation applied once, none
// lost.
func TestHostileDatabaseGoesAwayMidBatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	admin := proxytest.NewPool(t)
	key2 := keyOf("alice", "g", "c1", 2)
	var once sync.Once
	killed := 0
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.Header.Get("Idempotency-Key") == key2 {
			once.Do(func() {
				// Only this test's sidecar's transaction: its last statement
				// names the test's own schema.
				rows, err := admin.Query(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
					WHERE state LIKE 'idle in transaction%' AND position($1 in query) > 0 AND pid <> pg_backend_pid()`,
					pgx.Identifier{h.schema}.Sanitize())
				if err != nil {
					t.Errorf("terminating: %v", err)
					return
				}
				for rows.Next() {
					killed++
				}
				rows.Close()
			})
		}
		return false
	})
	r := sc.push(t, "alice", "g", create("c1", 1, "a"), create("c1", 2, "b"), create("c1", 3, "c"))
	t.Logf("push = %d %s (backends killed: %d)", r.status, r.raw, killed)
	if killed == 0 {
		t.Fatal("no transaction found to kill")
	}
	if r.status == http.StatusOK {
		t.Errorf("push answered 200 %s though its transaction was killed", r.raw)
	}
	if r.status != http.StatusOK && (r.status < 500 || r.str("error") == "") {
		t.Errorf("push = %d %s; want a 5xx naming the problem in JSON", r.status, r.raw)
	}
	h.up.SetHook(nil)
	var rr response
	proxytest.WaitFor(t, "a retry to be served", func() bool {
		rr = sc.push(t, "alice", "g", create("c1", 1, "a"), create("c1", 2, "b"), create("c1", 3, "c"))
		return rr.status == http.StatusOK
	})
	if got := h.lmid(t, sc.pool, "c1"); got != 3 {
		t.Errorf("lastMutationID = %d after the retry, want 3", got)
	}
	if m := h.up.MultiplyApplied(); len(m) != 0 {
		t.Errorf("applied more than once: %v", m)
	}
	if got := h.up.TodoIDs("alice"); len(got) != 3 {
		t.Errorf("todos = %v, want a, b, c", got)
	}
}

// TestHostileRetryOnAnotherReplicaWhileTheFirstRuns: the client's retry
// of a push reaches another replica while the first is still sending its
// batch, which holds a business refusal in the middle. The retry waits for
// the group's lock, then finds everything done: each mutation sent once,
// the refusal recorded once and not retried.
func TestHostileRetryOnAnotherReplicaWhileTheFirstRuns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a, b := h.start(), h.start()
	if r := a.push(t, "alice", "g", create("c1", 1, "dup")); r.status != http.StatusOK {
		t.Fatalf("setup = %d %s", r.status, r.raw)
	}
	key3 := keyOf("alice", "g", "c1", 3)
	release := make(chan struct{})
	var first atomic.Bool
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.Header.Get("Idempotency-Key") == key3 && first.CompareAndSwap(false, true) {
			<-release
		}
		return false
	})
	muts := []mut{create("c1", 2, "dup"), create("c1", 3, "x"), create("c1", 4, "y")} // 2 is a 409: rejected
	ra := make(chan response, 1)
	go func() { ra <- a.push(t, "alice", "g", muts...) }()
	proxytest.WaitFor(t, "push A to send mutation 3", first.Load)
	rb := make(chan response, 1)
	go func() { rb <- b.push(t, "alice", "g", muts...) }()
	time.Sleep(100 * time.Millisecond) // let B queue for the lock (not asserted)
	close(release)
	resA, resB := <-ra, <-rb
	t.Logf("A = %d %s; B = %d %s", resA.status, resA.raw, resB.status, resB.raw)
	if resA.status != http.StatusOK || resB.status != http.StatusOK {
		t.Fatalf("A = %d, B = %d; want 200 both", resA.status, resB.status)
	}
	if got := h.lmid(t, a.pool, "c1"); got != 4 {
		t.Errorf("lastMutationID = %d, want 4", got)
	}
	for id := int64(2); id <= 4; id++ {
		if n := h.up.CallsFor(keyOf("alice", "g", "c1", id)); n != 1 {
			t.Errorf("mutation %d sent %d times, want 1", id, n)
		}
	}
	if got := resA.json["rejected"].(float64) + resB.json["rejected"].(float64); got != 1 {
		t.Errorf("rejections reported %v, want 1", got)
	}
	var n int
	if err := a.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{h.schema}.Sanitize()+".mutation_rejections").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d rejection records, want 1", n)
	}
}

// idleFor makes each client look idle for its age ("3 days"): last active
// that long ago.
func idleFor(t *testing.T, h *harness, sc *instance, ages map[string]string) {
	t.Helper()
	tbl := pgx.Identifier{h.schema}.Sanitize() + ".clients"
	for client, age := range ages {
		if _, err := sc.pool.Exec(context.Background(), "UPDATE "+tbl+" SET updated_at = now() - $2::interval WHERE id = $1", client, age); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHostilePruningSparesThePushsOwnClients: a push of two clients into
// a full group (SIDECAR_MAX_CLIENTS_PER_GROUP) makes room for the new one
// by pruning clients idle for over a day. The client idle longest is the
// one whose pending mutations this push carries (Replicache pushes a
// client's mutations through another client of its group, after days
// offline): pruning it answered the push ClientStateNotFound, and the
// client, told to start over, drops its pending mutations (lost). The
// push's own clients are never pruned: another idle client goes.
func TestHostilePruningSparesThePushsOwnClients(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_CLIENTS_PER_GROUP": "2"})
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("old", 1, "o1"), create("other", 1, "x1")); r.status != http.StatusOK {
		t.Fatalf("setup = %d %s", r.status, r.raw)
	}
	idleFor(t, h, sc, map[string]string{"old": "3 days", "other": "2 days"})
	r := sc.push(t, "alice", "g", create("old", 2, "o2"), create("new", 1, "n1"))
	if r.status != http.StatusOK || r.json["applied"] != 2.0 {
		t.Fatalf("push = %d %s; want 200 with both applied (the idle client named in the push kept, another pruned)", r.status, r.raw)
	}
	if got := h.lmid(t, sc.pool, "old"); got != 2 {
		t.Errorf("old's lastMutationID = %d, want 2", got)
	}
	if got := h.lmid(t, sc.pool, "other"); got != 0 {
		t.Errorf("other (idle, not in the push) still has lastMutationID %d: it should have been pruned", got)
	}
}

// TestPruningForALaterClaimSparesThePushsOwnClients: the room a push of
// several clients made for its new ones (CheckClients) can be taken by
// another push before the push reaches its second new client; that
// client's claim then makes room again, and must spare the push's own
// clients as CheckClients does: the idle client whose pending mutations
// come later in this push would otherwise be pruned (answered
// ClientStateNotFound: its mutations lost). Here the other push is a
// clients row written while the push's first call is at the API.
func TestPruningForALaterClaimSparesThePushsOwnClients(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_CLIENTS_PER_GROUP": "3"})
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("old", 1, "o1"), create("idle1", 1, "i1"), create("idle2", 1, "i2")); r.status != http.StatusOK {
		t.Fatalf("setup = %d %s", r.status, r.raw)
	}
	idleFor(t, h, sc, map[string]string{"old": "3 days", "idle1": "2 days", "idle2": "2 days"})
	tbl := pgx.Identifier{h.schema}.Sanitize() + ".clients"
	var intruded atomic.Bool
	h.up.SetHook(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.Header.Get("Idempotency-Key") != "" && !intruded.Swap(true) {
			// Another push's new client, claimed between this push's
			// batches. Written now, while this push holds the group's row
			// lock, so without the foreign key's check (it would wait for
			// that lock, and then race this push's next batch for it).
			err := pgx.BeginFunc(context.Background(), sc.pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(context.Background(), "SET LOCAL session_replication_role = replica"); err != nil {
					return err
				}
				_, err := tx.Exec(context.Background(), "INSERT INTO "+tbl+" (id, client_group_id) VALUES ('intruder', 'g')")
				return err
			})
			if err != nil {
				t.Error(err)
			}
		}
		return false
	})
	r := sc.push(t, "alice", "g", create("new0", 1, "n0"), create("new1", 1, "n1"), create("old", 2, "o2"))
	if !intruded.Load() {
		t.Fatal("the push's first call never reached the API")
	}
	if r.status == http.StatusOK && r.json["error"] == "ClientStateNotFound" || h.lmid(t, sc.pool, "old") != 1 {
		t.Fatalf("push = %d %s, old's lastMutationID %d: the idle client whose mutation the push carries was pruned",
			r.status, r.raw, h.lmid(t, sc.pool, "old"))
	}
	if r.status != http.StatusBadRequest || r.json["error"] != "TooManyClients" {
		t.Errorf("push = %d %s; want 400 TooManyClients (the group is full of active clients and the push's own)", r.status, r.raw)
	}
	if got := h.lmid(t, sc.pool, "new0"); got != 1 {
		t.Errorf("new0's lastMutationID = %d, want 1 (applied before the room ran out)", got)
	}
}

// TestHostileOddArgsNeverCrash: args of every JSON shape, for a mutator
// whose path names one of them: each is answered (applied, or consumed as
// a rejection with its record), never a crash or a 5xx, and nothing
// wedges the client.
func TestHostileOddArgsNeverCrash(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	odd := []any{nil, "str", 123, []any{1, 2}, map[string]any{}, map[string]any{"id": map[string]any{"x": 1}},
		map[string]any{"id": []any{"a"}}, map[string]any{"id": ""}, map[string]any{"id": ".."}, map[string]any{"id": "a/b?c#d"},
		map[string]any{"id": 1e300}, map[string]any{"id": true, "title": map[string]any{"deep": []any{nil}}}}
	muts := make([]mut, 0, len(odd))
	for i, a := range odd {
		muts = append(muts, mut{"c1", int64(i + 1), "updateTodo", a})
	}
	r := sc.push(t, "alice", "g", muts...)
	if r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if got := r.json["applied"].(float64) + r.json["rejected"].(float64); int(got) != len(odd) {
		t.Errorf("push = %s; want all %d applied or rejected", r.raw, len(odd))
	}
	if got := h.lmid(t, sc.pool, "c1"); got != int64(len(odd)) {
		t.Errorf("lastMutationID = %d, want %d", got, len(odd))
	}
}
