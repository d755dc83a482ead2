package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
		if err := g.ClaimClient(ctx, "new", 0, nil); err != nil {
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

// TestSettleSharesRowsWithThePreviousRelease: the rows Settle and the
// previous release's calls (RecordAttempt, SetLastMutationID,
// RecordRejection, which remain in this package as it made them) write
// are read right by the other: each counts on from the other's attempts.
// (That migration 10 rewrites nothing is TestMigrationsAreExpandOnly's, for
// every migration; that the previous release's prepared statements still
// run on the migrated schema is TestPreviousReleaseBesideThisOne's, with
// the previous release's own binary: this package's calls read columns of
// later migrations now.)
func TestSettleSharesRowsWithThePreviousRelease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := proxytest.NewSchema(t)
	// The previous release, on one connection so its statements stay
	// prepared throughout.
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
	if err := old.Migrate(ctx); err != nil {
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
			if err := g.ClaimClient(ctx, "c", 10, nil); err != nil {
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
	oldPush(2, 2)
	// This release counts on from the previous one's row, and the
	// previous one on from a row this one wrote.
	s := New(proxytest.NewPool(t), Options{Schema: schema})
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

// schemaShape is what TestMigrationsAreExpandOnly compares before and after
// a migration.
type schemaShape struct {
	tables  map[string]int64     // table → file node (a rewrite or TRUNCATE makes a new one)
	columns map[string]columnDef // table.column
	indexes map[string]string    // index → table
	funcs   map[string]bool
}

type columnDef struct {
	Type       string
	NotNull    bool
	HasDefault bool
}

func shapeOf(t *testing.T, pool *pgxpool.Pool, schema string) schemaShape {
	t.Helper()
	ctx := context.Background()
	sh := schemaShape{tables: map[string]int64{}, columns: map[string]columnDef{}, indexes: map[string]string{}, funcs: map[string]bool{}}
	rows, err := pool.Query(ctx, `SELECT c.relname::text, c.relfilenode::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')`, schema)
	if err != nil {
		t.Fatal(err)
	}
	var name, table string
	var node int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &node}, func() error { sh.tables[name] = node; return nil }); err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, `SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped`, schema)
	if err != nil {
		t.Fatal(err)
	}
	var col columnDef
	if _, err := pgx.ForEachRow(rows, []any{&table, &name, &col.Type, &col.NotNull, &col.HasDefault}, func() error {
		sh.columns[table+"."+name] = col
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, `SELECT i.relname::text, c.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
		JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1`, schema)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&name, &table}, func() error { sh.indexes[name] = table; return nil }); err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, `SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1`, schema)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&name}, func() error { sh.funcs[name] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return sh
}

// contractions lists what a migration did to the schema that an older
// release running beside it, or a large table, would not survive.
func contractions(before, after schemaShape, indexBuildAllowed bool) []string {
	var out []string
	for table, node := range before.tables {
		switch now, ok := after.tables[table]; {
		case !ok:
			out = append(out, "drops or renames table "+table)
		case now != node:
			out = append(out, "rewrites or truncates table "+table)
		}
	}
	for name, def := range before.columns {
		now, ok := after.columns[name]
		switch {
		case !ok:
			if _, tableKept := after.tables[strings.SplitN(name, ".", 2)[0]]; tableKept {
				out = append(out, "drops or renames column "+name)
			}
		case now.Type != def.Type:
			out = append(out, fmt.Sprintf("changes the type of %s from %s to %s", name, def.Type, now.Type))
		case now.NotNull && !def.NotNull:
			out = append(out, "makes "+name+" NOT NULL")
		case def.HasDefault && !now.HasDefault:
			out = append(out, "drops the default of "+name)
		}
	}
	for name, def := range after.columns {
		table := strings.SplitN(name, ".", 2)[0]
		if _, existed := before.tables[table]; !existed {
			continue
		}
		if _, ok := before.columns[name]; !ok && def.NotNull && !def.HasDefault {
			out = append(out, "adds "+name+" NOT NULL without a default (an older release's INSERTs fail)")
		}
	}
	for index := range before.indexes {
		if _, ok := after.indexes[index]; !ok {
			out = append(out, "drops or renames index "+index)
		}
	}
	for index, table := range after.indexes {
		if _, existed := before.tables[table]; existed && before.indexes[index] == "" && !indexBuildAllowed {
			out = append(out, "builds index "+index+" on the existing table "+table+" (writes to it wait for the build)")
		}
	}
	for fn := range before.funcs {
		if !after.funcs[fn] {
			out = append(out, "drops or renames function "+fn)
		}
	}
	sort.Strings(out)
	return out
}

