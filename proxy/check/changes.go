package check

import (
	"context"
	"fmt"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
)

// changes tries a source's delta read against the API, after its full
// read (full): what the items hold in the changes field, then a delta read
// asking for what changed after the newest value read (an API that
// honours the filter answers nothing older, and not the whole collection
// again), then one since just before the oldest (it answers every item
// that has the field). A filter the API ignores would cost a full read on
// every pull unseen; one it cannot read would show no change at all.
func (c *checker) changes(ctx context.Context, src clientview.SourceInfo, full clientview.Result, sc *SourceCheck) {
	if len(full.Entries) == 0 {
		return // nothing to read the field of, or to ask after
	}
	spec, _ := src.Changes()
	sv, _ := src.SurveyChanges(full.Entries, full.Sources[0])
	field := spec.Field
	last := field[strings.LastIndexByte(field, '.')+1:]
	switch {
	case sv.Missing == sv.Items:
		sc.Problems = append(sc.Problems, fmt.Sprintf("no item has changes.field %q%s: a delta read would have no watermark to ask from, "+
			"and every pull would read the source in full; write the item field holding its modification time or version", field, nearHint(last, sv.Near)))
		return
	case sv.Missing > 0:
		sc.Warnings = append(sc.Warnings, fmt.Sprintf("%d of %d items have no %q: a delta read never brings their changes, "+
			"which wait for the next full read (changes.fullEvery, %s)", sv.Missing, sv.Items, field, src.FullEvery))
	}
	switch {
	case sv.Newest == "":
		sc.Problems = append(sc.Problems, fmt.Sprintf("changes.field %q holds %s, neither an RFC 3339 time nor a number, in every item: "+
			"name a field holding the item's modification time or version", field, sv.Example))
		return
	case sv.Unreadable > 0:
		sc.Warnings = append(sc.Warnings, fmt.Sprintf("changes.field %q holds %s in %d of %d items, neither an RFC 3339 time nor a number: "+
			"those items never move the watermark", field, sv.Example, sv.Unreadable, sv.Items))
	case sv.Mixed:
		sc.Warnings = append(sc.Warnings, fmt.Sprintf("changes.field %q holds times in some items and numbers in others: only values of one kind can be compared", field))
	}
	readable := len(full.Entries) - sv.Missing - sv.Unreadable

	// After the newest: nothing older may come back.
	after, ok := c.delta(ctx, src, spec, sv.Newest, true, sc)
	if !ok {
		return
	}
	d := after.Sources[0]
	seen := sv.DeletedSeen
	if sa, _ := src.SurveyChanges(after.Entries, d); sa.DeletedSeen {
		seen = true
	}
	if d.FilterIgnored || len(after.Entries) > 0 && len(after.Entries) >= len(full.Entries) {
		sc.Problems = append(sc.Problems, fmt.Sprintf("the API ignores the changes filter: asked for what changed after %s (the newest %s read) with %s, "+
			"it answered %d items (the collection has %d), some changed before it; every pull would read the whole collection and call it a delta: "+
			"check %s against the API's own filter (a name the API does not know answers everything)",
			sv.Newest, field, sentQuery(spec, d.Sent), len(after.Entries), len(full.Entries), filterName(spec)))
		return
	}
	// Since just before the oldest: every item with the field comes.
	before, ok := c.delta(ctx, src, spec, sv.Oldest, false, sc)
	if !ok {
		return
	}
	b := before.Sources[0]
	if sb, _ := src.SurveyChanges(before.Entries, b); sb.DeletedSeen {
		seen = true
	}
	switch n := len(before.Entries); {
	case n == 0 && readable > 0:
		sc.Problems = append(sc.Problems, fmt.Sprintf("asked for what changed since just before the oldest %s (%s), with %s, the API answered no item, "+
			"though %d have a later one: it does not read the bound as the sidecar writes it (the API's own spelling of %s), or filters on another field; "+
			"check %s", field, sv.Oldest, sentQuery(spec, b.Sent), readable, field, filterName(spec)))
		return
	case n < readable:
		sc.Warnings = append(sc.Warnings, fmt.Sprintf("asked for what changed since just before the oldest %s (%s), with %s, the API answered %d of the %d items "+
			"that have a later one: check that %s filters on %s", field, sv.Oldest, sentQuery(spec, b.Sent), n, readable, filterName(spec), field))
	}
	if spec.Deleted != "" && !seen {
		lastDel := spec.Deleted[strings.LastIndexByte(spec.Deleted, '.')+1:]
		sc.Warnings = append(sc.Warnings, fmt.Sprintf("changes.deleted %q appears in no item read, in full or by changes%s: unless the API shows it only once "+
			"an item is deleted, a soft delete is seen only at the next full read (changes.fullEvery, %s)", spec.Deleted, nearHint(lastDel, sv.DeletedNear), src.FullEvery))
	}
	sc.Changes = fmt.Sprintf("the API honours the changes filter (%s): after the newest %s it answered %d items, since before the oldest %d of %d",
		filterName(spec), field, len(after.Entries), len(before.Entries), readable)
}

// delta reads src by its changes after (or since just before) the value
// v; a read that fails is the source's problem, reported here.
func (c *checker) delta(ctx context.Context, src clientview.SourceInfo, spec clientview.ChangesSpec, v string, after bool, sc *SourceCheck) (clientview.Result, bool) {
	since, err := src.ProbeSince(v, after)
	if err != nil {
		sc.Problems = append(sc.Problems, "the delta read could not be tried: "+err.Error())
		return clientview.Result{}, false
	}
	r := c.request()
	r.Plans = map[string]clientview.Plan{src.ID: {Mode: clientview.Delta, Since: since}}
	res, err := c.parts.Fetcher.FetchResult(ctx, src.View, r)
	if err != nil {
		sc.Problems = append(sc.Problems, fmt.Sprintf("the delta read (%s) failed: %s: the API does not take %s as the sidecar sends it",
			filterName(spec), c.problem(err), filterName(spec)))
		return clientview.Result{}, false
	}
	return res, true
}

// filterName names how the source asks for its changes, as written.
func filterName(spec clientview.ChangesSpec) string {
	if spec.Param != "" {
		return fmt.Sprintf("changes.param %q", spec.Param)
	}
	return fmt.Sprintf("changes.query %q", spec.Query)
}

// sentQuery is the query a delta read sent for the bound since.
func sentQuery(spec clientview.ChangesSpec, since string) string {
	if spec.Param != "" {
		return spec.Param + "=" + since
	}
	return strings.ReplaceAll(spec.Query, "{since}", since)
}

// nearHint names the member likely meant among near (the members where a
// field was looked for), or lists them.
func nearHint(name string, near []string) string {
	if s := mapping.Suggest(name, near); s != "" {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	if len(near) > 0 && len(near) <= 12 {
		return " (the items have: " + strings.Join(near, ", ") + ")"
	}
	return ""
}
