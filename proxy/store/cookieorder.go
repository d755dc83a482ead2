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

// IssueCookies issues one cookie order per request order, for the pulls
// answered from one fetch, in the given sequence, and writes change (nil:
// none), the group's view record after a pull, pages, its remembered view
// pages, the source states staged (StageSources) and the pulls noted
// (NotePulls), in the same round trip. With a change and a holder
// (HoldRecord) it notes the holder's use of the record too (at most once
// per holderTouch).
//
// Each order is strictly greater than both the request's and every order
// issued to the group before (as NextCookieOrder; 0 for a request whose
// cookie cannot grow: ErrCookieExhausted for it alone), except for a
// request holding the group's current cookie (NoteCookies) when this pull
// changes nothing its clients hold: it keeps its own order. That is a
// cookie of this database and group (Cookie.Epoch, Cookie.Group), at the
// group's last issued order, naming the record's version and tag, which
// change leaves as they are (the record is not changed, nor was it
// evicted), while no last mutation id of the group moved since that order
// was issued: the ones LastMutationIDs read in this transaction hash as
// those the group's last order was issued with (noted with every order
// issued after LastMutationIDs; not known for an order an older release
// issued, which keeps no cookie until the group's next order). Such a pull
// is answered with its own cookie, an empty patch and no last mutation id
// changes, which the client takes for "nothing new".
//
// What does not change is not written: a pull that issues no order,
// changes no record, and has no pages, source states or history to write
// writes no row (but the holder's use, once per holderTouch, and the
// group's last use, once per Options.TouchInterval). Its transaction's
// only WAL is then the group's row lock and the commit record.
func (g *GroupTx) IssueCookies(ctx context.Context, requestOrders []int64, change *ViewChange, pages *PageWrites) ([]int64, error) {
	changed := change != nil && change.Changed()
	cookies := g.cookies
	g.cookies = nil
	out := make([]int64, len(requestOrders))
	cur := g.cookieOrder
	for i, r := range requestOrders {
		if !changed && i < len(cookies) && cookies[i].Order == r && g.isCurrent(cookies[i], change) {
			out[i] = r
			continue
		}
		if !CookieCanGrow(r, cur) {
			continue
		}
		cur = max(r, cur) + 1
		out[i] = cur
	}
	issued := cur != g.cookieOrder
	holding := change != nil && g.holder != ""
	rec := g.record
	if changed {
		rec = change.Record
	}
	events := g.pullEvents(out, rec)
	if !issued && !changed && !g.touchDue && !holding && pages.empty() && len(g.stagedSources) == 0 && len(events) == 0 {
		return out, nil
	}
	b := &pgx.Batch{}
	if holding {
		g.queueHolder(b)
	}
	if !pages.empty() {
		g.queuePages(b, pages)
	}
	if changed {
		g.queueChange(b, change)
		if change.onCommit != nil {
			g.afterCommit = append(g.afterCommit, change.onCommit)
		}
	}
	if issued || changed || g.touchDue {
		var lmids *int64 // the last mutation ids the orders issued are answered with
		if issued && g.lmidsRead {
			h := int64(g.lmids)
			lmids = &h
		}
		b.Queue(g.s.sql(`UPDATE {schema}.client_groups SET cookie_order = $2, view_record_id = nullif($3::bigint, 0), view_version = $4, view_min_version = $5,
				last_used_at = now(), view_evicted_at = CASE WHEN $6 THEN NULL ELSE view_evicted_at END, cookie_lmids = coalesce($7, cookie_lmids)
			WHERE id = $1`), g.GroupID, cur, int64(rec.ID), rec.Version, rec.MinVersion, changed, lmids)
	}
	g.queueSources(b, rec.ID)
	if len(events) > 0 {
		b.Queue(g.s.sql(historySQL), g.historyArgs(events)...)
	}
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
	if issued || changed || g.touchDue {
		g.touchDue = false
		if issued && g.lmidsRead {
			h := int64(g.lmids)
			g.cookieLmids = &h
		}
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

// NoteCookies gives the next IssueCookies of this transaction the cookies
// its requests hold, by index, as their orders: a request holding the
// group's current cookie keeps it when nothing changed for its clients.
// Without it every request gets a new order.
func (g *GroupTx) NoteCookies(cookies []Cookie) { g.cookies = cookies }

// isCurrent reports whether c is the group's current cookie for a pull
// whose view change (not changed) leaves the record as it is, and no last
// mutation id moved since it was issued (IssueCookies).
func (g *GroupTx) isCurrent(c Cookie, change *ViewChange) bool {
	if change == nil || change.evicted || c.Order == 0 || c.Order != g.cookieOrder || c.Record == 0 ||
		c.Record != change.Record.ID || c.Version != change.Record.Version || c.Tag != change.Record.Tag {
		return false
	}
	if !g.lmidsRead || g.cookieLmids == nil || uint64(*g.cookieLmids) != g.lmids {
		return false
	}
	return c.Epoch == g.Epoch() && c.Group == GroupTag(g.GroupID)
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
