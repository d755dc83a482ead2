package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// ViewRecord identifies a client group's view record: what the group's
// clients were last served, key by key, as a hash of each value and the
// record version at which it last changed. A pull whose cookie names the
// record and a version V it still covers answers only the keys changed
// after V; any other pull answers a reset. Either way the client then holds
// the record's current version.
type ViewRecord struct {
	ID         uint64 // random, fixed for the group; 0 while it has none
	Version    int64  // bumped by each pull whose view differs from the record
	MinVersion int64  // the oldest version a diff may start from
	Tag        uint64 // the current version's random tag (CompareView reads it)
	// Evicted: the record's rows were evicted (EvictRecords) and it has
	// not been written since. Its id and version numbers are kept, so a
	// cookie naming it is told from one of a lost history: it gets a
	// reset, never ClientStateNotFound. As locked it is the group's mark;
	// CompareView confirms it (a record rewritten since by a release that
	// does not clear the mark has its current version's tag again).
	Evicted bool
}

// Record returns the group's view record as it stands in this transaction.
func (g *GroupTx) Record() ViewRecord { return g.record }

// Record bounds. A diff can start from the last Options.RecordVersions
// versions (their tags are kept). Removed keys are remembered (as
// tombstones, so a diff can name them in a del) that long, and at most
// max(minTombstones, live keys) of them: so a group's record holds at most
// about twice its view's keys. Forgetting a tombstone raises the record's
// MinVersion: clients behind it get a reset.
const minTombstones = 1024

// Tombstone is a key the view no longer has, and the version that removed
// it.
type Tombstone struct {
	Key     string
	Version int64
}

// ViewChange is a fetched view compared with the group's record: the
// record after the pull, and what to write to get there (IssueCookies
// writes it).
type ViewChange struct {
	Record ViewRecord // after the change
	// Versions holds, per view entry in the order given, the version at
	// which its value last changed: a client at version v lacks exactly
	// the entries whose version is above v.
	Versions []int64
	// Tombstones are the removed keys still remembered: a client at v must
	// delete those whose version is above v.
	Tombstones []Tombstone
	// Bytes is the record's logical size after the change: keys, hashes
	// and versions of live entries and tombstones.
	Bytes int64
	// tags are the tags of the versions asked for (as they were before the
	// change), and the new version's.
	tags map[int64]uint64

	created  bool    // the record is new
	evicted  bool    // the record's rows had been evicted: it is written again from nothing
	retag    bool    // the current version has no tag (written before tags were, or evicted): a new version gets one
	changed  []int   // entries new or changed
	hashes   []int64 // per changed entry
	keys     []string
	removed  []string // keys removed by this change
	pruned   []string // tombstones forgotten
	retained []string // live keys the read did not bring, kept as they are
	onCommit func()   // the record cache's update once the change commits
}

// Changed reports whether the change writes anything.
func (c *ViewChange) Changed() bool {
	return c.created || c.retag || len(c.changed) > 0 || len(c.removed) > 0 || len(c.pruned) > 0
}

// Covers reports whether a client that holds version v (tagged tag) of
// record id can be answered with a diff: the record is the same, the
// version is one it issued (the tag matches) and every key removed after v
// is still remembered. Only versions asked for in CompareView are known.
func (c *ViewChange) Covers(id uint64, v int64, tag uint64) bool {
	known, ok := c.tags[v]
	return c.Record.ID != 0 && id == c.Record.ID && v >= c.Record.MinVersion && v <= c.Record.Version && ok && known == tag
}

// Foreign reports whether version v of the group's record, tagged tag, was
// issued by a history this database does not have: a version above the
// record's (before the change), or one whose tag differs. A database
// restored from a backup re-issues version numbers; a client holding one
// of the lost ones must start over, not be diffed against another history.
func (c *ViewChange) Foreign(before ViewRecord, id uint64, v int64, tag uint64) bool {
	if before.ID == 0 || id != before.ID {
		return false
	}
	if v > before.Version {
		return true
	}
	known, ok := c.tags[v]
	return ok && known != tag
}

// Removed returns the keys the change removes from the view.
func (c *ViewChange) Removed() []string { return c.removed }

// Evicted reports whether the group's record had been evicted before this
// pull (EvictRecords): no version of it before the change can be diffed
// from, and a cookie naming one is answered with a reset. Foreign still
// reports a version above the record's (eviction keeps version numbers:
// only a lost history issued those).
func (c *ViewChange) Evicted() bool { return c.evicted }

