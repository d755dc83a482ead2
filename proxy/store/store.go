package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store keeps the Replicache bookkeeping (client groups, clients, last
// mutation ids, cookies, rejected mutations) in its own Postgres schema.
// It is safe for concurrent use, also by several sidecar processes sharing
// one database: all coordination happens in Postgres.
type Store struct {
	pool   *pgxpool.Pool
	schema string // quoted identifier
	// waitTimeout bounds the wait for a pooled connection and the group's
	// lock, whatever the caller's context allows.
	waitTimeout    time.Duration
	recordVersions int64
	touchInterval  time.Duration
	cache          *recordCache
}

// Options configure a Store.
type Options struct {
	// Schema holds the sidecar's tables: a lower-case SQL identifier,
	// validated by the caller. It is created by Migrate.
	Schema string
	// WaitTimeout bounds how long Locked waits for a pooled connection and
	// the group's row lock (Postgres' lock_timeout bounds the latter too).
	// Default 30s.
	WaitTimeout time.Duration
	// RecordVersions is how many versions a client may fall behind its
	// group's view record and still be answered a diff: removed keys are
	// remembered that long. Default 64.
	RecordVersions int
	// TouchInterval: a push notes its group's last use at most this often
	// (pulls always do, in the row they write anyway). Default 1h; keep it
	// well under the idle-group TTL.
	TouchInterval time.Duration
	// RecordCacheBytes bounds the view records kept in memory between pulls
	// (a pull of a group whose record is cached and current reads none of
	// its rows). Default 16 MiB; negative: no cache.
	RecordCacheBytes int64
}

// New returns a Store on pool for o. Call Migrate before anything else.
func New(pool *pgxpool.Pool, o Options) *Store {
	wait := o.WaitTimeout
	if wait <= 0 {
		wait = 30 * time.Second
	}
	versions := int64(o.RecordVersions)
	if versions <= 0 {
		versions = 64
	}
	touch := o.TouchInterval
	if touch <= 0 {
		touch = time.Hour
	}
	cacheBytes := o.RecordCacheBytes
	if cacheBytes == 0 {
		cacheBytes = 16 << 20
	}
	return &Store{pool: pool, schema: pgx.Identifier{o.Schema}.Sanitize(), waitTimeout: wait, recordVersions: versions,
		touchInterval: touch, cache: newRecordCache(cacheBytes)}
}

// migrations are applied in order, forward only; each entry's index+1 is its
// version. Never edit or remove an entry that has shipped: add a new one.
// Never drop data. {schema} is replaced by the quoted schema name.
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
}

// SchemaVersion is the migration version this binary needs.
func SchemaVersion() int { return len(migrations) }

func (s *Store) sql(q string) string { return strings.ReplaceAll(q, "{schema}", s.schema) }

// Migrate creates the schema and applies every pending migration in one
// transaction, under an advisory lock so replicas starting together take
// turns. A database migrated further than this binary knows is accepted
// (migrations are additive), which keeps rolling deploys safe.
func (s *Store) Migrate(ctx context.Context) error {
	return s.migrateTo(ctx, len(migrations))
}

