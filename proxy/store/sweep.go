package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

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
// rejections, attempts, server ids and history go, and the group's row stays as a tombstone
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
				s AS (DELETE FROM {schema}.view_sources WHERE client_group_id IN (SELECT id FROM doomed)),
				r AS (DELETE FROM {schema}.mutation_rejections WHERE client_group_id IN (SELECT id FROM doomed)),
				a AS (DELETE FROM {schema}.mutation_attempts WHERE client_group_id IN (SELECT id FROM doomed)),
				i AS (DELETE FROM {schema}.server_ids WHERE client_group_id IN (SELECT id FROM doomed)),
				h AS (DELETE FROM {schema}.group_history WHERE client_group_id IN (SELECT id FROM doomed))
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
		for _, table := range []string{"clients", "view_entries", "view_versions", "view_pages", "view_sources", "mutation_rejections", "mutation_attempts", "server_ids", "group_history"} {
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
