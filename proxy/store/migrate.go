package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// migrations are applied in order, forward only; each entry's index+1 is its
// version. Never edit or remove an entry that has shipped: add a new one.
// Never drop data. {schema} is replaced by the quoted schema name.
//
// A new entry is expand-only, so the previous release keeps working on the
// migrated schema while both run (a rolling deploy): it only adds tables,
// columns (nullable, or with a default, so an older release's INSERTs that
// omit them still work), indexes on new tables and functions; it never
// changes a column's type, drops, renames or truncates anything, tightens
// a column to NOT NULL, or makes an old query's result change shape (the
// queries name their columns, never a star, so statements an older release
// prepared before the migration still run after it). It is cheap on a
// large table: no rewrite (a new column's default is a constant), no index
// built on an existing table (that blocks its writes for the build), and a
// statement that needs a table's ACCESS EXCLUSIVE lock waits for it briefly
// (SET LOCAL lock_timeout), since every query of that table queues behind
// the wait; Migrate fails then, and the binary retries it.
//
// Contracting (dropping what no running release reads any more) is a later
// release's step, listed in contracts with the oldest release that may
// still run after it. TestMigrationsAreExpandOnly checks every entry after
// lastContractless against the database and its text. Entry 8 broke the
// rule before it was written: it changed column types, which failed the
// previous release's reads (issue #26); entry 9 builds two indexes on
// client_groups (writes to it wait for the builds).
var migrations = []string{
	// 1: the bookkeeping of the Reset Strategy.
	`CREATE TABLE {schema}.client_groups (
		id           text PRIMARY KEY,
		user_id      text NOT NULL,
		-- the order of the last cookie issued to this group; pulls answer
		-- max(request order, cookie_order) + 1 so cookies only grow.
		cookie_order bigint NOT NULL DEFAULT 0,
		created_at   timestamptz NOT NULL DEFAULT now(),
		-- set when the group's server state is deleted: its clients then get
		-- ClientStateNotFound instead of a fresh, empty state.
		deleted_at   timestamptz
	);
	CREATE TABLE {schema}.clients (
		id               text PRIMARY KEY,
		client_group_id  text NOT NULL REFERENCES {schema}.client_groups (id),
		last_mutation_id bigint NOT NULL DEFAULT 0 CHECK (last_mutation_id >= 0),
		created_at       timestamptz NOT NULL DEFAULT now(),
		updated_at       timestamptz NOT NULL DEFAULT now()
	);
	CREATE INDEX clients_client_group_id_idx ON {schema}.clients (client_group_id);
	-- mutations consumed without effect (business errors), for operators.
	CREATE TABLE {schema}.mutation_rejections (
		client_id       text NOT NULL,
		mutation_id     bigint NOT NULL,
		client_group_id text NOT NULL,
		mutator         text NOT NULL,
		status          int,          -- upstream status; NULL when the mapping refused it
		reason          text NOT NULL,
		body            text NOT NULL DEFAULT '',
		created_at      timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (client_id, mutation_id)
	);`,
	// 2: answered retryable attempts of pending mutations, for the give-up
	// valve. A row lives while its mutation is pending.
	`CREATE TABLE {schema}.mutation_attempts (
		client_id       text NOT NULL,
		mutation_id     bigint NOT NULL,
		client_group_id text NOT NULL,
		attempts        int NOT NULL,
		first_at        timestamptz NOT NULL DEFAULT now(),
		last_status     int NOT NULL,
		PRIMARY KEY (client_id, mutation_id)
	);`,
	// 3: rejections are kept per group within limits (count, age).
	`CREATE INDEX mutation_rejections_group_idx ON {schema}.mutation_rejections (client_group_id, created_at);`,
	// 4: when the group last pruned idle clients: one of them coming back
	// is told to start over instead of meeting a mutation id gap for ever.
	`ALTER TABLE {schema}.client_groups ADD COLUMN clients_pruned_at timestamptz;`,
	// 5: idempotency keys become an HMAC under a secret of the sidecar's
	// (settings). A client known before this migration may have sent its
	// next mutation (and only that one: a push stops at the first mutation
	// not applied) with the old key "<clientID>:<mutationID>"; it keeps the
	// old key up to there, so an upgrade never turns a repeat into a
	// second write.
	`CREATE TABLE {schema}.settings (
		name  text PRIMARY KEY,
		value bytea NOT NULL
	);
	ALTER TABLE {schema}.clients ADD COLUMN legacy_keys_through bigint;
	UPDATE {schema}.clients SET legacy_keys_through = last_mutation_id + 1;`,
	// 6: the client view record of each group (what its clients were last
	// served, key by key: a hash of the value and the record version it last
	// changed at; a NULL hash is a removed key), from which pulls answer
	// diffs. A row changes only when its key's value does.
	`ALTER TABLE {schema}.client_groups
		ADD COLUMN view_record_id bigint,
		ADD COLUMN view_version bigint NOT NULL DEFAULT 0,
		ADD COLUMN view_min_version bigint NOT NULL DEFAULT 0;
	CREATE TABLE {schema}.view_entries (
		client_group_id text NOT NULL,
		key             text NOT NULL,
		hash            bigint,
		version         bigint NOT NULL,
		PRIMARY KEY (client_group_id, key)
	);`,
	// 7: per group, source and page: the validators a view page answered
	// with (ETag, Last-Modified) and what it produced, for conditional GETs.
	// Written only when a page's answer changes.
	`CREATE TABLE {schema}.view_pages (
		client_group_id text NOT NULL,
		source          text NOT NULL,
		page            int NOT NULL,
		url             text NOT NULL,
		etag            text NOT NULL,
		last_modified   text NOT NULL,
		next            text NOT NULL,
		total           int NOT NULL,
		digest          bigint NOT NULL,
		keys            text[] NOT NULL,
		hashes          bigint[] NOT NULL,
		PRIMARY KEY (client_group_id, source, page)
	);`,
	// 8: keys as bytes (an upstream id may hold NUL, which text cannot),
	// and a random tag per record version, kept for the versions a diff may
	// start from: after a restore from a backup the record re-issues
	// version numbers, and only the tag tells the new ones from the lost.
	// Remembered pages are a cache: they are dropped, not converted.
	`ALTER TABLE {schema}.view_entries ALTER COLUMN key TYPE bytea USING convert_to(key, 'UTF8');
	TRUNCATE {schema}.view_pages;
	ALTER TABLE {schema}.view_pages ALTER COLUMN keys TYPE bytea[] USING '{}';
	CREATE TABLE {schema}.view_versions (
		client_group_id text NOT NULL,
		version         bigint NOT NULL,
		tag             bigint NOT NULL,
		PRIMARY KEY (client_group_id, version)
	);`,
	// 9: client-group lifecycle: when a group was last used (a pull, or a
	// push that processed a mutation), for the sweep of idle groups, and the
	// indexes that sweep and the expiry of tombstones (deleted groups) use.
	`ALTER TABLE {schema}.client_groups ADD COLUMN last_used_at timestamptz NOT NULL DEFAULT now();
	CREATE INDEX client_groups_idle_idx ON {schema}.client_groups (last_used_at) WHERE deleted_at IS NULL;
	CREATE INDEX client_groups_deleted_idx ON {schema}.client_groups (deleted_at) WHERE deleted_at IS NOT NULL;`,
	// 10: Settle. An answered attempt may not count toward giving up (the
	// failure was not the mutation's own); it is still recorded for
	// operators: uncounted counts those, last_at is the last attempt of
	// either kind (NULL in rows written by an older binary, or by
	// RecordAttempt), and counted_since
	// is the first counted attempt when the row began with uncounted ones
	// (NULL otherwise: first_at is then the first counted attempt, as an
	// older binary writes it). client_forbidden aborts a settling statement
	// that finds its client registered by another group, so the whole
	// transaction rolls back. Expand-only: new columns, no rewrite; the
	// ALTER's lock is waited for at most 3s.
	`SET LOCAL lock_timeout = '3s';
	ALTER TABLE {schema}.mutation_attempts
		ADD COLUMN uncounted     int NOT NULL DEFAULT 0,
		ADD COLUMN counted_since timestamptz,
		ADD COLUMN last_at       timestamptz;
	SET LOCAL lock_timeout TO DEFAULT;
	CREATE FUNCTION {schema}.client_forbidden() RETURNS int LANGUAGE plpgsql VOLATILE AS $fn$
	BEGIN
		RAISE EXCEPTION 'client belongs to another client group' USING ERRCODE = '` + clientForbiddenCode + `';
	END
	$fn$;`,
	// 11: per group and view source, what the group's record holds of it:
	// the greatest value of the source's changes field read (where its next
	// delta read starts), and when it was last read in full and read at all
	// (its freshness). A row belongs to the record record_id names; another
	// record's rows are stale and ignored. Expand-only: a new table.
	`CREATE TABLE {schema}.view_sources (
		client_group_id text NOT NULL,
		source          text NOT NULL,
		record_id       bigint NOT NULL,
		watermark       text,
		full_at         timestamptz,
		read_at         timestamptz,
		PRIMARY KEY (client_group_id, source)
	);`,
	// 12: view records are capped per holder (the user; the address in
	// single-tenant mode): view_record_holders lists, per holder, the
	// groups whose record it caused and when it last used each, keyed by
	// the holder so a distributed table would route it. Evicting a record
	// deletes its rows (entries, version tags, remembered pages) and notes
	// view_evicted_at; the group keeps its record id, version numbers and
	// everything else, so a cookie of it is answered with a reset, not
	// taken for a restore. Expand-only: a new table, a new nullable
	// column (no rewrite); the ALTER's lock is waited for at most 3s.
	`SET LOCAL lock_timeout = '3s';
	ALTER TABLE {schema}.client_groups ADD COLUMN view_evicted_at timestamptz;
	SET LOCAL lock_timeout TO DEFAULT;
	CREATE TABLE {schema}.view_record_holders (
		holder          text NOT NULL,
		client_group_id text NOT NULL,
		used_at         timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (holder, client_group_id)
	);
	CREATE INDEX view_record_holders_lru_idx ON {schema}.view_record_holders (holder, used_at);`,
	// 13: rotating the idempotency secret (SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS).
	// keys_secret is a fingerprint of the secret the replica that last
	// consumed one of the client's mutations keyed new mutations with;
	// previous_keys_through the client's last mutation id that may have
	// been sent keyed with the previous secret (a batch whose commit was
	// lost), so its retry keeps that key. Expand-only: new nullable
	// columns (no rewrite); the ALTER's lock is waited for at most 3s.
	`SET LOCAL lock_timeout = '3s';
	ALTER TABLE {schema}.clients
		ADD COLUMN keys_secret           bigint,
		ADD COLUMN previous_keys_through bigint;
	SET LOCAL lock_timeout TO DEFAULT;`,
	// 14: ids the API chooses (a mutator's serverID): per group, the id
	// the API chose for what a client created under a temporary id, as
	// the JSON text of the answer's value (17, "a1"), and the mutation
	// that recorded it. Bytes, as a temporary id may hold what text cannot.
	// Keyed by the group first; swept with it. Expand-only: a new table.
	`CREATE TABLE {schema}.server_ids (
		client_group_id text NOT NULL,
		temp_id         bytea NOT NULL,
		server_id       bytea NOT NULL,
		client_id       text NOT NULL,
		mutation_id     bigint NOT NULL,
		created_at      timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (client_group_id, temp_id)
	);`,
	// 15: each client group's recent history, for operators (Inspect,
	// `replicache-sidecar inspect`): what its mutations came to (the API's
	// status; rejections, give-ups, pending answers) and the pulls that
	// changed what its clients hold (the cookie issued, reset or diff, the
	// entries put and deleted). Written with the push's or pull's own
	// statements, and trimmed to the newest Options.HistoryPerGroup in the
	// statement that adds to it; keyed by the group like everything else.
	// Expand-only: a new table.
	`CREATE TABLE {schema}.group_history (
		client_group_id text NOT NULL,
		id              bigint GENERATED ALWAYS AS IDENTITY,
		at              timestamptz NOT NULL,
		kind            text NOT NULL,
		outcome         text NOT NULL,
		client_id       text,
		mutation_id     bigint,
		mutator         text,
		status          int,
		reason          text,
		counted         boolean,
		cookie_order    bigint,
		record_version  bigint,
		since_version   bigint,
		puts            int,
		dels            int,
		PRIMARY KEY (client_group_id, id)
	);`,
	// 16: when a write, and a DELETE, that the sidecar routed last fell
	// under each view source (by the source's path): kept in the database
	// so that a pull through any replica sees every mark committed before
	// its transaction began, whatever the replicas' notifications have
	// delivered by then. One row per source path, not per group: written
	// only for a DELETE under a source, or a write under a maxAge or shared
	// one. Expand-only: a new table.
	`CREATE TABLE {schema}.view_marks (
		source    text PRIMARY KEY,
		write_at  timestamptz,
		delete_at timestamptz
	);`,
	// 17: a count of the changes the sidecar routed to the API (pushes'
	// settled mutations, pass-through writes that poke, the invalidate
	// hook), moved after the API answered and before anyone is poked: a
	// pull compares it with that of the fetch it would ride on, whatever
	// the replicas' notifications have delivered (NoteChange,
	// ChangeCount). A sequence: its nextval is not transactional and
	// locks no row, so pushes of different groups never wait for each
	// other on it. CACHE 1 (the default, said so): every nextval moves
	// the value every session reads. Expand-only: a new sequence.
	`CREATE SEQUENCE {schema}.routed_changes AS bigint CACHE 1;`,
	// 18: a hash of the last mutation ids the group's last issued cookie
	// was answered with, so a pull holding that cookie, with nothing
	// changed since, keeps it and writes nothing (IssueCookies). NULL
	// (an older release's cookie): not known, a new cookie is issued.
	// Expand-only: a new nullable column (no rewrite); the ALTER's lock is
	// waited for at most 3s.
	`SET LOCAL lock_timeout = '3s';
	ALTER TABLE {schema}.client_groups ADD COLUMN cookie_lmids bigint;
	SET LOCAL lock_timeout TO DEFAULT;`,
	// 19: a count of routed changes per poke scope: a write that pokes
	// only its user's streams (SIDECAR_POKE_SCOPE=user) moves that user's
	// count, one of 16 sequences chosen by a hash of the user id
	// (changeBucket), and no longer everyone's (routed_changes, 17), so
	// another user's write no longer keeps a pull from riding on a running
	// fetch. A pull reads everyone's count plus its user's (ChangeCounts).
	// A build that knows only 17 (never released) reads only everyone's
	// count: during a rollout from it, its riders do not see the writes a
	// newer replica counts per user (the release before 17 had no count at
	// all). Expand-only: new sequences, CACHE 1 as 17's.
	`CREATE SEQUENCE {schema}.routed_changes_0 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_1 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_2 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_3 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_4 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_5 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_6 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_7 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_8 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_9 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_10 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_11 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_12 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_13 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_14 AS bigint CACHE 1;
	CREATE SEQUENCE {schema}.routed_changes_15 AS bigint CACHE 1;`,
}

