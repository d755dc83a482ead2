package store

import (
	"context"
	"sync"
	"testing"

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
