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

// SourceStates reads what the group's current record holds of each source,
// by source. A group without a record, or whose rows belong to another
// record (evicted, recreated), has none.
func (g *GroupTx) SourceStates(ctx context.Context) (map[string]SourceState, error) {
	out := map[string]SourceState{}
	if g.record.ID == 0 {
		return out, nil
	}
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT source, coalesce(watermark, ''), full_at, read_at FROM {schema}.view_sources
		WHERE client_group_id = $1 AND record_id = $2`), g.GroupID, int64(g.record.ID))
	if err != nil {
		return nil, fmt.Errorf("reading view sources: %w", err)
	}
	var st SourceState
	var full, read *time.Time
	_, err = pgx.ForEachRow(rows, []any{&st.Source, &st.Watermark, &full, &read}, func() error {
		st.FullAt, st.ReadAt = time.Time{}, time.Time{}
		if full != nil {
			st.FullAt = *full
		}
		if read != nil {
			st.ReadAt = *read
		}
		out[st.Source] = st
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading view sources: %w", err)
	}
	return out, nil
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
