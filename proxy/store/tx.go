package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

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
	historyMax     int      // events kept per group (Options.HistoryPerGroup)
	statements     sync.Map // statement → with the schema named (sql)
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
	// TouchInterval: a push, or a pull that writes nothing else of the
	// group's row, notes the group's last use at most this often (a pull
	// that issues a new cookie notes it in the row it writes anyway).
	// Default 1h; keep it well under the idle-group TTL.
	TouchInterval time.Duration
	// RecordCacheBytes bounds the view records kept in memory between pulls
	// (a pull of a group whose record is cached and current reads none of
	// its rows). Default 16 MiB; negative: no cache.
	RecordCacheBytes int64
	// HistoryPerGroup is how many events of each group's history are kept
	// (the newest; see Inspect). 0: none is recorded.
	HistoryPerGroup int
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
		touchInterval: touch, cache: newRecordCache(cacheBytes), historyMax: max(0, o.HistoryPerGroup)}
}

// sql names the schema in q. The statements are a fixed set of constants,
// each rewritten once.
func (s *Store) sql(q string) string {
	if out, ok := s.statements.Load(q); ok {
		return out.(string)
	}
	out := strings.ReplaceAll(q, "{schema}", s.schema)
	s.statements.Store(q, out)
	return out
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
	g.holdHistory() // the settlements' events, with the COMMIT
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

	stagedSources map[string]SourceState // StageSources: written by IssueCookies

	// The counts of routed changes, once read (ChangeCounts).
	changes     ChangeCounts
	changesRead bool

	// touchDue: the group's last use, as locked, was noted over
	// touchInterval ago; a settled mutation or an issued cookie notes it.
	touchDue bool
	// cookieLmids is the hash of the last mutation ids the group's last
	// issued cookie was answered with (nil: not known); lmids is the hash
	// of those LastMutationIDs read in this transaction (lmidsRead).
	cookieLmids *int64
	lmids       uint64
	lmidsRead   bool
	cookies     []Cookie // NoteCookies: the next IssueCookies' requests'

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
	prefetchedKeysSecret     int64
	prefetchedPreviousKeys   int64

	// Whom the view record is held for (HoldRecord), and whether
	// IssueCookies made the group one more of the holder's records.
	holder   string
	heldAnew bool

	// The group's history events not yet sent: settlements (held with the
	// transaction's next statement) and pulls (NotePulls, written by
	// IssueCookies).
	settled []Event
	pulls   []PullNote
}

func (g *GroupTx) lock(ctx context.Context, userID string) error {
	// The group row is locked (FOR UPDATE OF g). The client row is read by
	// a statement of its own, queued after it: under READ COMMITTED it
	// takes its snapshot once the lock is held, so it sees what the
	// previous holder committed (a join in the locking statement would
	// return the row as it was before the wait).
	// touch_due: the group's last use was noted over touchInterval ago, so
	// this transaction notes it (a settled mutation, an issued cookie).
	const q = `SELECT g.user_id, g.cookie_order, g.deleted_at IS NOT NULL, g.clients_pruned_at IS NOT NULL,
			coalesce(g.view_record_id, 0), g.view_version, g.view_min_version, g.view_evicted_at IS NOT NULL,
			coalesce((SELECT value FROM {schema}.settings WHERE name = 'epoch'), ''::bytea),
			g.last_used_at < now() - $2::interval, g.cookie_lmids
		FROM {schema}.client_groups g
		WHERE g.id = $1 FOR UPDATE OF g`
	const qc = `SELECT coalesce(max(c.client_group_id), ''), coalesce(max(c.last_mutation_id), 0), coalesce(max(c.legacy_keys_through), 0),
			coalesce(max(c.keys_secret), 0), coalesce(max(c.previous_keys_through), 0)
		FROM {schema}.clients c WHERE c.id = $1`
	var owner string
	var deleted bool
	scanRow := func(row pgx.Row) error {
		var recordID int64
		err := row.Scan(&owner, &g.cookieOrder, &deleted, &g.clientsPruned,
			&recordID, &g.record.Version, &g.record.MinVersion, &g.record.Evicted, &g.epoch,
			&g.touchDue, &g.cookieLmids)
		g.record.ID = uint64(recordID)
		return err
	}
	scanClient := func(row pgx.Row) error {
		if g.prefetched == "" {
			return nil
		}
		return row.Scan(&g.prefetchedGroup, &g.prefetchedLastMutationID, &g.prefetchedLegacyKeys,
			&g.prefetchedKeysSecret, &g.prefetchedPreviousKeys)
	}
	scan := func() error {
		if err := scanRow(g.tx.QueryRow(ctx, g.s.sql(q), g.GroupID, g.s.touchInterval)); err != nil {
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
	b.Queue(g.s.sql(q), g.GroupID, g.s.touchInterval)
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