// contractingSQL matches what a migration's text must not do unless it is
// a contract step. Comments are stripped first.
var contractingSQL = []struct {
	re   *regexp.Regexp
	what string
}{
	{regexp.MustCompile(`(?i)\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b`), "changes a column's type"},
	{regexp.MustCompile(`(?i)\bDROP\s+(TABLE|COLUMN|INDEX|FUNCTION|CONSTRAINT|DEFAULT|VIEW|SCHEMA|TYPE|TRIGGER|SEQUENCE)\b`), "drops"},
	{regexp.MustCompile(`(?i)\bRENAME\b`), "renames"},
	{regexp.MustCompile(`(?i)\bTRUNCATE\b`), "truncates"},
	{regexp.MustCompile(`(?i)\bSET\s+NOT\s+NULL\b`), "tightens a column to NOT NULL"},
	{regexp.MustCompile(`(?i)\b(DELETE\s+FROM|UPDATE)\b`), "changes existing rows (a backfill: slow on a large table, and an older release writes on without it)"},
}

var sqlComment = regexp.MustCompile(`--[^\n]*`)

// shippedCostly are the migrations that shipped before the rule said what
// is cheap: they build indexes on an existing table and wait for its lock
// unbounded (README "Upgrading" says what they cost). Only the contracting
// rules apply to them.
var shippedCostly = map[int]bool{9: true}

// TestMigrationsAreExpandOnly checks every migration after lastContractless
// that is not a contract step, on the database and in its text: applied to
// the schema the migrations before it made, it rewrites and truncates no
// table, keeps every table, column (with its type, nullability and
// default), index and function, adds no column an older release's INSERTs
// cannot omit, and builds no index on an existing table (but the shipped
// ones in shippedCostly); its text changes no type, drops, renames,
// truncates, tightens or rewrites nothing, and an ALTER of an existing
// table bounds its lock wait. Migration 8, which broke the rule, is caught.
func TestMigrationsAreExpandOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := proxytest.NewPool(t)
	schema := proxytest.NewSchema(t)
	s := New(pool, Options{Schema: schema})
	if err := s.migrateTo(ctx, 7); err != nil {
		t.Fatal(err)
	}
	check := func(v int) []string {
		t.Helper()
		before := shapeOf(t, pool, schema)
		if err := s.migrateTo(ctx, v); err != nil {
			t.Fatalf("migration %d: %v", v, err)
		}
		found := contractions(before, shapeOf(t, pool, schema), shippedCostly[v])
		text := sqlComment.ReplaceAllString(migrations[v-1], "")
		for _, c := range contractingSQL {
			if c.re.MatchString(text) {
				found = append(found, "its text "+c.what+": "+c.re.FindString(text))
			}
		}
		if strings.Contains(strings.ToUpper(text), "ALTER TABLE") && !strings.Contains(text, "lock_timeout") && !shippedCostly[v] {
			found = append(found, "alters a table without bounding its lock wait (SET LOCAL lock_timeout)")
		}
		return found
	}
	if found := check(8); len(found) == 0 {
		t.Error("migration 8 changed column types and truncated a table, yet the check found nothing")
	} else {
		t.Logf("migration 8, which broke the rule: %s", strings.Join(found, "; "))
	}
	for v := lastContractless + 1; v <= SchemaVersion(); v++ {
		found := check(v)
		if _, ok := contracts[v]; ok {
			continue
		}
		for _, f := range found {
			t.Errorf("migration %d is not expand-only: it %s; make it a later release's contract step (contracts)", v, f)
		}
	}
	for v, floor := range contracts {
		if v <= lastContractless || v > SchemaVersion() || floor < 1 || floor > v {
			t.Errorf("contracts[%d] = %d: want a migration after %d and the schema version of a release before it", v, floor, lastContractless)
		}
	}
}

// TestContractedSchemaIsRefused: once a contract step has raised the floor
// past this binary (a newer release dropped what it reads), Ready and
// Migrate fail with ErrSchemaContracted, saying to roll forward, instead
// of the binary serving on a schema it cannot read; below the floor's
// raise, nothing changes.
func TestContractedSchemaIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := proxytest.NewPool(t)
	s := New(pool, Options{Schema: proxytest.NewSchema(t)})
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	raise := func(floor int) {
		t.Helper()
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return s.raiseFloor(ctx, tx, floor) }); err != nil {
			t.Fatal(err)
		}
	}
	raise(SchemaVersion()) // a contract step this binary survives
	raise(3)               // the floor never goes down
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready at the floor: %v", err)
	}
	raise(SchemaVersion() + 1)
	if err := s.Ready(ctx); !errors.Is(err, ErrSchemaContracted) {
		t.Errorf("Ready above the floor: %v, want ErrSchemaContracted", err)
	}
	if err := s.Migrate(ctx); !errors.Is(err, ErrSchemaContracted) {
		t.Errorf("Migrate above the floor: %v, want ErrSchemaContracted", err)
	}
}

// TestQueriesNameTheirColumns: no statement of this package selects or
// returns "*" (count(*) aside): a migration that adds a column would change
// its result's shape, and a connection that prepared it before would fail
// it ("cached plan must not change result type").
func TestQueriesNameTheirColumns(t *testing.T) {
	t.Parallel()
	star := regexp.MustCompile(`(?i)\b(SELECT|RETURNING)\s+(DISTINCT\s+)?([a-z_]+\.)?\*`)
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range star.FindAll(src, -1) {
			t.Errorf("%s: %q: name the columns", f, m)
		}
	}
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
