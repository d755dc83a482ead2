package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// deferringTx runs a group transaction's statements on its connection,
// holding back the writes a GroupTx defers (the last mutation id) until
// the next statement or the commit, which take them along in the same
// round trip. Any statement sees the deferred writes (they go first).
type deferringTx struct {
	conn    dbtx
	pending []deferredWrite
}

type deferredWrite struct {
	key  string // what it writes: a later write with the same key replaces it
	sql  string
	args []any
	// check judges the write's result, its command tag or the error
	// Postgres answered (a write may fail on purpose, aborting the
	// transaction), and returns the error to report, if any.
	check func(pgconn.CommandTag, error) error
}

// hold keeps a write back; check judges its result when it runs.
func (d *deferringTx) hold(key, sql string, args []any, check func(pgconn.CommandTag, error) error) {
	for i := range d.pending {
		if d.pending[i].key == key {
			// A later write of the same row supersedes the held one
			// (a client's last mutation id, moving up within a batch).
			d.pending[i] = deferredWrite{key, sql, args, check}
			return
		}
	}
	d.pending = append(d.pending, deferredWrite{key, sql, args, check})
}

// run sends the deferred writes, then tail, in one batch, checks the
// writes' results and returns the batch's, at tail's first; the caller
// closes them.
func (d *deferringTx) run(ctx context.Context, tail ...*pgx.QueuedQuery) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	for _, w := range d.pending {
		b.Queue(w.sql, w.args...)
	}
	b.QueuedQueries = append(b.QueuedQueries, tail...)
	pending := d.pending
	d.pending = nil
	br := d.conn.SendBatch(ctx, b)
	for _, w := range pending {
		tag, err := br.Exec()
		if err = w.check(tag, err); err != nil {
			_ = br.Close()
			return nil, err
		}
	}
	return br, nil
}

func (d *deferringTx) flush(ctx context.Context) error {
	if len(d.pending) == 0 {
		return nil
	}
	br, err := d.run(ctx)
	if err != nil {
		return err
	}
	return br.Close()
}

func (d *deferringTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(d.pending) == 0 {
		return d.conn.Exec(ctx, sql, args...)
	}
	br, err := d.run(ctx, &pgx.QueuedQuery{SQL: sql, Arguments: args})
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (d *deferringTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := d.flush(ctx); err != nil {
		return nil, err
	}
	return d.conn.Query(ctx, sql, args...)
}

func (d *deferringTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := d.flush(ctx); err != nil {
		return errRow{err}
	}
	return d.conn.QueryRow(ctx, sql, args...)
}

func (d *deferringTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := d.flush(ctx); err != nil {
		return errBatch{err: err}
	}
	return d.conn.SendBatch(ctx, b)
}

// commit sends the deferred writes and COMMIT in one round trip.
func (d *deferringTx) commit(ctx context.Context) error {
	br, err := d.run(ctx, &pgx.QueuedQuery{SQL: "COMMIT"})
	if err != nil {
		return err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	if tag.String() != "COMMIT" {
		// Postgres answers COMMIT of a failed transaction with ROLLBACK.
		return fmt.Errorf("committing: the transaction was rolled back (%s)", tag)
	}
	return nil
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// errBatch is a batch that could not be sent: every result is its error.
// (It embeds the interface for the methods nothing here calls.)
type errBatch struct {
	pgx.BatchResults
	err error
}

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow{b.err} }
func (b errBatch) Close() error                     { return b.err }
