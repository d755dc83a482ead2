package clientview

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// A source's first and last answers are checked for signs that it holds
// more than the fetch received: a total above the items, a next page the
// mapping does not follow. Under the Reset Strategy a view cut short
// deletes on the client every entity it lacks, so such a source fails the
// pull instead.

// checksMore: the source's answers are checked for signs of more items
// than received (not for one whole value, nor for "pagination": "none").
func (s *source) checksMore() bool { return s.keyed && s.page.Type != "none" }

// answer is a page's headers, body and top-level members, kept for the
// checks of a source's first and last pages.
type answer struct {
	hdr  http.Header
	body []byte
	scan pageScan // the page's top-level members
}

// field follows a dotted path from the top level; false when a step is
// absent or not an object.
func (a *answer) field(path []string) (json.RawMessage, bool) {
	if a.scan.top == nil {
		return nil, false
	}
	raw, present, err := a.scan.lookup(a.body, path)
	return raw, err == nil && present
}

// total returns the count of all items an answer reports (X-Total-Count,
// the source's Total path, or a top-level count, total, totalCount,
// total_count or totalItems beside the items), or -1.
func (s *source) total(a *answer) int {
	if v := a.hdr.Get("X-Total-Count"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
			return n
		}
	}
	paths := [][]string{s.totalPath}
	if s.totalPath == nil {
		if s.items == nil {
			return -1 // a bare array has nothing beside it
		}
		paths = [][]string{{"count"}, {"total"}, {"totalCount"}, {"total_count"}, {"totalItems"}}
	}
	for _, p := range paths {
		raw, present := a.field(p)
		if !present {
			continue
		}
		var n int
		if json.Unmarshal(raw, &n) == nil && n >= 0 {
			return n
		}
	}
	return -1
}

// unfollowed says why the last page shows that the source has more pages
// than its pagination follows, or "": a Link rel="next" that link
// pagination did not follow, or a next field that cursor or url pagination
// did not follow. Under the Reset Strategy the client would delete what is
// missing.
func (s *source) unfollowed(a *answer) string {
	if s.page.Type != "link" {
		if target := nextLink(a.hdr.Values("Link")); target != "" {
			return fmt.Sprintf("the answer has a Link header with rel=\"next\" (%s), but the source's pagination does not follow it", target)
		}
	}
	if s.page.Type != "cursor" && s.page.Type != "url" {
		for _, p := range [][]string{{"next"}, {"links", "next"}, {"_links", "next"}} {
			if raw, present := a.field(p); present && !emptyJSON(raw) {
				return fmt.Sprintf("the answer has a non-empty %q field, but the source's pagination does not follow it", strings.Join(p, "."))
			}
		}
	}
	return ""
}

// moreThanReceived says why the total the last page reports (-1: none)
// shows that the source holds more than was received, or "": a total other
// than the items received, or one that changed since the first page.
// shifted: a paged source's total disagrees, which another writer explains
// (the rest are mapping errors).
func (s *source) moreThanReceived(total, firstTotal, received int) (reason string, shifted bool) {
	switch {
	case total < 0:
		return "", false
	case s.paged && firstTotal >= 0 && total != firstTotal:
		return fmt.Sprintf("the reported total changed from %d to %d while the pages were read", firstTotal, total), true
	case s.paged && total != received:
		return fmt.Sprintf("the answer reports %d items in all, but %d were received", total, received), true
	case !s.paged && total > received:
		return fmt.Sprintf("the answer reports %d items in all, but %d were received", total, received), false
	}
	return "", false
}

// emptyJSON: null, "", false, {} or [].
func emptyJSON(raw json.RawMessage) bool {
	switch string(bytes.TrimSpace(raw)) {
	case "null", `""`, "false", "{}", "[]":
		return true
	}
	return false
}