// Counts reports how many entries the change put (new or changed values)
// and removed.
func (c *ViewChange) Counts() (put, removed int) { return len(c.changed), len(c.removed) }

// recordRow is one key of a stored record.
type recordRow struct {
	hash    uint64
	version int64
	removed bool
	idx     int32 // its place among the record's rows (see indexRows)
}

// indexRows numbers the rows of a record read or built, so planChange can
// tell which it saw without changing the record (cached records are
// shared).
func indexRows(rec map[string]recordRow) map[string]recordRow {
	i := int32(0)
	for k, r := range rec {
		r.idx = i
		rec[k] = r
		i++
	}
	return rec
}

// recordQuery reads a group's record: every key, its hash (0 for a
// tombstone), version and whether it is a tombstone.
const recordQuery = `SELECT key, coalesce(hash, 0), version, hash IS NULL FROM {schema}.view_entries WHERE client_group_id = $1`

// ViewRead is a fetched view, whole or in part, to compare with a group's
// record.
type ViewRead struct {
	// N entries were read; Entry(i) gives the i-th key and the hash of its
	// value. Keys are unique.
	N     int
	Entry func(i int) (key string, hash uint64)
	// Retain reports whether a live key of the record that the read did not
	// bring stays as it is (its source was read by its changes only, or not
	// at all, this time). nil: no key stays; the view was read in full.
	Retain func(key string) bool
	// Deleted are keys the read says are gone, retained or not: items a
	// source's changes mark deleted.
	Deleted []string
}

// CompareView compares a view read in full, n entries (entry(i) gives the
// i-th key and the hash of its value), with the group's record: CompareRead
// of a ViewRead without Retain.
func (g *GroupTx) CompareView(ctx context.Context, n int, entry func(i int) (string, uint64), versions []int64, charge func(int64) error) (*ViewChange, error) {
	return g.CompareRead(ctx, ViewRead{N: n, Entry: entry}, versions, charge)
}

// CompareRead compares a fetched view (read) with the group's record,
// together with the tags of the given versions (the ones pulls' cookies
// name). A live key of the record the read did not bring is removed unless
// read.Retain keeps it; a key in read.Deleted is removed either way. It may
// be called again in the same transaction (with a read made complete):
// only the change given to IssueCookies is written. The record comes from this process's cache when it holds
// the group's current version (same record, version and tag), else from
// the database. It writes nothing: IssueCookies writes the change together
// with the cookies, in one round trip. charge is called with the bytes a
// record read from the database takes in memory (nil: not counted); its
// error ends the read.
func (g *GroupTx) CompareRead(ctx context.Context, read ViewRead, versions []int64, charge func(int64) error) (*ViewChange, error) {
	old := map[string]recordRow{}
	tags := map[int64]uint64{}
	rec := g.record
	if rec.ID != 0 {
		asked := append(slices.Clone(versions), rec.Version)
		cached := g.s.cache.get(g.GroupID, rec.ID, rec.Version)
		b := &pgx.Batch{}
		if cached == nil {
			b.Queue(g.s.sql(recordQuery), g.GroupID)
		}
		b.Queue(g.s.sql(`SELECT version, tag FROM {schema}.view_versions WHERE client_group_id = $1 AND version = ANY($2)`), g.GroupID, asked)
		br := g.tx.SendBatch(ctx, b)
		var err error
		if cached == nil {
			err = readRecord(br, old, charge)
		}
		if err == nil {
			err = readTags(br, tags)
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("reading view record: %w", err)
		}
		rec.Tag = tags[rec.Version]
		rec.Evicted = rec.Evicted && rec.Tag == 0
		switch {
		case cached != nil && cached.tag == rec.Tag && rec.Tag != 0:
			old = cached.rows
		case cached != nil:
			// Another history of this version (a restore): read it.
			if err := g.readRecordRows(ctx, old, charge); err != nil {
				return nil, err
			}
			fallthrough
		default:
			indexRows(old)
			if rec.Tag != 0 {
				g.s.cache.put(g.GroupID, rec.ID, rec.Version, rec.Tag, old)
			}
		}
	} else {
		var err error
		if rec.ID, err = randomID(); err != nil {
			return nil, fmt.Errorf("creating view record: %w", err)
		}
	}
	c := planChange(old, rec, read, g.s.recordVersions)
	for v, t := range tags {
		if _, ok := c.tags[v]; !ok {
			c.tags[v] = t
		}
	}
	if c.Changed() {
		// Once committed (IssueCookies writes c), the new version is what
		// the cache holds.
		if g.s.cache.enabled(c.Bytes - int64(read.N+len(c.retained)+len(c.Tombstones))*(recordRowBytes-recordRowMemory)) {
			next := c.record(old, read)
			id, version, tag := c.Record.ID, c.Record.Version, c.Record.Tag
			c.onCommit = func() { g.s.cache.put(g.GroupID, id, version, tag, next) }
		} else {
			c.onCommit = func() { g.s.cache.drop(g.GroupID) }
		}
	}
	return c, nil
}

