package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// newStore returns a migrated Store on a fresh schema, with a pool whose
// lock_timeout is lockTimeout.
func newStore(t *testing.T, lockTimeout time.Duration) *Store {
	t.Helper()
	pool, err := NewPool(context.Background(), PoolOptions{URL: proxytest.DatabaseURL(t),
		StatementTimeout: 5 * time.Second, LockTimeout: lockTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, Options{Schema: proxytest.NewSchema(t), WaitTimeout: 10 * time.Second})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMigrations(t *testing.T) {
	pool := proxytest.NewPool(t)
	schema := proxytest.NewSchema(t)
	// Replicas starting together take turns; both end up ready.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = New(pool, Options{Schema: schema}).Migrate(context.Background())
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	s := New(pool, Options{Schema: schema})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if err := s.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	rows, _ := pool.Query(context.Background(), "SELECT version FROM "+pgx.Identifier{schema}.Sanitize()+".schema_migrations ORDER BY version")
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	if len(versions) != SchemaVersion() || versions[len(versions)-1] != SchemaVersion() {
		t.Errorf("recorded versions %v, want 1..%d once each", versions, SchemaVersion())
	}
	// A database migrated by a newer binary is still accepted.
	if _, err := pool.Exec(context.Background(), "INSERT INTO "+pgx.Identifier{schema}.Sanitize()+".schema_migrations (version) VALUES (999)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Errorf("Migrate on a newer schema: %v", err)
	}
}

func TestReadyNeedsMigrations(t *testing.T) {
	s := New(proxytest.NewPool(t), Options{Schema: proxytest.NewSchema(t)})
	if err := s.Ready(context.Background()); err == nil {
		t.Fatal("Ready before Migrate succeeded")
	}
}

func TestNewPoolSettings(t *testing.T) {
	for _, tc := range []struct {
		query    string
		maxConns int32
	}{
		{"", defaultPoolSize},
		{"pool_max_conns=3", 3},
	} {
		url := proxytest.DatabaseURL(t)
		if tc.query != "" {
			sep := "?"
			if strings.Contains(url, "?") {
				sep = "&"
			}
			url += sep + tc.query
		}
		pool, err := NewPool(context.Background(), PoolOptions{URL: url, StatementTimeout: 7 * time.Second, LockTimeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Config().MaxConns; got != tc.maxConns {
			t.Errorf("%q: MaxConns = %d, want %d", tc.query, got, tc.maxConns)
		}
		var stmt, lock, idle string
		err = pool.QueryRow(context.Background(), "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')").Scan(&stmt, &lock, &idle)
		if err != nil || stmt != "7s" || lock != "3s" || idle != "5min" {
			t.Errorf("session timeouts = %q, %q, %q (%v), want 7s, 3s and the 5min floor", stmt, lock, idle, err)
		}
		pool.Close()
	}
	if _, err := NewPool(context.Background(), PoolOptions{URL: "postgres://u:secret@h:notaport/db"}); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("bad URL: err = %v, want an error that does not echo the URL", err)
	}
}

// TestGroupOwnership: a group belongs to the user who first used it, a
// client to the group it first appeared in, and a deleted group says so.
func TestGroupOwnership(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	noop := func(*GroupTx) error { return nil }
	if err := s.Locked(ctx, "g1", "alice", func(g *GroupTx) error {
		return errors.Join(g.ClaimClient(ctx, "c1", 0), g.ClaimClient(ctx, "c2", 0))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Locked(ctx, "g1", "bob", noop); !errors.Is(err, ErrGroupForbidden) {
		t.Errorf("bob locking alice's group: %v, want ErrGroupForbidden", err)
	}
	err := s.Locked(ctx, "g2", "alice", func(g *GroupTx) error {
		_, err := g.CheckClients(ctx, []string{"c3", "c1"}, 0)
		return err
	})
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("claiming g1's client for g2: %v, want ErrClientForbidden", err)
	}
	// The failed transaction rolled back: c3 was not registered with g2.
	err = s.Locked(ctx, "g3", "alice", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c3", 1) })
	if err != nil {
		t.Errorf("c3 should be free after the rollback: %v", err)
	}
	err = s.LockedClient(ctx, "g2", "alice", "c1", func(g *GroupTx) error {
		_, err := g.LastMutationID(ctx, "c1")
		return err
	})
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("LastMutationID of g1's client in g2: %v, want ErrClientForbidden", err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET deleted_at = now() WHERE id = 'g1'`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Locked(ctx, "g1", "alice", noop); !errors.Is(err, ErrGroupDeleted) {
		t.Errorf("locking a deleted group: %v, want ErrGroupDeleted", err)
	}
}

// TestMutationBookkeeping: last mutation ids and rejections are recorded
// only when the callback succeeds, and read back per group.
func TestMutationBookkeeping(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.LockedClient(ctx, "g", "u", "c1", func(g *GroupTx) error {
		if lmid, err := g.LastMutationID(ctx, "c1"); err != nil || lmid != 0 {
			t.Errorf("new client: lmid %d, %v", lmid, err)
		}
		if err := g.SetLastMutationID(ctx, "c1", 1); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Locked returned %v, want the callback's error", err)
	}
	err = s.LockedClient(ctx, "g", "u", "c1", func(g *GroupTx) error {
		if lmid, err := g.LastMutationID(ctx, "c1"); err != nil || lmid != 0 {
			t.Errorf("after a rolled-back step: lmid %d, %v; want 0", lmid, err)
		}
		if err := g.SetLastMutationID(ctx, "c1", 2); err != nil {
			return err
		}
		return g.RecordRejection(ctx, Rejection{ClientID: "c1", MutationID: 2, Mutator: "m", Status: 422, Reason: "no", Body: "{}"})
	})
	if err != nil {
		t.Fatal(err)
	}
	// A retried rejection is recorded once.
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		return g.RecordRejection(ctx, Rejection{ClientID: "c1", MutationID: 2, Mutator: "m", Reason: "again"})
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var reason string
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT count(*), min(reason) FROM {schema}.mutation_rejections`)).Scan(&n, &reason); err != nil || n != 1 || reason != "no" {
		t.Errorf("rejections: %d (%q), %v; want the first one only", n, reason, err)
	}
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		if err := g.SetLastMutationID(ctx, "c2", 5); err != nil {
			return err
		}
		lmids, err := g.LastMutationIDs(ctx)
		if err != nil {
			return err
		}
		if len(lmids) != 2 || lmids["c1"] != 2 || lmids["c2"] != 5 {
			t.Errorf("LastMutationIDs = %v", lmids)
		}
		known, err := g.CheckClients(ctx, []string{"c1", "c3"}, 0)
		if err != nil {
			return err
		}
		if len(known) != 1 || known["c1"] != 2 {
			t.Errorf("CheckClients = %v, want only the known c1 (it creates nothing)", known)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCookieOrdersOnlyGrow: every order issued to a group exceeds both the
// request's and every earlier one, also when the request comes from a fork
// with a larger order, and a rolled-back pull issues nothing.
func TestCookieOrdersOnlyGrow(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	next := func(req int64, fail bool) int64 {
		t.Helper()
		var got int64
		err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			var err error
			if got, err = g.NextCookieOrder(ctx, req); err != nil {
				return err
			}
			if fail {
				return errors.New("rolled back")
			}
			return nil
		})
		if err != nil && !fail {
			t.Fatal(err)
		}
		return got
	}
	for _, step := range []struct {
		req  int64
		fail bool
		want int64
	}{
		{0, false, 1},
		{0, false, 2},   // a stale request cookie still gets a fresh order
		{10, false, 11}, // a forked client's larger order is exceeded
		{3, true, 12},   // issued, then rolled back…
		{3, false, 12},  // …so the next pull gets the same order again
	} {
		if got := next(step.req, step.fail); got != step.want {
			t.Errorf("request order %d: got %d, want %d", step.req, got, step.want)
		}
	}
	// Near JSON's largest safe integer: the last order is issued, and then
	// nothing more, whatever the request carries.
	if got := next(maxCookieOrder-1, false); got != maxCookieOrder {
		t.Fatalf("request order max-1: got %d, want %d", got, int64(maxCookieOrder))
	}
	for _, req := range []int64{0, maxCookieOrder} {
		err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			_, err := g.NextCookieOrder(ctx, req)
			return err
		})
		if !errors.Is(err, ErrCookieExhausted) {
			t.Errorf("request order %d on an exhausted group: %v, want ErrCookieExhausted", req, err)
		}
	}
}

// TestCookieOrdersForSeveralPulls: one statement issues each pull its own
// order, strictly increasing and above each request's; the next
// transaction continues above them; an exhausted request gets 0 alone.
func TestCookieOrdersForSeveralPulls(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	orders := func(reqs ...int64) []int64 {
		t.Helper()
		var got []int64
		if err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			var err error
			got, err = g.NextCookieOrders(ctx, reqs)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := orders(0, 5, 0); !slices.Equal(got, []int64{1, 6, 7}) {
		t.Errorf("orders for requests 0, 5, 0 = %v, want [1 6 7]", got)
	}
	if got := orders(2); !slices.Equal(got, []int64{8}) {
		t.Errorf("next order = %v, want [8]", got)
	}
	if got := orders(maxCookieOrder, 0); !slices.Equal(got, []int64{0, 9}) {
		t.Errorf("orders for an exhausted request and a fresh one = %v, want [0 9]", got)
	}
}

// TestGroupLockSerializes: a second transaction on the same group waits for
// the first (and gives up with IsLockTimeout past lock_timeout), while
// another group is not held up at all.
func TestGroupLockSerializes(t *testing.T) {
	s := newStore(t, 300*time.Millisecond)
	ctx := context.Background()
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Locked(ctx, "busy", "u", func(*GroupTx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	err := s.Locked(ctx, "busy", "u", func(*GroupTx) error { return nil })
	if !IsLockTimeout(err) {
		t.Errorf("second lock of a held group: %v, want a lock timeout", err)
	}
	// While "busy" is still held: a wait here would end in a lock timeout.
	if err := s.Locked(ctx, "other", "u", func(*GroupTx) error { return nil }); err != nil {
		t.Errorf("another group: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCommitSurvivesCancellation: once the callback has run, its work is
// committed even if the caller's context ended meanwhile (the upstream
// call inside it cannot be taken back).
func TestCommitSurvivesCancellation(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	err := s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
		dctx := context.WithoutCancel(ctx)
		cancel() // the client goes away mid-step
		return g.SetLastMutationID(dctx, "c", 1)
	})
	if err != nil {
		t.Fatalf("Locked: %v", err)
	}
	var lmid int64
	if err := s.pool.QueryRow(context.Background(), s.sql(`SELECT last_mutation_id FROM {schema}.clients WHERE id = 'c'`)).Scan(&lmid); err != nil || lmid != 1 {
		t.Errorf("last mutation id = %d, %v; want 1 committed", lmid, err)
	}
}

// TestAttempts: answered attempts of a pending mutation are counted
// durably (committed transactions only) and forgotten once the mutation is
// consumed.
func TestAttempts(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	record := func(id int64, commit bool) Attempts {
		t.Helper()
		var a Attempts
		err := s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
			var err error
			if a, err = g.RecordAttempt(ctx, "c", id, 503); err != nil {
				return err
			}
			if !commit {
				return errors.New("rolled back")
			}
			return nil
		})
		if commit && err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := record(1, true); a.Count != 1 {
		t.Fatalf("first attempt: %+v", a)
	}
	record(1, false) // rolled back: not counted
	if a := record(1, true); a.Count != 2 || a.Span < 0 {
		t.Fatalf("second committed attempt: %+v, want count 2", a)
	}
	if a := record(2, true); a.Count != 1 {
		t.Errorf("another mutation's first attempt: %+v", a)
	}
	if err := s.Locked(ctx, "g", "u", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c", 1) }); err != nil {
		t.Fatal(err)
	}
	var left []int64
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT mutation_id FROM {schema}.mutation_attempts ORDER BY 1`))
	left, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(left) != 1 || left[0] != 2 {
		t.Errorf("attempts left after consuming mutation 1: %v (%v), want [2]", left, err)
	}
}

// TestClientCaps: a new client fits under the group's limit by pruning the
// least recently active client idle for over a day; when every client was
// active within a day, the claim fails and creates nothing.
func TestClientCaps(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	claim := func(id string) error {
		return s.Locked(ctx, "g", "u", func(g *GroupTx) error { return g.ClaimClient(ctx, id, 3) })
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := claim(id); err != nil {
			t.Fatal(err)
		}
	}
	var tooMany *TooManyClientsError
	if err := claim("d"); !errors.As(err, &tooMany) || tooMany.Limit != 3 {
		t.Fatalf("a fourth active client: %v, want TooManyClientsError", err)
	}
	err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		_, err := g.CheckClients(ctx, []string{"a", "d"}, 3)
		return err
	})
	if !errors.As(err, &tooMany) {
		t.Errorf("CheckClients with a new client over the limit: %v", err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.clients SET updated_at = now() - interval '2 days' WHERE id IN ('b', 'c')`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.clients SET updated_at = now() - interval '3 days' WHERE id = 'c'`)); err != nil {
		t.Fatal(err)
	}
	if err := claim("d"); err != nil {
		t.Fatalf("a fourth client with idle ones to prune: %v", err)
	}
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT id FROM {schema}.clients ORDER BY id`))
	ids, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	if strings.Join(ids, ",") != "a,b,d" {
		t.Errorf("clients = %v, want c (the least recently active) pruned", ids)
	}
}

// TestTrimRejections keeps the newest within the cap and none past the TTL.
func TestTrimRejections(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		for i := int64(1); i <= 6; i++ {
			if err := g.RecordRejection(ctx, Rejection{ClientID: "c", MutationID: i, Mutator: "m", Reason: "no"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.mutation_rejections SET created_at = now() - interval '2 days' WHERE mutation_id = 1`)); err != nil {
		t.Fatal(err)
	}
	var deleted int64
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		var err error
		deleted, err = g.TrimRejections(ctx, 3, 24*time.Hour)
		return err
	})
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT mutation_id FROM {schema}.mutation_rejections ORDER BY 1`))
	left, _ := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || deleted != 3 || len(left) != 3 || left[0] != 4 {
		t.Errorf("after trimming: %v left, %d deleted (%v); want the newest 3 (4, 5, 6)", left, deleted, err)
	}
}

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

// TestUpgradeKeepsOldKeys: clients known before the HMAC keys keep the old
// key for the one mutation they may have sent already; the secret is made
// once and kept.
func TestUpgradeKeepsOldKeys(t *testing.T) {
	pool := proxytest.NewPool(t)
	s := New(pool, Options{Schema: proxytest.NewSchema(t)})
	ctx := context.Background()
	if err := s.migrateTo(ctx, secretMigration-1); err != nil {
		t.Fatal(err)
	}
	// What the previous binary left: a client 7 mutations in.
	if _, err := pool.Exec(ctx, s.sql(`INSERT INTO {schema}.client_groups (id, user_id) VALUES ('g', 'u');
		INSERT INTO {schema}.clients (id, client_group_id, last_mutation_id) VALUES ('old', 'g', 7)`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	secret, err := s.IdempotencySecret(ctx)
	if err != nil || len(secret) != 32 {
		t.Fatalf("secret: %d bytes, %v", len(secret), err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.IdempotencySecret(ctx); string(again) != string(secret) {
		t.Error("a second Migrate changed the secret")
	}
	err = s.LockedClient(ctx, "g", "u", "old", func(g *GroupTx) error {
		through, err := g.LegacyKeysThrough(ctx, "old")
		if through != 8 {
			t.Errorf("old client: legacy keys through %d, want 8 (its next mutation)", through)
		}
		if err := g.ClaimClient(ctx, "new", 0); err != nil {
			return err
		}
		if through, _ := g.LegacyKeysThrough(ctx, "new"); through != 0 {
			t.Errorf("new client: legacy keys through %d, want 0", through)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLockedReportsARolledBackCommit: a transaction that failed inside the
// callback, even if the callback ignored the failure, is reported, not
// taken for committed (Postgres answers COMMIT with ROLLBACK then); and the
// connection goes back to the pool usable.
func TestLockedReportsARolledBackCommit(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		_, _ = g.tx.Exec(ctx, "SELECT 1/0") // fails; ignored on purpose
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("Locked after a failed statement = %v; want a rolled-back commit", err)
	}
	for range 5 { // every pooled connection is usable again
		if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error { return nil }); err != nil {
			t.Fatalf("Locked afterwards: %v", err)
		}
	}
}

// TestDeferredLastMutationID: the last mutation id is written with the
// transaction's next statement or its COMMIT; a failure there (the client
// belongs to another group) fails the transaction with ErrClientForbidden
// and changes nothing.
func TestDeferredLastMutationID(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	if err := s.Locked(ctx, "g1", "alice", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c1", 3) }); err != nil {
		t.Fatal(err)
	}
	err := s.Locked(ctx, "g2", "alice", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c1", 9) })
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("writing g1's client from g2 = %v; want ErrClientForbidden at commit", err)
	}
	err = s.Locked(ctx, "g1", "alice", func(g *GroupTx) error {
		lmids, err := g.LastMutationIDs(ctx)
		if err == nil && lmids["c1"] != 3 {
			err = fmt.Errorf("c1 at %d after the failed write, want 3", lmids["c1"])
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}