// migrateTo applies the migrations up to version target (tests stop early
// to play an older database), then makes sure the idempotency secret
// exists once its table does.
func (s *Store) migrateTo(ctx context.Context, target int) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
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
		for v := current + 1; v <= target; v++ {
			if _, err := tx.Exec(ctx, s.sql(migrations[v-1])); err != nil {
				return fmt.Errorf("applying migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, s.sql(`INSERT INTO {schema}.schema_migrations (version) VALUES ($1)`), v); err != nil {
				return fmt.Errorf("recording migration %d: %w", v, err)
			}
		}
		if max(current, target) < secretMigration {
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

// Epoch returns the identifier of the database, generated at its first
// migration and kept in the schema, as read with the group's lock: every
// cookie carries it, so a cookie from a database that was recreated is
// recognised as such (read per transaction, so a replica never holds on
// to the epoch of a schema dropped under it).
func (g *GroupTx) Epoch() string { return hex.EncodeToString(g.epoch) }

// Ready checks that the database answers and holds every migration this
// binary needs.
func (s *Store) Ready(ctx context.Context) error {
	var v int
	err := s.pool.QueryRow(ctx, s.sql(`SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations`)).Scan(&v)
	if err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if v < len(migrations) {
		return fmt.Errorf("schema at version %d, need %d", v, len(migrations))
	}
	return nil
}

// Ownership errors. A group belongs to the user who first used it; a client
// belongs to the group it first appeared in.
var (
	ErrGroupForbidden  = errors.New("client group belongs to another user")
	ErrClientForbidden = errors.New("client belongs to another client group")
	ErrGroupDeleted    = errors.New("client group state was deleted")
)

// IsLockTimeout reports whether err is Postgres giving up waiting for a
// lock (lock_timeout, SIDECAR_DB_LOCK_TIMEOUT): the group is busy with
// another push or pull, and the caller may retry.
func IsLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

// commitTimeout bounds a commit that runs after the caller has gone: the
// work it records has already happened upstream and must not be abandoned.
const commitTimeout = 10 * time.Second

// Locked runs fn in a transaction that holds the client group's row lock,
// creating the group (bound to userID) if it is new. Every push step and
// every pull of one group is serialized by this lock, across processes.
//
// ctx bounds the wait for the lock; fn may use a context detached from ctx
// for work that must finish once started. If fn returns nil the transaction
// commits, with a context that ignores ctx's cancellation; otherwise it rolls
// back and Locked returns fn's error.
func (s *Store) Locked(ctx context.Context, groupID, userID string, fn func(g *GroupTx) error) error {
	return s.locked(ctx, groupID, userID, "", fn)
}

// LockedClient is Locked for work on one client: the client's row is read
// together with the lock, saving a round trip for the push of each mutation.
func (s *Store) LockedClient(ctx context.Context, groupID, userID, clientID string, fn func(g *GroupTx) error) error {
	return s.locked(ctx, groupID, userID, clientID, fn)
}

func (s *Store) locked(ctx context.Context, groupID, userID, clientID string, fn func(g *GroupTx) error) error {
	wctx, cancel := context.WithTimeout(ctx, s.waitTimeout)
	defer cancel()
	// The transaction is managed by hand on a pooled connection, so BEGIN
	// and the locking read go to Postgres in one round trip. A connection
	// given back in a transaction (a failed ROLLBACK) is closed by the pool,
	// never reused.
	conn, err := s.pool.Acquire(wctx)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	defer conn.Release()
	done := false
	defer func() {
		if !done {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
			defer cancel()
			_, _ = conn.Exec(rctx, "ROLLBACK")
		}
	}()
	tx := &deferringTx{conn: conn}
	g := &GroupTx{tx: tx, dtx: tx, s: s, GroupID: groupID, prefetched: clientID}
	if err := g.lock(wctx, userID); err != nil {
		return err
	}
	if err := fn(g); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	if err := tx.commit(cctx); err != nil {
		return err
	}
	done = true
	for _, fn := range g.afterCommit {
		fn()
	}
	return nil
}

// dbtx is what a GroupTx runs its statements on: a pooled connection in a
// transaction begun by locked.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// GroupTx is one transaction holding a client group's lock. It is not safe
// for concurrent use and is valid only inside the Locked callback.
type GroupTx struct {
	tx          dbtx
	dtx         *deferringTx // tx, for writes that may wait for the next round trip
	s           *Store
	GroupID     string
	cookieOrder int64
	record      ViewRecord // as locked; IssueCookies updates it
	afterCommit []func()   // run once the transaction has committed
	epoch       []byte     // the database's, read with the lock

	// PrunedClients counts the idle clients this transaction pruned to make
	// room for new ones.
	PrunedClients int
	clientsPruned bool // the group has pruned clients before

	// The client read with the lock (LockedClient): its group ("" when the
	// client is new) and last mutation id.
	prefetched               string
	prefetchedGroup          string
	prefetchedLastMutationID int64
	prefetchedLegacyKeys     int64
}

func (g *GroupTx) lock(ctx context.Context, userID string) error {
	// The group row is locked (FOR UPDATE OF g). The client row is read by
	// a statement of its own, queued after it: under READ COMMITTED it
	// takes its snapshot once the lock is held, so it sees what the
	// previous holder committed (a join in the locking statement would
	// return the row as it was before the wait).
	const q = `SELECT g.user_id, g.cookie_order, g.deleted_at IS NOT NULL, g.clients_pruned_at IS NOT NULL,
			coalesce(g.view_record_id, 0), g.view_version, g.view_min_version,
			coalesce((SELECT value FROM {schema}.settings WHERE name = 'epoch'), ''::bytea)
		FROM {schema}.client_groups g
		WHERE g.id = $1 FOR UPDATE OF g`
	const qc = `SELECT coalesce(max(c.client_group_id), ''), coalesce(max(c.last_mutation_id), 0), coalesce(max(c.legacy_keys_through), 0)
		FROM {schema}.clients c WHERE c.id = $1`
	var owner string
	var deleted bool
	scanRow := func(row pgx.Row) error {
		var recordID int64
		err := row.Scan(&owner, &g.cookieOrder, &deleted, &g.clientsPruned,
			&recordID, &g.record.Version, &g.record.MinVersion, &g.epoch)
		g.record.ID = uint64(recordID)
		return err
	}
	scanClient := func(row pgx.Row) error {
		if g.prefetched == "" {
			return nil
		}
		return row.Scan(&g.prefetchedGroup, &g.prefetchedLastMutationID, &g.prefetchedLegacyKeys)
	}
	scan := func() error {
		if err := scanRow(g.tx.QueryRow(ctx, g.s.sql(q), g.GroupID)); err != nil {
			return err
		}
		if g.prefetched == "" {
			return nil
		}
		return scanClient(g.tx.QueryRow(ctx, g.s.sql(qc), g.prefetched))
	}
	// BEGIN, the locking read and the client's read in one round trip.
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
	b.Queue(g.s.sql(q), g.GroupID)
	if g.prefetched != "" {
		b.Queue(g.s.sql(qc), g.prefetched)
	}
	br := g.tx.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		err = scanRow(br.QueryRow())
	}
	if err == nil && g.prefetched != "" {
		err = scanClient(br.QueryRow())
	}
	if cerr := br.Close(); err == nil || errors.Is(err, pgx.ErrNoRows) && cerr != nil {
		err = cmp.Or(cerr, err)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		// New group: create it, then lock it. A concurrent creator may win
		// the insert; the SELECT then sees its row and its owner.
		if _, err := g.tx.Exec(ctx, g.s.sql(`INSERT INTO {schema}.client_groups (id, user_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`), g.GroupID, userID); err != nil {
			return fmt.Errorf("creating client group: %w", err)
		}
		err = scan()
	}
	switch {
	case err != nil:
		return fmt.Errorf("locking client group: %w", err)
	case owner != userID:
		return ErrGroupForbidden
	case deleted:
		return ErrGroupDeleted
	}
	return nil
}

// CheckClients checks, before a push of several clients applies anything,
// that none of ids belongs to another group (ErrClientForbidden) and that
// the new ones fit under maxPerGroup clients (0: no limit), pruning the
// group's least recently active clients idle for over a day to make room
// (a *TooManyClientsError when that is not enough). It creates nothing:
// a client's row appears when one of its mutations is processed
// (ClaimClient). It returns the last mutation ids of the known clients.
func (g *GroupTx) CheckClients(ctx context.Context, ids []string, maxPerGroup int) (map[string]int64, error) {
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT id, client_group_id, last_mutation_id FROM {schema}.clients WHERE id = ANY($1)`), ids)
	if err != nil {
		return nil, fmt.Errorf("reading clients: %w", err)
	}
	lmids := make(map[string]int64, len(ids))
	var id, group string
	var lmid int64
	_, err = pgx.ForEachRow(rows, []any{&id, &group, &lmid}, func() error {
		if group != g.GroupID {
			return ErrClientForbidden
		}
		lmids[id] = lmid
		return nil
	})
	if err != nil {
		return nil, err
	}
	if fresh := len(ids) - len(lmids); fresh > 0 {
		if err := g.makeRoom(ctx, fresh, maxPerGroup, ""); err != nil {
			return nil, err
		}
	}
	return lmids, nil
}

// TooManyClientsError: a new client would take the group past its limit,
// and none of its clients has been idle long enough to be pruned.
type TooManyClientsError struct{ Limit int }

func (e *TooManyClientsError) Error() string {
	return fmt.Sprintf("the client group already has %d clients, all active within a day", e.Limit)
}

// idleClientAge is how long a client must have been idle before it may be
// pruned to make room: the Replicache client forgets a client after a day.
const idleClientAge = "1 day"

// makeRoom makes room for fresh new clients under maxPerGroup (0: no
// limit), pruning the least recently active clients idle for over a day
// (never except), counted in PrunedClients.
func (g *GroupTx) makeRoom(ctx context.Context, fresh, maxPerGroup int, except string) error {
	if maxPerGroup <= 0 {
		return nil
	}
	var count int
	if err := g.tx.QueryRow(ctx, g.s.sql(`SELECT count(*) FROM {schema}.clients WHERE client_group_id = $1 AND id <> $2`),
		g.GroupID, except).Scan(&count); err != nil {
		return fmt.Errorf("counting clients: %w", err)
	}
	over := count + fresh - maxPerGroup
	if over <= 0 {
		return nil
	}
	tag, err := g.tx.Exec(ctx, g.s.sql(`DELETE FROM {schema}.clients WHERE id IN (
		SELECT id FROM {schema}.clients WHERE client_group_id = $1 AND id <> $2 AND updated_at < now() - interval '`+idleClientAge+`'
		ORDER BY updated_at LIMIT $3)`), g.GroupID, except, over)
	if err != nil {
		return fmt.Errorf("pruning idle clients: %w", err)
	}
	g.PrunedClients += int(tag.RowsAffected())
	if tag.RowsAffected() > 0 {
		if _, err := g.tx.Exec(ctx, g.s.sql(`UPDATE {schema}.client_groups SET clients_pruned_at = now() WHERE id = $1`), g.GroupID); err != nil {
			return fmt.Errorf("noting pruned clients: %w", err)
		}
	}
	if int(tag.RowsAffected()) < over {
		return &TooManyClientsError{Limit: maxPerGroup}
	}
	return nil
}

// LastMutationID returns the client's last processed mutation id, 0 for a
// client the group does not know yet (it is created on the next
// SetLastMutationID), or ErrClientForbidden.
func (g *GroupTx) LastMutationID(ctx context.Context, clientID string) (int64, error) {
	if clientID != "" && clientID == g.prefetched {
		switch g.prefetchedGroup {
		case "":
			return 0, nil
		case g.GroupID:
			return g.prefetchedLastMutationID, nil
		default:
			return 0, ErrClientForbidden
		}
	}
	var group string
	var lmid int64
	err := g.tx.QueryRow(ctx, g.s.sql(`SELECT client_group_id, last_mutation_id FROM {schema}.clients WHERE id = $1`), clientID).Scan(&group, &lmid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("reading client: %w", err)
	case group != g.GroupID:
		return 0, ErrClientForbidden
	}
	return lmid, nil
}

// LegacyKeysThrough returns the last mutation id of clientID that uses the
// old idempotency key "<clientID>:<mutationID>" (0: none). Only clients
// known before the HMAC keys have any.
func (g *GroupTx) LegacyKeysThrough(ctx context.Context, clientID string) (int64, error) {
	if clientID == g.prefetched {
		return g.prefetchedLegacyKeys, nil
	}
	var through int64
	err := g.tx.QueryRow(ctx, g.s.sql(`SELECT coalesce(legacy_keys_through, 0) FROM {schema}.clients WHERE id = $1`), clientID).Scan(&through)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading client: %w", err)
	}
	return through, nil
}

// ErrClientPruned: a client the group pruned (idle for over a day, to stay
// under its client cap) came back. It must start over: its state is gone.
var ErrClientPruned = errors.New("client was pruned from its group")

// WasPruned reports whether clientID, unknown to the group, may be one it
// pruned: the group has pruned clients and has no row for this one. Only
// for a client whose mutation ids do not start at 1.
func (g *GroupTx) WasPruned(ctx context.Context, clientID string) (bool, error) {
	if !g.clientsPruned {
		return false, nil
	}
	if clientID == g.prefetched {
		return g.prefetchedGroup == "", nil
	}
	var exists bool
	if err := g.tx.QueryRow(ctx, g.s.sql(`SELECT EXISTS (SELECT 1 FROM {schema}.clients WHERE id = $1)`), clientID).Scan(&exists); err != nil {
		return false, fmt.Errorf("reading client: %w", err)
	}
	return !exists, nil
}

// ClaimClient binds clientID to this group before anything is done in its
// name, so that of two groups racing for one new client exactly one calls
// the upstream: the other waits on the claim (the clients row is unique)
// and, once the claim commits, gets ErrClientForbidden having done nothing.
// The claim lasts as long as the transaction, so a caller that has called
// the upstream commits it even when the mutation stays pending. A client
// already known to belong here costs nothing.
//
// A new client must fit under maxPerGroup clients (0: no limit): room is
// made as in CheckClients, or the claim fails with *TooManyClientsError.
func (g *GroupTx) ClaimClient(ctx context.Context, clientID string, maxPerGroup int) error {
	if clientID == g.prefetched && g.prefetchedGroup == g.GroupID {
		return nil
	}
	// A concurrent claim of the same new id makes the INSERT wait for that
	// transaction; the owner is then read by a new statement, which sees it.
	tag, err := g.tx.Exec(ctx, g.s.sql(`INSERT INTO {schema}.clients (id, client_group_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`),
		clientID, g.GroupID)
	if err != nil {
		return fmt.Errorf("claiming client: %w", err)
	}
	owner := g.GroupID
	if tag.RowsAffected() == 1 {
		if err := g.makeRoom(ctx, 1, maxPerGroup, clientID); err != nil {
			return err
		}
	}
	if tag.RowsAffected() == 0 {
		if err := g.tx.QueryRow(ctx, g.s.sql(`SELECT client_group_id FROM {schema}.clients WHERE id = $1`), clientID).Scan(&owner); err != nil {
			return fmt.Errorf("reading client: %w", err)
		}
	}
	if owner != g.GroupID {
		return ErrClientForbidden
	}
	if clientID == g.prefetched {
		g.prefetchedGroup = g.GroupID
	}
	return nil
}

// SetLastMutationID records that the client's mutations up to id are
// processed.
//
// The attempts recorded for those mutations are forgotten in the same
// statement (one round trip).
func (g *GroupTx) SetLastMutationID(ctx context.Context, clientID string, id int64) error {
	// The group's last use is noted at most once per touchInterval: a push
	// of many mutations does not rewrite the group's row for each.
	//
	// The write goes with the transaction's next statement or its COMMIT
	// (one round trip fewer per mutation); its failure fails that, and so
	// the transaction.
	if clientID == g.prefetched {
		// The next mutation of this client in the same transaction reads
		// its last mutation id from here.
		g.prefetchedGroup, g.prefetchedLastMutationID = g.GroupID, id
	}
	g.dtx.hold("lmid\x00"+clientID, g.s.sql(`WITH forget AS (
			DELETE FROM {schema}.mutation_attempts WHERE client_id = $1 AND mutation_id <= $3),
		touch AS (
			UPDATE {schema}.client_groups SET last_used_at = now() WHERE id = $2 AND last_used_at < now() - $4::interval)
		INSERT INTO {schema}.clients (id, client_group_id, last_mutation_id) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET last_mutation_id = greatest({schema}.clients.last_mutation_id, excluded.last_mutation_id), updated_at = now()
		WHERE {schema}.clients.client_group_id = excluded.client_group_id`),
		[]any{clientID, g.GroupID, id, g.s.touchInterval},
		func(tag pgconn.CommandTag) error {
			if tag.RowsAffected() == 0 {
				// Another group registered this client since it was read.
				return ErrClientForbidden
			}
			return nil
		})
	return nil
}

// Attempts is what RecordAttempt knows of a pending mutation's answered,
// retryable attempts.
type Attempts struct {
	Count int           // answered retryable attempts so far, this one included
	Span  time.Duration // since the first of them, by the database's clock
}

// RecordAttempt counts one answered, retryable attempt (status: the
// upstream's answer) of the client's pending mutation and returns the count
// so far. It is durable once the transaction commits, and shared by every
// replica; the row goes when the mutation is consumed (SetLastMutationID).
func (g *GroupTx) RecordAttempt(ctx context.Context, clientID string, mutationID int64, status int) (Attempts, error) {
	var a Attempts
	var seconds float64
	err := g.tx.QueryRow(ctx, g.s.sql(`INSERT INTO {schema}.mutation_attempts AS a
			(client_id, mutation_id, client_group_id, attempts, last_status) VALUES ($1, $2, $3, 1, $4)
		ON CONFLICT (client_id, mutation_id) DO UPDATE SET attempts = a.attempts + 1, last_status = excluded.last_status
		RETURNING attempts, extract(epoch FROM now() - first_at)::float8`), clientID, mutationID, g.GroupID, status).Scan(&a.Count, &seconds)
	if err != nil {
		return Attempts{}, fmt.Errorf("recording attempt: %w", err)
	}
	a.Span = time.Duration(seconds * float64(time.Second))
	return a, nil
}

// Rejection is a mutation consumed without effect.
type Rejection struct {
	ClientID   string
	MutationID int64
	Mutator    string
	Status     int // 0: refused by the mapping, not the upstream
	Reason     string
	Body       string
	At         time.Time // when it was recorded (read only)
}

// RecentRejections returns the group's rejection records younger than ttl
// (0: all), oldest first, for the clients to see.
func (g *GroupTx) RecentRejections(ctx context.Context, ttl time.Duration) ([]Rejection, error) {
	if ttl <= 0 {
		ttl = 100 * 365 * 24 * time.Hour
	}
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT client_id, mutation_id, mutator, coalesce(status, 0), reason, created_at
		FROM {schema}.mutation_rejections WHERE client_group_id = $1 AND created_at >= now() - $2::interval
		ORDER BY created_at, client_id, mutation_id`), g.GroupID, ttl)
	if err != nil {
		return nil, fmt.Errorf("reading rejections: %w", err)
	}
	var out []Rejection
	var r Rejection
	_, err = pgx.ForEachRow(rows, []any{&r.ClientID, &r.MutationID, &r.Mutator, &r.Status, &r.Reason, &r.At}, func() error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading rejections: %w", err)
	}
	return out, nil
}

