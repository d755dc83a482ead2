package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// View records are capped per holder: whoever causes them, keyed as the
// caller decides (proxy: identity.Caller.Key, the user, else the address).
// Fresh client group ids cost nothing to invent, and each one's first pull
// writes a whole record; a holder keeps records for at most a number of
// groups, the least recently used going first.
//
// Who holds which record is kept in view_record_holders, keyed by the
// holder: counting a holder's records and picking the least recently used
// is a query on the holder's own rows, which a table distributed by holder
// would route to one node. No query on the pull path aggregates across
// groups by anything else. Eviction itself touches each victim group by its
// id, in a transaction of its own that holds that group's lock only.

// HoldRecord says for whom the group's view record is kept: IssueCookies
// then notes the holder's use of it (at most once per holderTouch), and
// HeldAnew reports whether the group became one more of the holder's
// records. The caller then runs EvictRecords, after the commit.
func (g *GroupTx) HoldRecord(holder string) { g.holder = holder }

// HeldAnew reports whether IssueCookies made the group one more of its
// holder's records (the group's first record, one written again after an
// eviction, or one the holder had not been noted for).
func (g *GroupTx) HeldAnew() bool { return g.heldAnew }

// holderTouch: a holder's use of a record is noted at most this often, so
// a pull rewrites no row for it; least recently used is that coarse.
const holderTouch = "1 minute"

// queueHolder queues the statements that note the holder's use of the
// group's record; the first one's count says whether it is new.
func (g *GroupTx) queueHolder(b *pgx.Batch) {
	b.Queue(g.s.sql(`INSERT INTO {schema}.view_record_holders (holder, client_group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`),
		g.holder, g.GroupID)
	b.Queue(g.s.sql(`UPDATE {schema}.view_record_holders SET used_at = now()
		WHERE holder = $1 AND client_group_id = $2 AND used_at < now() - interval '`+holderTouch+`'`), g.holder, g.GroupID)
}

// Evicted is what an eviction did.
type Evicted struct {
	Records int64 // groups whose record was evicted
	Bytes   int64 // their logical size (keys, hashes and versions), as ViewChange.Bytes counts it
}

func (e *Evicted) add(o Evicted) { e.Records += o.Records; e.Bytes += o.Bytes }

// evictBatch is how many of a holder's groups EvictRecords reads at once.
const evictBatch = 100