// lastContractless is the last migration that may break the expand-only
// rule without being a contract step: the rule came after it.
const lastContractless = 8

// contracts are the migrations after lastContractless that contract the
// schema: drop, rename or change the type of something an older release
// reads. Each maps to the oldest schema version (the SchemaVersion of the
// oldest release) that may still run once it is applied: the release that
// stopped reading what it drops, shipped at least one release before it.
// Migrate raises the database's floor (settings 'oldest_reader') to it, and
// Ready of a binary below the floor fails, saying so, instead of the binary
// serving wrong answers. TestMigrationsAreExpandOnly rejects a contracting
// migration that is not listed here.
var contracts = map[int]int{}

// clientForbiddenCode is the SQLSTATE {schema}.client_forbidden() raises
// (class SC: the sidecar's own, outside the classes Postgres uses).
const clientForbiddenCode = "SC403"

// SchemaVersion is the migration version this binary needs.
func SchemaVersion() int { return len(migrations) }

// Migrate creates the schema and applies every pending migration, each in
// a transaction of its own (a lock one takes is released before the next
// waits for another), under an advisory lock so replicas starting together
// take turns. A database migrated further than this binary knows is
// accepted (new migrations are expand-only, see migrations), which keeps
// rolling deploys safe. A failed migration leaves the ones before it
// applied; Migrate, retried, goes on from there.
func (s *Store) Migrate(ctx context.Context) error {
	if err := s.migrateTo(ctx, len(migrations)); err != nil {
		return err
	}
	return s.checkFloor(ctx)
}

