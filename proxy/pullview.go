package proxy

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// What a pull adds to the view it fetched, and what it remembers of it:
// the entries of rejected mutations, and the view pages kept for
// conditional GETs (the fetcher's memos and the store's rows of the same
// pages).

// addRejections appends an entry per recent rejection of the group's
// clients, under the reserved prefix, so the app can say why a change was
// dropped (SIDECAR_EXPOSE_REJECTIONS).
func (s *core) addRejections(ctx context.Context, g *store.GroupTx, entries []clientview.Entry) ([]clientview.Entry, error) {
	rs, err := g.RecentRejections(ctx, s.cfg.RejectionTTL)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		var status any
		if r.Status != 0 {
			status = r.Status
		}
		v, err := json.Marshal(map[string]any{
			"clientID": r.ClientID, "mutationID": r.MutationID, "mutator": r.Mutator,
			"status": status, "reason": r.Reason, "time": r.At.UTC().Format(time.RFC3339Nano),
		})
		if err != nil {
			return nil, err
		}
		entries = append(entries, clientview.Entry{
			Key:   clientview.ReservedPrefix + "rejection/" + r.ClientID + "/" + strconv.FormatInt(r.MutationID, 10),
			Value: v, Hash: clientview.Hash(v),
		})
	}
	return entries, nil
}

// pageMemos turns the stored view pages into the fetcher's memos.
func pageMemos(stored []store.ViewPage) map[clientview.PageKey]*clientview.PageMemo {
	out := make(map[clientview.PageKey]*clientview.PageMemo, len(stored))
	for _, p := range stored {
		out[clientview.PageKey{Source: p.Source, Page: p.Page}] = &clientview.PageMemo{
			Source: p.Source, Page: p.Page, URL: p.URL, ETag: p.ETag, LastModified: p.LastModified,
			Next: p.Next, Total: p.Total, Keys: p.Keys, Hashes: p.Hashes,
		}
	}
	return out
}

// pageWrites says which remembered pages a fetch changes: pages fetched in
// full with validators whose answer differs from the stored one are
// written, pages without validators (or no longer fetched) are forgotten,
// pages answered 304 stay as they are. It counts the conditional requests.
func (s *core) pageWrites(stored []store.ViewPage, fetched []clientview.PageResult) *store.PageWrites {
	old := make(map[store.PageKey]store.ViewPage, len(stored))
	for _, p := range stored {
		old[store.PageKey{Source: p.Source, Page: p.Page}] = p
	}
	w := &store.PageWrites{}
	for _, p := range fetched {
		if p.Conditional {
			result := conditionalMiss
			if p.NotModified {
				result = conditionalHit
			}
			s.metrics.conditional.WithLabelValues(result).Inc()
		}
		k := store.PageKey{Source: p.Source, Page: p.Page}
		prev, had := old[k]
		delete(old, k)
		switch {
		case p.NotModified:
		case !p.PageMemo.Conditional() || !storableURL(p.URL) || !storableURL(p.Next):
			if had {
				w.Drop = append(w.Drop, k)
			}
		default:
			d := p.Digest()
			if had && prev.URL == p.URL && prev.ETag == p.ETag && prev.LastModified == p.LastModified && prev.Total == p.Total && prev.Digest == d {
				continue
			}
			w.Put = append(w.Put, store.ViewPage{Source: p.Source, Page: p.Page, URL: p.URL, ETag: p.ETag, LastModified: p.LastModified,
				Next: p.Next, Total: p.Total, Digest: d, Keys: p.Keys, Hashes: p.Hashes})
		}
	}
	for k := range old {
		w.Drop = append(w.Drop, k)
	}
	return w
}

// storableURL: a page URL the remembered pages can keep (a Postgres text:
// valid UTF-8 without NUL, and not absurdly long). Pages whose URL is not
// are simply fetched in full.
func storableURL(u string) bool {
	return len(u) <= 8192 && utf8.ValidString(u) && !strings.ContainsRune(u, 0)
}
