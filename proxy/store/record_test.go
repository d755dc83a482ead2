package store

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestRecordBounds: a record remembers removed keys for the configured
// versions and at most max(minTombstones, live keys) of them; forgetting
// any raises MinVersion past them, so no diff can miss a del.
func TestRecordBounds(t *testing.T) {
	keys := func(n int) func(i int) (string, uint64) {
		return func(i int) (string, uint64) { return fmt.Sprint("k", i), 1 }
	}
	rows := func(c *ViewChange, entry func(i int) (string, uint64), old map[string]recordRow) map[string]recordRow {
		out := map[string]recordRow{}
		for k, r := range old {
			out[k] = r
		}
		for i, v := range c.Versions {
			k, h := entry(i)
			out[k] = recordRow{hash: h, version: v}
		}
		for _, k := range c.pruned {
			delete(out, k)
		}
		for _, ts := range c.Tombstones {
			out[ts.Key] = recordRow{version: ts.Version, removed: true}
		}
		return indexRows(out)
	}
	// A record of 3000 keys, then a view of 10: 2990 removals, more than
	// the bound, but all of this change: kept for now, so clients at the
	// version before it still get a diff.
	c := planChange(map[string]recordRow{}, ViewRecord{ID: 1}, ViewRead{N: 3000, Entry: keys(3000)}, 64)
	if c.Record.Version != 1 || c.Record.MinVersion != 1 || len(c.changed) != 3000 {
		t.Fatalf("new record = %+v, %d changed", c.Record, len(c.changed))
	}
	old := rows(c, keys(3000), nil)
	c = planChange(old, c.Record, ViewRead{N: 10, Entry: keys(10)}, 64)
	if len(c.removed) != 2990 || len(c.Tombstones) != 2990 || c.Record.Version != 2 || c.Record.MinVersion != 1 {
		t.Errorf("after 2990 removals: %d removed, %d remembered, record %+v; want 2990 remembered and MinVersion 1",
			len(c.removed), len(c.Tombstones), c.Record)
	}
	if !c.Covers(1, 1, c.tags[1]) || !c.Covers(1, 2, c.Record.Tag) || c.Covers(1, 2, c.Record.Tag+1) {
		t.Errorf("record %+v does not cover version 1 or version 2 with their tags, or covers another tag", c.Record)
	}
	// At the next change they are over the bound: the oldest are forgotten,
	// and MinVersion rises past them.
	changed := func(i int) (string, uint64) { return fmt.Sprint("k", i), 2 }
	old = rows(c, keys(10), old)
	c = planChange(old, c.Record, ViewRead{N: 10, Entry: changed}, 64)
	if len(c.Tombstones) != minTombstones || c.Record.Version != 3 || c.Record.MinVersion != 2 {
		t.Errorf("the change after: %d remembered, record %+v; want %d remembered and MinVersion 2", len(c.Tombstones), c.Record, minTombstones)
	}
	// Unchanged: nothing to write, the version stays.
	old = rows(c, changed, old)
	c = planChange(old, c.Record, ViewRead{N: 10, Entry: changed}, 64)
	if c.Changed() || c.Record.Version != 3 {
		t.Errorf("unchanged view: changed %v, record %+v", c.Changed(), c.Record)
	}
	// Removals older than the kept versions are forgotten at the next change.
	rec := ViewRecord{ID: 1, Version: 100, MinVersion: 1, Tag: 5}
	old = indexRows(map[string]recordRow{"gone-long-ago": {version: 10, removed: true}, "gone-lately": {version: 90, removed: true}, "k0": {hash: 1, version: 5}})
	c = planChange(old, rec, ViewRead{N: 0, Entry: keys(0)}, 64)
	if c.Record.Version != 101 || c.Record.MinVersion != 37 || len(c.pruned) != 1 || c.pruned[0] != "gone-long-ago" {
		t.Errorf("record %+v, pruned %v; want version 101, MinVersion 37 (64 back), gone-long-ago pruned", c.Record, c.pruned)
	}
	// A record without a tag for its version (written before tags) gets a
	// new version, with one, even when nothing changed.
	c = planChange(indexRows(map[string]recordRow{"k0": {hash: 1, version: 5}}), ViewRecord{ID: 1, Version: 5, MinVersion: 1}, ViewRead{N: 1, Entry: keys(1)}, 64)
	if !c.Changed() || c.Record.Version != 6 || c.Record.Tag == 0 || c.Versions[0] != 5 {
		t.Errorf("untagged record: changed %v, record %+v, versions %v; want version 6 with a tag, the entry still at 5", c.Changed(), c.Record, c.Versions)
	}
}

