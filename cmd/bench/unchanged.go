package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// unchangedPulls: what Postgres writes (WAL) for a pull that changed
// nothing: the client's cookie is its group's current one, and neither the
// view (1,000 entities) nor a last mutation id moved since. The goal is 0 B;
// next to it, what a transaction that only locks one row writes (BEGIN,
// SELECT … FOR UPDATE, COMMIT), measured the same way in the same run. The
// WAL is read as Postgres' insert position before and after each pull;
// the median over the pulls leaves out what a background writer (a
// checkpoint, autovacuum) adds now and then.
func (b *bench) unchangedPulls(ctx context.Context) error {
	s, err := b.sidecar()
	if err != nil {
		return err
	}
	defer s.stop()
	const user, group = "idler", "idle"
	b.api.add(user, 1000, false)
	if status, raw, err := b.post(s.url+"/replicache/push", user, pushBody(group, group+"-c", 1, 1), false); err != nil || status != http.StatusOK {
		return fmt.Errorf("push: %d %.300s %w", status, raw, err)
	}
	var cookie json.RawMessage
	pull := func() (kept bool, err error) {
		status, raw, err := b.post(s.url+"/replicache/pull", user, pullBody(group, cookie), false)
		if err != nil {
			return false, err
		}
		next, puts, dels, err := pulled(status, raw)
		if err != nil {
			return false, err
		}
		kept = bytes.Equal(next, cookie)
		if cookie != nil && (puts > 0 || dels > 0) {
			return false, fmt.Errorf("a pull of an unchanged view put %d, deleted %d", puts, dels)
		}
		cookie = next
		return kept, nil
	}
	for range 3 { // a reset, then the cookie of an unchanged view
		if _, err := pull(); err != nil {
			return err
		}
	}
	// What the pulls so far wrote is settled, so autovacuum does not visit
	// it during the measurement.
	for _, table := range []string{"client_groups", "clients", "view_entries", "view_versions", "view_pages", "view_record_holders"} {
		if _, err := b.pg.Exec(ctx, "VACUUM (ANALYZE) "+pgx.Identifier{b.schema, table}.Sanitize()); err != nil {
			return err
		}
	}
	insertLSN := func() (lsn string, err error) {
		err = b.pg.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn)
		return lsn, err
	}
	walSince := func(lsn string) (n int64, err error) {
		err = b.pg.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint`, lsn).Scan(&n)
		return n, err
	}
	n := b.iterations(200)
	var wal, lock []int64
	var took []time.Duration
	kept := 0
	for range n {
		lsn, err := insertLSN()
		if err != nil {
			return err
		}
		t0 := time.Now()
		k, err := pull()
		if err != nil {
			return err
		}
		took = append(took, time.Since(t0))
		w, err := walSince(lsn)
		if err != nil {
			return err
		}
		wal = append(wal, w)
		if k {
			kept++
		}
		// The limit: a transaction that locks one row and writes nothing.
		if lsn, err = insertLSN(); err != nil {
			return err
		}
		if err := lockOnly(ctx, b, 0); err != nil {
			return err
		}
		if w, err = walSince(lsn); err != nil {
			return err
		}
		lock = append(lock, w)
	}
	med, mean := medianInt(wal), meanInt(wal)
	b.add(row{
		figure:  "WAL written by a pull that changed nothing (1,000 entities)",
		sidecar: fmt.Sprintf("%d B (mean %.0f B; %s; cookie kept in %d of %d pulls)", med, mean, ms(median(took)), kept, n),
		limit:   fmt.Sprintf("0 B; a transaction that only locks one row: %d B", medianInt(lock)),
		target:  "0 B",
		met:     yes(med == 0),
	})
	return nil
}

// lockOnly locks row of the limit's table in a transaction that writes
// nothing, as a pull holds its group's lock.
func lockOnly(ctx context.Context, b *bench, row int) error {
	tx, err := b.pg.Begin(ctx)
	if err != nil {
		return err
	}
	var n int64
	if err := tx.QueryRow(ctx, `SELECT n FROM bench_limit WHERE id = $1 FOR UPDATE`, row).Scan(&n); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

func medianInt(xs []int64) int64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func meanInt(xs []int64) float64 {
	var sum int64
	for _, x := range xs {
		sum += x
	}
	return float64(sum) / float64(len(xs))
}