func (g *GroupTx) readRecordRows(ctx context.Context, old map[string]recordRow, charge func(int64) error) error {
	br := g.tx.SendBatch(ctx, &pgx.Batch{QueuedQueries: []*pgx.QueuedQuery{{
		SQL: g.s.sql(recordQuery), Arguments: []any{g.GroupID},
	}}})
	err := readRecord(br, old, charge)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("reading view record: %w", err)
	}
	return nil
}

// record is the record after c: the entries read at their versions, the
// keys retained from old as they were, and the tombstones kept.
func (c *ViewChange) record(old map[string]recordRow, read ViewRead) map[string]recordRow {
	out := make(map[string]recordRow, read.N+len(c.retained)+len(c.Tombstones))
	for i := range read.N {
		key, hash := read.Entry(i)
		out[key] = recordRow{hash: hash, version: c.Versions[i]}
	}
	for _, key := range c.retained {
		r := old[key]
		out[key] = recordRow{hash: r.hash, version: r.version}
	}
	for _, t := range c.Tombstones {
		out[t.Key] = recordRow{version: t.Version, removed: true}
	}
	return indexRows(out)
}

func readRecord(br pgx.BatchResults, old map[string]recordRow, charge func(int64) error) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	var key []byte
	var hash, version int64
	var removed bool
	var pending int64
	_, err = pgx.ForEachRow(rows, []any{&key, &hash, &version, &removed}, func() error {
		old[string(key)] = recordRow{hash: uint64(hash), version: version, removed: removed}
		if pending += int64(len(key)) + recordRowMemory; pending >= 64<<10 && charge != nil {
			err := charge(pending)
			pending = 0
			return err
		}
		return nil
	})
	if err == nil && charge != nil {
		err = charge(pending)
	}
	return err
}

func readTags(br pgx.BatchResults, tags map[int64]uint64) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	var version, tag int64
	_, err = pgx.ForEachRow(rows, []any{&version, &tag}, func() error {
		tags[version] = uint64(tag)
		return nil
	})
	return err
}

// randomID returns a random positive 63-bit id (a bigint), never 0.
func randomID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if id := binary.BigEndian.Uint64(b[:]) >> 1; id != 0 {
			return id, nil
		}
	}
}

// recordRowMemory approximates what one key of a record takes in memory
// besides the key's bytes (map slot, string header, row).
const recordRowMemory = 64

// recordRowBytes is what one key of a record is counted as in Bytes
// besides the key's bytes: its hash and version.
const recordRowBytes = 16