// RecordRejection stores a rejected mutation for operators.
func (g *GroupTx) RecordRejection(ctx context.Context, r Rejection) error {
	var status *int
	if r.Status != 0 {
		status = &r.Status
	}
	_, err := g.tx.Exec(ctx, g.s.sql(`INSERT INTO {schema}.mutation_rejections
		(client_id, mutation_id, client_group_id, mutator, status, reason, body) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (client_id, mutation_id) DO NOTHING`),
		r.ClientID, r.MutationID, g.GroupID, safeText(r.Mutator, 512), status, safeText(r.Reason, 1024), safeText(r.Body, 4096))
	if err != nil {
		return fmt.Errorf("recording rejected mutation: %w", err)
	}
	return nil
}

// safeText makes text from outside (an upstream's answer) storable in a
// Postgres text column: invalid UTF-8 and NUL (which text cannot hold)
// become U+FFFD, and it is cut to at most max bytes on a rune boundary.
// Otherwise one odd answer would fail the transaction on every retry.
func safeText(s string, max int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// TrimRejections keeps the group's rejection records within limits: none
// older than ttl (0: no age limit) and at most max (0: no limit), the
// newest kept. It returns how many it deleted.
func (g *GroupTx) TrimRejections(ctx context.Context, max int, ttl time.Duration) (int64, error) {
	var deleted int64
	if ttl > 0 {
		tag, err := g.tx.Exec(ctx, g.s.sql(`DELETE FROM {schema}.mutation_rejections
			WHERE client_group_id = $1 AND created_at < now() - $2::interval`), g.GroupID, ttl)
		if err != nil {
			return 0, fmt.Errorf("expiring rejections: %w", err)
		}
		deleted += tag.RowsAffected()
	}
	if max > 0 {
		tag, err := g.tx.Exec(ctx, g.s.sql(`DELETE FROM {schema}.mutation_rejections WHERE (client_id, mutation_id) IN (
			SELECT client_id, mutation_id FROM {schema}.mutation_rejections WHERE client_group_id = $1
			ORDER BY created_at DESC, mutation_id DESC OFFSET $2)`), g.GroupID, max)
		if err != nil {
			return 0, fmt.Errorf("capping rejections: %w", err)
		}
		deleted += tag.RowsAffected()
	}
	return deleted, nil
}

// SweepRejections deletes rejection records older than ttl across all
// groups, for groups that record no new ones (pushes trim their own group
// as they end). Like SweepGroups it is cross-group: it runs off the request
// path, in batches of batch rows so it never holds locks for long, and in
// one replica at a time (a session advisory lock; the others skip). It
// returns how many it deleted.
func (s *Store) SweepRejections(ctx context.Context, ttl time.Duration, batch int) (int64, error) {
	var total int64
	err := s.sweeping(ctx, "rejections", func(conn *pgxpool.Conn) error {
		for {
			tag, err := conn.Exec(ctx, s.sql(`DELETE FROM {schema}.mutation_rejections WHERE (client_id, mutation_id) IN (
				SELECT client_id, mutation_id FROM {schema}.mutation_rejections WHERE created_at < now() - $1::interval LIMIT $2)`), ttl, batch)
			if err != nil {
				return err
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < int64(batch) || ctx.Err() != nil {
				return nil
			}
		}
	})
	if err != nil {
		return total, fmt.Errorf("sweeping rejections: %w", err)
	}
	return total, nil
}

// sweeping runs fn on a connection holding the session advisory lock of
// the named sweep, unless another replica holds it (then fn does not run).
func (s *Store) sweeping(ctx context.Context, name string, fn func(conn *pgxpool.Conn) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	var locked bool
	key := "replicache-sidecar sweep " + s.schema
	if name != "rejections" { // the rejection sweep's key predates the others
		key += " " + name
	}
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, key).Scan(&locked); err != nil {
		return err
	}
	if !locked {
		return nil // another replica is sweeping
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext($1))`, key)
	}()
	return fn(conn)
}

// Swept is what one SweepGroups pass did.
type Swept struct {
	Groups     int64 // idle groups deleted (now tombstones)
	Tombstones int64 // expired tombstones removed
}

// SweepGroups deletes the client groups unused (no pull, no processed
// mutation) for ttl: their clients, view record and remembered pages,
// rejections and attempts go, and the group's row stays as a tombstone
// (deleted_at set: its clients get ClientStateNotFound) until it is older
// than tombstoneTTL, when it goes too. Each group is deleted in its own
// short transaction that skips a group busy right now (SKIP LOCKED) or used
// since it was picked; candidates are picked batch at a time. One replica
// sweeps at a time.
func (s *Store) SweepGroups(ctx context.Context, ttl, tombstoneTTL time.Duration, batch int) (Swept, error) {
	var out Swept
	err := s.sweeping(ctx, "groups", func(conn *pgxpool.Conn) error {
		// Keyset paging over (last_used_at, id): a group skipped (busy right
		// now, or used since it was picked) is not picked again this sweep.
		var afterAt time.Time
		afterID := ""
		for {
			rows, err := conn.Query(ctx, s.sql(`SELECT id, last_used_at FROM {schema}.client_groups
				WHERE deleted_at IS NULL AND last_used_at < now() - $1::interval AND (last_used_at, id) > ($3, $4)
				ORDER BY last_used_at, id LIMIT $2`), ttl, batch, afterAt, afterID)
			if err != nil {
				return err
			}
			type candidate struct {
				ID string
				At time.Time
			}
			picked, err := pgx.CollectRows(rows, pgx.RowToStructByPos[candidate])
			if err != nil {
				return err
			}
			for _, c := range picked {
				deleted, err := s.deleteIdleGroup(ctx, conn, c.ID, ttl)
				if err != nil {
					return err
				}
				if deleted {
					out.Groups++
				}
				afterAt, afterID = c.At, c.ID
			}
			if len(picked) < batch || ctx.Err() != nil {
				break
			}
		}
		for {
			// A group marked deleted by other means may still have rows:
			// they go in the same statement (foreign keys are checked at
			// its end).
			tag, err := conn.Exec(ctx, s.sql(`WITH doomed AS (
					SELECT id FROM {schema}.client_groups WHERE deleted_at < now() - $1::interval LIMIT $2),
				c AS (DELETE FROM {schema}.clients WHERE client_group_id IN (SELECT id FROM doomed)),
				e AS (DELETE FROM {schema}.view_entries WHERE client_group_id IN (SELECT id FROM doomed)),
				v AS (DELETE FROM {schema}.view_versions WHERE client_group_id IN (SELECT id FROM doomed)),
				p AS (DELETE FROM {schema}.view_pages WHERE client_group_id IN (SELECT id FROM doomed)),
				r AS (DELETE FROM {schema}.mutation_rejections WHERE client_group_id IN (SELECT id FROM doomed)),
				a AS (DELETE FROM {schema}.mutation_attempts WHERE client_group_id IN (SELECT id FROM doomed))
				DELETE FROM {schema}.client_groups WHERE id IN (SELECT id FROM doomed)`), tombstoneTTL, batch)
			if err != nil {
				return err
			}
			out.Tombstones += tag.RowsAffected()
			if tag.RowsAffected() < int64(batch) || ctx.Err() != nil {
				return nil
			}
		}
	})
	if err != nil {
		return out, fmt.Errorf("sweeping client groups: %w", err)
	}
	return out, nil
}

// deleteIdleGroup deletes one group's state, leaving its tombstone, if it
// is still idle and not locked by a push or pull right now.
func (s *Store) deleteIdleGroup(ctx context.Context, conn *pgxpool.Conn, id string, ttl time.Duration) (bool, error) {
	deleted := false
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var found string
		err := tx.QueryRow(ctx, s.sql(`SELECT id FROM {schema}.client_groups
			WHERE id = $1 AND deleted_at IS NULL AND last_used_at < now() - $2::interval FOR UPDATE SKIP LOCKED`), id, ttl).Scan(&found)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // used since, deleted since, or busy: next time
		}
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		for _, table := range []string{"clients", "view_entries", "view_versions", "view_pages", "mutation_rejections", "mutation_attempts"} {
			b.Queue(s.sql(`DELETE FROM {schema}.`+table+` WHERE client_group_id = $1`), id)
		}
		b.Queue(s.sql(`UPDATE {schema}.client_groups SET deleted_at = now(), view_record_id = NULL, view_version = 0, view_min_version = 0
			WHERE id = $1`), id)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		deleted = true
		return nil
	})
	if deleted && err == nil {
		s.cache.drop(id)
	}
	return deleted, err
}

// LastMutationIDs returns the last mutation id of every client of the group.
func (g *GroupTx) LastMutationIDs(ctx context.Context) (map[string]int64, error) {
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT id, last_mutation_id FROM {schema}.clients WHERE client_group_id = $1`), g.GroupID)
	if err != nil {
		return nil, fmt.Errorf("reading clients: %w", err)
	}
	out := map[string]int64{}
	var id string
	var lmid int64
	_, err = pgx.ForEachRow(rows, []any{&id, &lmid}, func() error { out[id] = lmid; return nil })
	if err != nil {
		return nil, fmt.Errorf("reading clients: %w", err)
	}
	return out, nil
}

