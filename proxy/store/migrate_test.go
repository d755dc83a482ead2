package store

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

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

// TestSettleMigrationIsExpandOnly: migration 10 (Settle's columns) leaves
// the previous release working on the migrated schema, even on a connection
// whose statements it prepared before (pgx's statement cache: a query whose
// result changed shape would fail there with "cached plan must not change
// result type"); it rewrites no table, and the rows each release writes
// are read right by the other.
func TestSettleMigrationIsExpandOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := proxytest.NewSchema(t)
	// The previous release, on one connection so its statements stay
	// prepared across the migration. Its store calls are the ones that
	// remain unchanged in this package.
	url := proxytest.DatabaseURL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	oldPool, err := NewPool(ctx, PoolOptions{URL: url + sep + "pool_max_conns=1", StatementTimeout: 5 * time.Second, LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(oldPool.Close)
	old := New(oldPool, Options{Schema: schema})
	if err := old.migrateTo(ctx, 9); err != nil {
		t.Fatal(err)
	}
	// oldPush is what the previous release does on a push: read the
	// client, claim it, count an attempt of its pending mutation 5 (the
	// count it should see is want), consume a mutation and reject one.
	oldPush := func(lmid int64, want int) {
		t.Helper()
		err := old.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
			if _, err := g.LastMutationID(ctx, "c"); err != nil {
				return err
			}
			if err := g.ClaimClient(ctx, "c", 10); err != nil {
				return err
			}
			a, err := g.RecordAttempt(ctx, "c", 5, 503)
			if err != nil {
				return err
			}
			if a.Count != want {
				t.Errorf("previous release: attempt count %d, want %d", a.Count, want)
			}
			if err := g.SetLastMutationID(ctx, "c", lmid); err != nil {
				return err
			}
			return g.RecordRejection(ctx, Rejection{ClientID: "c", MutationID: lmid, Mutator: "m", Reason: "no"})
		})
		if err != nil {
			t.Fatalf("previous release on the schema: %v", err)
		}
	}
	oldPush(1, 1)
	filenode := func() int64 {
		t.Helper()
		var n int64
		if err := oldPool.QueryRow(ctx, `SELECT relfilenode::bigint FROM pg_class WHERE oid = $1::regclass`, old.sql("{schema}.mutation_attempts")).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := filenode()

	s := New(proxytest.NewPool(t), Options{Schema: schema})
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if after := filenode(); after != before {
		t.Errorf("mutation_attempts was rewritten (file node %d, then %d)", before, after)
	}
	oldPush(2, 2) // its prepared statements still work
	// This release counts on from the previous one's row, and the
	// previous one on from a row this one wrote.
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		for _, step := range []struct {
			Settlement
			want int
		}{
			{Settlement{ClientID: "c", MutationID: 5, Status: 502}, 2},               // uncounted
			{Settlement{ClientID: "c", MutationID: 5, Status: 503, Counts: true}, 3}, // counted
		} {
			a, err := g.Settle(ctx, step.Settlement)
			if err != nil {
				return err
			}
			if a.Count != step.want {
				t.Errorf("%+v on the previous release's row: %+v, want count %d", step.Settlement, a, step.want)
			}
		}
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 3, Outcome: Rejected, Status: 422, Reason: "no"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	oldPush(4, 4)
}

// TestMigrationLockWaitIsBounded: migration 10 waits for mutation_attempts'
// lock at most 3s (every query of the table queues behind the wait), then
// fails having applied nothing, to be retried.
func TestMigrationLockWaitIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := proxytest.NewPool(t)
	s := New(pool, Options{Schema: proxytest.NewSchema(t)})
	if err := s.migrateTo(ctx, 9); err != nil {
		t.Fatal(err)
	}
	// A push's transaction holding a lock on the table.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, s.sql(`DELETE FROM {schema}.mutation_attempts WHERE client_id = 'c'`)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.Migrate(ctx)
	if waited := time.Since(start); !IsLockTimeout(err) || waited > 10*time.Second {
		t.Errorf("Migrate behind a held lock: %v after %v, want a lock timeout after about 3s", err, waited)
	}
	if err := s.Ready(ctx); err == nil {
		t.Error("Ready after a failed Migrate: the migration was applied")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate once the lock is free: %v", err)
	}
}