// planChange compares the read with the record old (rows numbered by
// indexRows), whose header is rec (rec.Version 0 for a new record),
// keeping removals for keep versions. It does not change old.
func planChange(old map[string]recordRow, rec ViewRecord, read ViewRead, keep int64) *ViewChange {
	n, entry := read.N, read.Entry
	c := &ViewChange{Record: rec, Versions: make([]int64, n), created: rec.Version == 0, tags: map[int64]uint64{}}
	c.retag = !c.created && rec.Tag == 0
	c.evicted = !c.created && rec.Evicted
	c.Record.Evicted = false // written below, or (not evicted) as it was
	if !c.created && !c.retag {
		c.tags[rec.Version] = rec.Tag
	}
	next := rec.Version + 1
	seen := make([]bool, len(old))
	for i := range n {
		key, hash := entry(i)
		c.Bytes += int64(len(key)) + recordRowBytes
		r, ok := old[key]
		if ok {
			seen[r.idx] = true
		}
		if ok && !r.removed && r.hash == hash {
			c.Versions[i] = r.version
			continue
		}
		c.Versions[i] = next
		c.changed = append(c.changed, i)
		c.keys = append(c.keys, key)
		c.hashes = append(c.hashes, int64(hash))
	}
	var deleted map[string]bool
	if len(read.Deleted) > 0 {
		deleted = make(map[string]bool, len(read.Deleted))
		for _, k := range read.Deleted {
			deleted[k] = true
		}
	}
	// What the read did not bring: keys it retains, keys the view lost now,
	// and earlier tombstones.
	for key, r := range old {
		switch {
		case seen[r.idx]:
		case r.removed:
			c.Tombstones = append(c.Tombstones, Tombstone{Key: key, Version: r.version})
		case read.Retain != nil && read.Retain(key) && !deleted[key]:
			c.retained = append(c.retained, key)
			c.Bytes += int64(len(key)) + recordRowBytes
		default:
			c.removed = append(c.removed, key)
			c.Tombstones = append(c.Tombstones, Tombstone{Key: key, Version: next})
		}
	}
	if !c.created && !c.retag && len(c.changed) == 0 && len(c.removed) == 0 {
		for _, t := range c.Tombstones {
			c.Bytes += int64(len(t.Key)) + recordRowBytes
		}
		return c // unchanged: the record stays as it is
	}
	c.Record.Version = next
	c.Record.Tag = newTag()
	c.tags[next] = c.Record.Tag
	// A diff starts at most keep versions back (older tags are dropped).
	c.Record.MinVersion = max(c.Record.MinVersion, next-keep)
	if c.created || c.evicted {
		c.Record.MinVersion = next
	}
	// Forget the tombstones too old to matter, and the oldest beyond the
	// bound, raising MinVersion past them.
	slices.SortFunc(c.Tombstones, func(a, b Tombstone) int { return cmp.Compare(a.Version, b.Version) })
	limit := max(minTombstones, n+len(c.retained))
	cut := 0
	// Removals of this very change are never forgotten for the count: the
	// clients at the version before it need them, and forgetting them would
	// put even the pull that made the change behind MinVersion.
	for cut < len(c.Tombstones) && (c.Tombstones[cut].Version <= next-keep ||
		len(c.Tombstones)-cut > limit && c.Tombstones[cut].Version < next) {
		c.Record.MinVersion = max(c.Record.MinVersion, c.Tombstones[cut].Version)
		c.pruned = append(c.pruned, c.Tombstones[cut].Key)
		cut++
	}
	c.Tombstones = c.Tombstones[cut:]
	for _, t := range c.Tombstones {
		c.Bytes += int64(len(t.Key)) + recordRowBytes
	}
	return c
}

// newTag returns a random version tag, never 0.
func newTag() uint64 {
	id, err := randomID()
	if err != nil {
		panic(err) // crypto/rand does not fail on the platforms we build for
	}
	return id
}

// queueChange queues the statements that write c.
func (g *GroupTx) queueChange(b *pgx.Batch, c *ViewChange) {
	if len(c.changed) > 0 {
		b.Queue(g.s.sql(`INSERT INTO {schema}.view_entries (client_group_id, key, hash, version)
			SELECT $1, k, h, $4 FROM unnest($2::bytea[], $3::bigint[]) AS u(k, h)
			ON CONFLICT (client_group_id, key) DO UPDATE SET hash = excluded.hash, version = excluded.version`),
			g.GroupID, byteKeys(c.keys), c.hashes, c.Record.Version)
	}
	if len(c.removed) > 0 {
		b.Queue(g.s.sql(`UPDATE {schema}.view_entries SET hash = NULL, version = $3 WHERE client_group_id = $1 AND key = ANY($2::bytea[])`),
			g.GroupID, byteKeys(c.removed), c.Record.Version)
	}
	if len(c.pruned) > 0 {
		b.Queue(g.s.sql(`DELETE FROM {schema}.view_entries WHERE client_group_id = $1 AND key = ANY($2::bytea[])`), g.GroupID, byteKeys(c.pruned))
	}
	if c.Record.Version != g.record.Version || c.retag {
		b.Queue(g.s.sql(`INSERT INTO {schema}.view_versions (client_group_id, version, tag) VALUES ($1, $2, $3)
			ON CONFLICT (client_group_id, version) DO UPDATE SET tag = excluded.tag`), g.GroupID, c.Record.Version, int64(c.Record.Tag))
		b.Queue(g.s.sql(`DELETE FROM {schema}.view_versions WHERE client_group_id = $1 AND version < $2`), g.GroupID, c.Record.MinVersion)
	}
}

// byteKeys converts keys for a bytea[] parameter.
func byteKeys(keys []string) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}