// migrateTo applies the migrations up to version target (tests stop early
// to play an older database), and makes sure the idempotency secret and
// the epoch exist once their table does.
func (s *Store) migrateTo(ctx context.Context, target int) error {
	for {
		done, err := s.migrateStep(ctx, target)
		if err != nil || done {
			return err
		}
	}
}

// migrateStep applies the next pending migration up to target, if any, in
// one transaction; done: there was none.
func (s *Store) migrateStep(ctx context.Context, target int) (done bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('replicache-sidecar migrate ' || $1))`, s.schema); err != nil {
			return fmt.Errorf("taking migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, s.sql(`CREATE SCHEMA IF NOT EXISTS {schema};
			CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
				version    int PRIMARY KEY,
				applied_at timestamptz NOT NULL DEFAULT now())`)); err != nil {
			return fmt.Errorf("creating schema: %w", err)
		}
		var current int
		if err := tx.QueryRow(ctx, s.sql(`SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations`)).Scan(&current); err != nil {
			return fmt.Errorf("reading schema version: %w", err)
		}
		if v := current + 1; v <= target {
			if _, err := tx.Exec(ctx, s.sql(migrations[v-1])); err != nil {
				return fmt.Errorf("applying migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, s.sql(`INSERT INTO {schema}.schema_migrations (version) VALUES ($1)`), v); err != nil {
				return fmt.Errorf("recording migration %d: %w", v, err)
			}
			if floor, ok := contracts[v]; ok {
				if err := s.raiseFloor(ctx, tx, floor); err != nil {
					return fmt.Errorf("recording migration %d: %w", v, err)
				}
			}
			current = v
		} else {
			done = true
		}
		if current < secretMigration {
			return nil
		}
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return fmt.Errorf("generating the idempotency secret: %w", err)
		}
		if _, err := tx.Exec(ctx, s.sql(`INSERT INTO {schema}.settings (name, value) VALUES ('idempotency_secret', $1)
			ON CONFLICT (name) DO NOTHING`), secret); err != nil {
			return fmt.Errorf("storing the idempotency secret: %w", err)
		}
		epoch := make([]byte, 8)
		if _, err := rand.Read(epoch); err != nil {
			return fmt.Errorf("generating the database epoch: %w", err)
		}
		if _, err := tx.Exec(ctx, s.sql(`INSERT INTO {schema}.settings (name, value) VALUES ('epoch', $1)
			ON CONFLICT (name) DO NOTHING`), epoch); err != nil {
			return fmt.Errorf("storing the database epoch: %w", err)
		}
		return nil
	})
	return done, err
}

// secretMigration is the version that creates the settings table.
const secretMigration = 5

// IdempotencySecret returns the secret the sidecar generated at its first
// migration and keeps in its schema, shared by every replica.
func (s *Store) IdempotencySecret(ctx context.Context) ([]byte, error) {
	var secret []byte
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT value FROM {schema}.settings WHERE name = 'idempotency_secret'`)).Scan(&secret); err != nil {
		return nil, fmt.Errorf("reading the idempotency secret: %w", err)
	}
	return secret, nil
}