// EvictRecords keeps the records noted for holder within max groups (0 or
// less: no limit): the records of the groups it used least recently
// beyond the newest max are evicted. Evicting a record deletes its rows
// (entries, version tags, remembered pages) and marks the group (Evicted);
// the group keeps its clients, last mutation ids, cookie order, owner and
// record id, and its next pull answers a reset, whatever cookie it
// carries, and writes its record again (one more of its holder's). Each
// group is evicted in a short transaction of its own holding its lock; a
// group busy right now (a pull or push holds its lock) is skipped, and the
// holder stays over max by it until the next eviction or sweep. A group
// deleted since is only forgotten. Safe for concurrent use, also from
// several replicas: two evictions of one holder never evict more than
// needed (the second skips what the first holds, or sees it gone).
func (s *Store) EvictRecords(ctx context.Context, holder string, max int) (Evicted, error) {
	var out Evicted
	if max <= 0 {
		return out, nil
	}
	skip := max
	for {
		rows, err := s.pool.Query(ctx, s.sql(`SELECT client_group_id FROM {schema}.view_record_holders
			WHERE holder = $1 ORDER BY used_at DESC, client_group_id DESC OFFSET $2 LIMIT $3`), holder, skip, evictBatch)
		if err != nil {
			return out, fmt.Errorf("evicting view records: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return out, fmt.Errorf("evicting view records: %w", err)
		}
		for _, id := range ids {
			e, busy, err := s.evictRecord(ctx, holder, id)
			if err != nil {
				return out, fmt.Errorf("evicting the view record of a client group: %w", err)
			}
			out.add(e)
			if busy {
				skip++ // it stays; the next page starts after it
			}
		}
		if len(ids) < evictBatch || ctx.Err() != nil {
			return out, nil
		}
	}
}

// evictRecord evicts one group's record and forgets that holder held it.
func (s *Store) evictRecord(ctx context.Context, holder, id string) (out Evicted, busy bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var deleted bool
		var record int64
		err := tx.QueryRow(ctx, s.sql(`SELECT deleted_at IS NOT NULL, coalesce(view_record_id, 0) FROM {schema}.client_groups
			WHERE id = $1 FOR UPDATE SKIP LOCKED`), id).Scan(&deleted, &record)
		if errors.Is(err, pgx.ErrNoRows) {
			var exists bool
			if err := tx.QueryRow(ctx, s.sql(`SELECT EXISTS (SELECT 1 FROM {schema}.client_groups WHERE id = $1)`), id).Scan(&exists); err != nil {
				return err
			}
			if exists {
				busy = true // a pull or push holds it: next time
				return nil
			}
			deleted = true // gone with its tombstone
		} else if err != nil {
			return err
		}
		b := &pgx.Batch{}
		b.Queue(s.sql(`DELETE FROM {schema}.view_record_holders WHERE holder = $1 AND client_group_id = $2`), holder, id)
		if !deleted && record != 0 {
			b.Queue(s.sql(`WITH e AS (DELETE FROM {schema}.view_entries WHERE client_group_id = $1 RETURNING octet_length(key) AS n)
				SELECT count(*), coalesce(sum(n), 0)::bigint FROM e`), id)
			b.Queue(s.sql(`DELETE FROM {schema}.view_versions WHERE client_group_id = $1`), id)
			b.Queue(s.sql(`DELETE FROM {schema}.view_pages WHERE client_group_id = $1`), id)
			// What the record held of each source goes with it: the next
			// read of every source is a full one.
			b.Queue(s.sql(`DELETE FROM {schema}.view_sources WHERE client_group_id = $1`), id)
			b.Queue(s.sql(`UPDATE {schema}.client_groups SET view_evicted_at = now() WHERE id = $1`), id)
		}
		br := tx.SendBatch(ctx, b)
		_, err = br.Exec()
		if err == nil && !deleted && record != 0 {
			var rows, keyBytes int64
			err = br.QueryRow().Scan(&rows, &keyBytes)
			var tag pgconn.CommandTag
			if err == nil {
				tag, err = br.Exec()
			}
			if err == nil && (rows > 0 || tag.RowsAffected() > 0) {
				out = Evicted{Records: 1, Bytes: keyBytes + rows*recordRowBytes}
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		return Evicted{}, false, err
	}
	if out.Records > 0 {
		s.cache.drop(id)
	}
	return out, busy, nil
}

// SweepRecords enforces the cap across every holder, off the request path
// and one replica at a time: it evicts the records of holders over max (a
// failed or skipped eviction on the pull path, groups noted since an
// upgrade) and forgets the holders' notes of groups deleted since, batch
// at a time. Groups that held a record before view_record_holders existed
// count from their next pull.
func (s *Store) SweepRecords(ctx context.Context, max, batch int) (Evicted, error) {
	var out Evicted
	if max <= 0 {
		return out, nil
	}
	err := s.sweeping(ctx, "records", func(conn *pgxpool.Conn) error {
		for {
			tag, err := conn.Exec(ctx, s.sql(`DELETE FROM {schema}.view_record_holders WHERE (holder, client_group_id) IN (
				SELECT h.holder, h.client_group_id FROM {schema}.view_record_holders h
				WHERE NOT EXISTS (SELECT 1 FROM {schema}.client_groups g WHERE g.id = h.client_group_id AND g.deleted_at IS NULL)
				LIMIT $1)`), batch)
			if err != nil {
				return err
			}
			if tag.RowsAffected() < int64(batch) || ctx.Err() != nil {
				break
			}
		}
		after := ""
		for {
			rows, err := conn.Query(ctx, s.sql(`SELECT holder FROM {schema}.view_record_holders WHERE holder > $1
				GROUP BY holder HAVING count(*) > $2 ORDER BY holder LIMIT $3`), after, max, batch)
			if err != nil {
				return err
			}
			holders, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			for _, h := range holders {
				e, err := s.EvictRecords(ctx, h, max)
				out.add(e)
				if err != nil {
					return err
				}
				after = h
			}
			if len(holders) < batch || ctx.Err() != nil {
				return nil
			}
		}
	})
	if err != nil {
		return out, fmt.Errorf("sweeping view records: %w", err)
	}
	return out, nil
}

// RecordStorageBytes returns what the view records of every group take on
// disk, as Postgres counts it: the tables of entries, version tags,
// remembered pages and holders, with their indexes and TOAST (dead rows
// not yet vacuumed included). It reads the catalog, no table.
func (s *Store) RecordStorageBytes(ctx context.Context) (int64, error) {
	var n int64
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0)::bigint FROM unnest($1::text[]) AS t`,
		[]string{s.sql("{schema}.view_entries"), s.sql("{schema}.view_versions"), s.sql("{schema}.view_pages"), s.sql("{schema}.view_record_holders")}).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("reading the view records' size: %w", err)
	}
	return n, nil
}