// TestRecordCache: the cache keeps within its bytes, counting each record's
// keys and an overhead per entry (empty records too), drops the least
// recently used first, keeps no record over a quarter of it, and answers
// only for the exact record id and version.
func TestRecordCache(t *testing.T) {
	c := newRecordCache(10 << 10)
	for i := range 1000 { // empty records: counted, so evicted
		c.put(fmt.Sprint("empty", i), 1, 1, 1, map[string]recordRow{})
	}
	if c.size > c.max || len(c.entries) > int(c.max/cacheEntryBytes) {
		t.Errorf("%d empty records in %d bytes, over the bound %d", len(c.entries), c.size, c.max)
	}
	rows := func(n int) map[string]recordRow {
		m := map[string]recordRow{}
		for i := range n {
			m[fmt.Sprint("k", i)] = recordRow{hash: uint64(i)}
		}
		return indexRows(m)
	}
	c.put("a", 1, 5, 9, rows(10))
	c.put("b", 2, 3, 9, rows(10))
	if c.get("a", 1, 5) == nil || c.get("a", 1, 6) != nil || c.get("a", 2, 5) != nil {
		t.Error("get answers for another version or record id, or not for the cached one")
	}
	for i := range 100 { // "a" was used last: "b" goes first
		c.put(fmt.Sprint("filler", i), 1, 1, 1, rows(5))
		if c.get("a", 1, 5) == nil {
			t.Fatalf("the most recently used record was evicted after %d puts", i)
		}
	}
	if c.get("b", 2, 3) != nil {
		t.Error("the least recently used record is still there")
	}
	c.put("a", 1, 6, 9, rows(1000)) // over a quarter of the cache: not kept, and the old one goes
	if c.get("a", 1, 5) != nil || c.get("a", 1, 6) != nil {
		t.Error("a record over a quarter of the cache was kept, or the group's older one stayed")
	}
	c.drop("filler99")
	if c.get("filler99", 1, 1) != nil {
		t.Error("a dropped record is still there")
	}
}

// TestPartialRead: a read that did not bring every source retains the
// keys Retain holds (unchanged, at their versions, in the record after),
// removes those it does not, and removes the keys it says are deleted even
// when retained.
func TestPartialRead(t *testing.T) {
	old := indexRows(map[string]recordRow{
		"todo/1": {hash: 1, version: 3}, "todo/2": {hash: 2, version: 3}, "todo/3": {hash: 3, version: 4},
		"list/1": {hash: 9, version: 2},
	})
	rec := ViewRecord{ID: 1, Version: 4, MinVersion: 1, Tag: 7}
	// The todos were read by their changes: todo/2 changed, todo/3 is
	// soft-deleted, todo/1 not read. The lists were read in full and list/1
	// is gone.
	read := ViewRead{
		N:       1,
		Entry:   func(int) (string, uint64) { return "todo/2", 22 },
		Retain:  func(k string) bool { return strings.HasPrefix(k, "todo/") },
		Deleted: []string{"todo/3", "todo/404"},
	}
	c := planChange(old, rec, read, 64)
	slices.Sort(c.removed)
	if c.Record.Version != 5 || !slices.Equal(c.removed, []string{"list/1", "todo/3"}) || !slices.Equal(c.retained, []string{"todo/1"}) || c.Versions[0] != 5 {
		t.Fatalf("change: record %+v, removed %v, retained %v, versions %v", c.Record, c.removed, c.retained, c.Versions)
	}
	after := c.record(old, read)
	if r := after["todo/1"]; r.removed || r.hash != 1 || r.version != 3 {
		t.Errorf("retained todo/1 = %+v, want as it was", r)
	}
	if r := after["todo/3"]; !r.removed || r.version != 5 {
		t.Errorf("deleted todo/3 = %+v, want a tombstone at version 5", r)
	}
	if _, ok := after["todo/404"]; ok {
		t.Error("a deleted key the record never had became a tombstone")
	}
	// Nothing read, everything retained: no change at all.
	none := ViewRead{Entry: func(int) (string, uint64) { return "", 0 }, Retain: func(string) bool { return true }}
	if c := planChange(old, rec, none, 64); c.Changed() || c.Record.Version != 4 || len(c.retained) != 4 {
		t.Errorf("an empty read retaining everything: changed %v, record %+v, retained %d", c.Changed(), c.Record, len(c.retained))
	}
}