// raiseFloor raises the oldest schema version a binary may have to run on
// this database (a contract step dropped what older ones read).
func (s *Store) raiseFloor(ctx context.Context, tx pgx.Tx, floor int) error {
	_, err := tx.Exec(ctx, s.sql(`INSERT INTO {schema}.settings (name, value) VALUES ('oldest_reader', convert_to(($1::int)::text, 'UTF8'))
		ON CONFLICT (name) DO UPDATE SET value = convert_to(greatest(convert_from({schema}.settings.value, 'UTF8')::int, $1::int)::text, 'UTF8')`), floor)
	return err
}

// ErrSchemaContracted: the database was migrated by a newer release past a
// contract step that dropped what this binary reads. It must not serve on
// it: roll forward.
var ErrSchemaContracted = errors.New("the schema was contracted past this binary by a newer release")

// Ready checks that the database answers, holds every migration this
// binary needs, and has not been contracted past it (ErrSchemaContracted).
// A database migrated further by a newer release is accepted otherwise:
// its migrations are expand-only.
func (s *Store) Ready(ctx context.Context) error {
	var v int
	err := s.pool.QueryRow(ctx, s.sql(`SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations`)).Scan(&v)
	if err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if v < len(migrations) {
		return fmt.Errorf("schema at version %d, need %d", v, len(migrations))
	}
	return s.checkFloor(ctx)
}

// checkFloor fails with ErrSchemaContracted when a contract step has raised
// the database's floor past this binary.
func (s *Store) checkFloor(ctx context.Context) error {
	var floor int
	err := s.pool.QueryRow(ctx, s.sql(`SELECT coalesce(max(convert_from(value, 'UTF8')::int), 0) FROM {schema}.settings WHERE name = 'oldest_reader'`)).Scan(&floor)
	if err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if floor > len(migrations) {
		return fmt.Errorf("%w: it needs a binary of schema version %d or later, this one is %d; roll forward", ErrSchemaContracted, floor, len(migrations))
	}
	return nil
}