// NextCookieOrders issues one cookie order per request order, in the given
// sequence, each as NextCookieOrder would, with one statement: for several
// pulls answered from one fetch. An order of 0 marks a request whose cookie
// cannot grow (ErrCookieExhausted for it alone); nothing is issued for it.
func (g *GroupTx) NextCookieOrders(ctx context.Context, requestOrders []int64) ([]int64, error) {
	return g.IssueCookies(ctx, requestOrders, nil, nil)
}

// CookieOrder returns the order of the last cookie issued to the group
// (by this transaction too, once it has issued one).
func (g *GroupTx) CookieOrder() int64 { return g.cookieOrder }

// IssueCookies is NextCookieOrders that also writes change (nil: none), the
// group's view record after a pull, and pages, its remembered view pages,
// in the same round trip.
func (g *GroupTx) IssueCookies(ctx context.Context, requestOrders []int64, change *ViewChange, pages *PageWrites) ([]int64, error) {
	out := make([]int64, len(requestOrders))
	cur := g.cookieOrder
	for i, r := range requestOrders {
		if max(r, cur) >= maxCookieOrder {
			continue
		}
		cur = max(r, cur) + 1
		out[i] = cur
	}
	changed := change != nil && change.Changed()
	if cur == g.cookieOrder && !changed && pages.empty() {
		return out, nil
	}
	b := &pgx.Batch{}
	if !pages.empty() {
		g.queuePages(b, pages)
	}
	rec := g.record
	if changed {
		g.queueChange(b, change)
		rec = change.Record
	}
	b.Queue(g.s.sql(`UPDATE {schema}.client_groups SET cookie_order = $2, view_record_id = nullif($3::bigint, 0), view_version = $4, view_min_version = $5,
			last_used_at = now()
		WHERE id = $1`), g.GroupID, cur, int64(rec.ID), rec.Version, rec.MinVersion)
	if err := g.tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("issuing cookies: %w", err)
	}
	g.cookieOrder = cur
	g.record = rec
	return out, nil
}

// NextCookieOrder issues the group's next cookie order: strictly greater
// than both the request's and every order issued to the group before (the
// request's may come from a forked group, so it can exceed the group's).
//
// When that would pass JSON's largest safe integer it returns
// ErrCookieExhausted and issues nothing.
func (g *GroupTx) NextCookieOrder(ctx context.Context, requestOrder int64) (int64, error) {
	if max(requestOrder, g.cookieOrder) >= maxCookieOrder {
		return 0, ErrCookieExhausted
	}
	next := max(requestOrder, g.cookieOrder) + 1
	if _, err := g.tx.Exec(ctx, g.s.sql(`UPDATE {schema}.client_groups SET cookie_order = $2 WHERE id = $1`), g.GroupID, next); err != nil {
		return 0, fmt.Errorf("issuing cookie: %w", err)
	}
	g.cookieOrder = next
	return next, nil
}
