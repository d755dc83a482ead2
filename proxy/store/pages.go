package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ViewPage is what one page of a view source answered when last fetched in
// full, for a conditional GET next time: its validators and what it
// produced (keys and value hashes, in order).
type ViewPage struct {
	Source       string // the source's fingerprint
	Page         int
	URL          string
	ETag         string
	LastModified string
	Next         string
	Total        int
	Digest       uint64 // of what it produced, to tell a changed answer
	Keys         []string
	Hashes       []uint64
}

// PageKey names a page of a source.
type PageKey struct {
	Source string
	Page   int
}

// ViewPages returns the group's remembered view pages; with entries their
// keys and hashes too (without, only what tells whether a page changed).
func (g *GroupTx) ViewPages(ctx context.Context, entries bool) ([]ViewPage, error) {
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT source, page, url, etag, last_modified, next, total, digest,
			CASE WHEN $2 THEN keys END, CASE WHEN $2 THEN hashes END
		FROM {schema}.view_pages WHERE client_group_id = $1`), g.GroupID, entries)
	if err != nil {
		return nil, fmt.Errorf("reading view pages: %w", err)
	}
	var out []ViewPage
	var p ViewPage
	var digest int64
	var hashes []int64
	var keys [][]byte
	_, err = pgx.ForEachRow(rows, []any{&p.Source, &p.Page, &p.URL, &p.ETag, &p.LastModified, &p.Next, &p.Total, &digest, &keys, &hashes}, func() error {
		p.Digest = uint64(digest)
		p.Keys = make([]string, len(keys))
		for i, k := range keys {
			p.Keys[i] = string(k)
		}
		p.Hashes = make([]uint64, len(hashes))
		for i, h := range hashes {
			p.Hashes[i] = uint64(h)
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading view pages: %w", err)
	}
	return out, nil
}

// PageWrites are the remembered pages a pull changes.
type PageWrites struct {
	Put  []ViewPage
	Drop []PageKey
}

func (w *PageWrites) empty() bool { return w == nil || len(w.Put) == 0 && len(w.Drop) == 0 }

func (g *GroupTx) queuePages(b *pgx.Batch, w *PageWrites) {
	for _, p := range w.Put {
		hashes := make([]int64, len(p.Hashes))
		for i, h := range p.Hashes {
			hashes[i] = int64(h)
		}
		b.Queue(g.s.sql(`INSERT INTO {schema}.view_pages
				(client_group_id, source, page, url, etag, last_modified, next, total, digest, keys, hashes)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			ON CONFLICT (client_group_id, source, page) DO UPDATE SET url = excluded.url, etag = excluded.etag,
				last_modified = excluded.last_modified, next = excluded.next, total = excluded.total,
				digest = excluded.digest, keys = excluded.keys, hashes = excluded.hashes`),
			g.GroupID, p.Source, p.Page, p.URL, p.ETag, p.LastModified, p.Next, p.Total, int64(p.Digest), byteKeys(p.Keys), hashes)
	}
	for _, k := range w.Drop {
		b.Queue(g.s.sql(`DELETE FROM {schema}.view_pages WHERE client_group_id = $1 AND source = $2 AND page = $3`), g.GroupID, k.Source, k.Page)
	}
}
