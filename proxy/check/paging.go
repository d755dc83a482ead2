package check

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
)

// paging warns of a source whose pages can skip an item unseen: offset or
// page pagination, no total that the fetch could hold against what it
// read, and no sort in its path (without one the API's database may order
// each page's query its own way). It points at a count the answer holds,
// and at the source's "total", which would use it.
func (c *checker) paging(ctx context.Context, src clientview.SourceInfo, res clientview.Result, sc *SourceCheck) {
	if src.Pagination != "offset" && src.Pagination != "page" || res.Sources[0].Provable || len(res.Pages) == 0 || sorted(src.Path) {
		return
	}
	msg := fmt.Sprintf("%s pagination with no total and no sort: without a sort the API may order each page's query its own way, "+
		"and an item another writer adds or deletes between two page reads shifts the rest, so one can be skipped unseen", src.Pagination)
	counts := c.countFields(ctx, src, res.Pages[0].URL)
	if total := src.Total(); total != "" {
		msg += fmt.Sprintf(`; "total": %q names no count in the answer`, total)
	}
	switch {
	case len(counts) > 0:
		msg += fmt.Sprintf(`; the answer counts its items at %s: say "total": %q on the source, so a shift is seen and the source read again`,
			strings.Join(counts, ", "), counts[0])
	default:
		msg += `; have the API report a total and name it with "total" (Directus: add meta=filter_count to the path and say "total": "meta.filter_count"; ` +
			`X-Total-Count and a top-level count, total, totalCount, total_count or totalItems are read without it), or sort by a unique field in the path (e.g. ?sort=id)`
	}
	sc.Warnings = append(sc.Warnings, msg)
}

// sorted: the source's path asks for an order (a query parameter named
// like sort or order: sort, ordering, order_by, _sort, $orderby).
func sorted(path string) bool {
	_, query, _ := strings.Cut(path, "?")
	q, _ := url.ParseQuery(query)
	for k := range q {
		if k = strings.ToLower(k); strings.Contains(k, "sort") || strings.Contains(k, "order") {
			return true
		}
	}
	return false
}

// countFields reads the source's first page again and returns the dotted
// paths of the members that look like a count of all items (a number named
// like count or total, not of pages), within three levels and outside the
// items; shallowest first.
func (c *checker) countFields(ctx context.Context, src clientview.SourceInfo, page string) []string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, page, nil)
	if err != nil {
		return nil
	}
	obj := getObject(c.parts.Upstream.View, req, c.fwd, c.cfg.MaxUpstreamBodyBytes)
	if obj == nil {
		return nil
	}
	type found struct {
		path  string
		depth int
	}
	var out []found
	var walk func(obj map[string]any, prefix string, depth int)
	walk = func(obj map[string]any, prefix string, depth int) {
		for k, v := range obj {
			path := k
			if prefix != "" {
				path = prefix + "." + k
			}
			if path == src.Items() || strings.Contains(k, ".") {
				continue
			}
			switch t := v.(type) {
			case map[string]any:
				if depth < 3 {
					walk(t, path, depth+1)
				}
			case json.Number:
				name := strings.ToLower(k)
				if _, err := t.Int64(); err == nil && (strings.Contains(name, "count") || strings.Contains(name, "total")) && !strings.Contains(name, "page") {
					out = append(out, found{path, depth})
				}
			}
		}
	}
	walk(obj, "", 1)
	slices.SortFunc(out, func(a, b found) int { return cmp.Or(a.depth-b.depth, strings.Compare(a.path, b.path)) })
	paths := make([]string, len(out))
	for i, f := range out {
		paths[i] = f.path
	}
	return paths
}
