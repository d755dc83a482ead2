package store

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Epoch returns the identifier of the database, generated at its first
// migration and kept in the schema, as read with the group's lock: every
// cookie carries it, so a cookie from a database that was recreated is
// recognised as such (read per transaction, so a replica never holds on
// to the epoch of a schema dropped under it).
func (g *GroupTx) Epoch() string { return hex.EncodeToString(g.epoch) }

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
// group's view record after a pull, pages, its remembered view pages, the
// source states staged (StageSources) and the pulls noted (NotePulls), in
// the same round trip. With a
// change and a holder (HoldRecord) it notes the holder's use of the record
// too.
func (g *GroupTx) IssueCookies(ctx context.Context, requestOrders []int64, change *ViewChange, pages *PageWrites) ([]int64, error) {
	out := make([]int64, len(requestOrders))
	cur := g.cookieOrder
	for i, r := range requestOrders {
		if !CookieCanGrow(r, cur) {
			continue
		}
		cur = max(r, cur) + 1
		out[i] = cur
	}
	changed := change != nil && change.Changed()
	if cur == g.cookieOrder && !changed && pages.empty() && len(g.stagedSources) == 0 && len(g.pulls) == 0 {
		return out, nil
	}
	b := &pgx.Batch{}
	holding := change != nil && g.holder != ""
	if holding {
		g.queueHolder(b)
	}
	if !pages.empty() {
		g.queuePages(b, pages)
	}
	rec := g.record
	if changed {
		g.queueChange(b, change)
		rec = change.Record
		if change.onCommit != nil {
			g.afterCommit = append(g.afterCommit, change.onCommit)
		}
	}
	b.Queue(g.s.sql(`UPDATE {schema}.client_groups SET cookie_order = $2, view_record_id = nullif($3::bigint, 0), view_version = $4, view_min_version = $5,
			last_used_at = now(), view_evicted_at = CASE WHEN $6 THEN NULL ELSE view_evicted_at END
		WHERE id = $1`), g.GroupID, cur, int64(rec.ID), rec.Version, rec.MinVersion, changed)
	g.queueSources(b, rec.ID)
	g.queuePullHistory(b, out, rec)
	br := g.tx.SendBatch(ctx, b)
	var err error
	if holding {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		g.heldAnew = err == nil && tag.RowsAffected() == 1
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		g.heldAnew = false
		return nil, fmt.Errorf("issuing cookies: %w", err)
	}
	g.cookieOrder = cur
	g.record = rec
	return out, nil
}

// CookieCanGrow reports whether a cookie can be issued to a request of
// order requestOrder in a group whose last is groupOrder: IssueCookies
// then issues it an order, not 0.
func CookieCanGrow(requestOrder, groupOrder int64) bool {
	return max(requestOrder, groupOrder) < maxCookieOrder
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
