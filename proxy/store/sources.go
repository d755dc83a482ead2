package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SourceState is what a group's view record holds of one view source,
// besides its entries: where the source's next delta read starts, and how
// fresh the record's copy of it is.
type SourceState struct {
	Source string // the source's fingerprint (clientview)
	// Watermark is the greatest value of the source's changes field read
	// so far, as the API wrote it ("": none, or not a delta source). It is
	// the API's own data, never the sidecar's clock.
	Watermark string
	// FullAt is when the source was last read in full, ReadAt when it was
	// last read at all (in full or by its changes). Zero: never.
	FullAt, ReadAt time.Time
}

// SourceMark is when a write, and a DELETE, that some replica routed last
// fell under a view source's path (MarkSources). Zero: none known.
type SourceMark struct{ Write, Delete time.Time }

// SourceStates reads what the group's current record holds of each source,
// by source, and every source's marks (by the source's path, as given to
// MarkSources), in one round trip, which also reads the counts of routed
// changes (ChangeCounts then returns them). A group without a record, or whose
// rows belong to another record (evicted, recreated), has no states.
func (g *GroupTx) SourceStates(ctx context.Context) (map[string]SourceState, map[string]SourceMark, error) {
	out, marks := map[string]SourceState{}, map[string]SourceMark{}
	b := &pgx.Batch{}
	b.Queue(g.s.sql(changeCountsSQL))
	b.Queue(g.s.sql(`SELECT source, write_at, delete_at FROM {schema}.view_marks`))
	if g.record.ID != 0 {
		b.Queue(g.s.sql(`SELECT source, coalesce(watermark, ''), full_at, read_at FROM {schema}.view_sources
			WHERE client_group_id = $1 AND record_id = $2`), g.GroupID, int64(g.record.ID))
	}
	br := g.tx.SendBatch(ctx, b)
	var counts []int64
	err := br.QueryRow().Scan(&counts)
	if err == nil {
		err = g.changes.scan(counts)
	}
	g.changesRead = err == nil
	if err == nil {
		err = readMarks(br, marks)
	}
	if err == nil && g.record.ID != 0 {
		err = readStates(br, out)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading view sources: %w", err)
	}
	return out, marks, nil
}

func readMarks(br pgx.BatchResults, into map[string]SourceMark) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	var source string
	var write, del *time.Time
	_, err = pgx.ForEachRow(rows, []any{&source, &write, &del}, func() error {
		into[source] = SourceMark{Write: orZero(write), Delete: orZero(del)}
		return nil
	})
	return err
}

func readStates(br pgx.BatchResults, into map[string]SourceState) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	var st SourceState
	var full, read *time.Time
	_, err = pgx.ForEachRow(rows, []any{&st.Source, &st.Watermark, &full, &read}, func() error {
		st.FullAt, st.ReadAt = orZero(full), orZero(read)
		into[st.Source] = st
		return nil
	})
	return err
}

func orZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// MarkSources notes that a write the sidecar routed fell under the view
// sources at paths written, and a DELETE under those at deleted, at at
// (the routing replica's clock): every later pull's SourceStates, through
// any replica, returns it. It is its own short statement, not part of the
// write's transaction: a source's row is shared by every client group,
// and must not stay locked while a push goes on.
func (s *Store) MarkSources(ctx context.Context, written, deleted []string, at time.Time) error {
	if len(written) == 0 && len(deleted) == 0 {
		return nil
	}
	paths := append(append(make([]string, 0, len(written)+len(deleted)), written...), deleted...)
	dels := make([]bool, len(paths))
	for i := len(written); i < len(paths); i++ {
		dels[i] = true
	}
	_, err := s.pool.Exec(ctx, s.sql(`INSERT INTO {schema}.view_marks AS m (source, write_at, delete_at)
		SELECT p, max($3::timestamptz), max(CASE WHEN d THEN $3::timestamptz END)
		FROM unnest($1::text[], $2::bool[]) AS u(p, d) GROUP BY p ORDER BY p
		ON CONFLICT (source) DO UPDATE SET write_at = greatest(m.write_at, excluded.write_at),
			delete_at = greatest(m.delete_at, excluded.delete_at)`), paths, dels, at)
	if err != nil {
		return fmt.Errorf("marking view sources: %w", err)
	}
	return nil
}

// StageSources makes the next IssueCookies of this transaction write these
// source states, for the record as it stands after that call's change, in
// the same round trip: a watermark moves only with the committed record.
// Later calls add to (and for the same source replace) what is staged.
func (g *GroupTx) StageSources(states []SourceState) {
	if g.stagedSources == nil {
		g.stagedSources = map[string]SourceState{}
	}
	for _, st := range states {
		g.stagedSources[st.Source] = st
	}
}

// queueSources queues the staged source states for record id.
func (g *GroupTx) queueSources(b *pgx.Batch, id uint64) {
	if len(g.stagedSources) == 0 || id == 0 {
		return
	}
	n := len(g.stagedSources)
	sources, marks := make([]string, 0, n), make([]*string, 0, n)
	fulls, reads := make([]*time.Time, 0, n), make([]*time.Time, 0, n)
	for _, st := range g.stagedSources {
		sources = append(sources, st.Source)
		marks = append(marks, nullString(st.Watermark))
		fulls, reads = append(fulls, nullTime(st.FullAt)), append(reads, nullTime(st.ReadAt))
	}
	b.Queue(g.s.sql(`INSERT INTO {schema}.view_sources (client_group_id, source, record_id, watermark, full_at, read_at)
		SELECT $1, s, $2, w, f, r FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) AS u(s, w, f, r)
		ON CONFLICT (client_group_id, source) DO UPDATE SET record_id = excluded.record_id, watermark = excluded.watermark,
			full_at = excluded.full_at, read_at = excluded.read_at`),
		g.GroupID, int64(id), sources, marks, fulls, reads)
	g.stagedSources = nil
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
