package store

import (
	"container/list"
	"sync"
)

// recordCache keeps the view records this process read or wrote last, by
// client group, so a pull of a group whose record did not change since
// reads no rows: only the current version's tag, to check the cached
// version is the database's (the record id, version and tag together
// name one state of a record for good; nothing changes view_entries
// without writing a new version and tag). It is bounded by bytes, each
// record counted with its keys and a per-row and per-entry overhead; the
// least recently used records go first. Safe for concurrent use.
type recordCache struct {
	max int64 // 0 or less: no cache

	mu      sync.Mutex
	size    int64
	order   *list.List // of *cachedRecord, most recently used first
	entries map[string]*list.Element
}

type cachedRecord struct {
	group   string
	id      uint64
	version int64
	tag     uint64
	rows    map[string]recordRow // never changed once cached
	bytes   int64
}

// cacheEntryBytes is what an entry costs besides its rows: the group id's
// header, the entry, its list element and map slot.
const cacheEntryBytes = 200

func newRecordCache(max int64) *recordCache {
	return &recordCache{max: max, order: list.New(), entries: map[string]*list.Element{}}
}

// enabled reports whether records of about size bytes are kept.
func (c *recordCache) enabled(size int64) bool { return c.max > 0 && size <= c.max/4 }

// recordBytes is what a record of these rows is counted as.
func recordBytes(group string, rows map[string]recordRow) int64 {
	size := int64(len(group)) + cacheEntryBytes
	for k := range rows {
		size += int64(len(k)) + recordRowMemory
	}
	return size
}

// get returns the group's cached record if it is version of record id.
func (c *recordCache) get(group string, id uint64, version int64) *cachedRecord {
	if c.max <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.entries[group]
	if el == nil {
		return nil
	}
	e := el.Value.(*cachedRecord)
	if e.id != id || e.version != version {
		return nil
	}
	c.order.MoveToFront(el)
	return e
}

// put caches rows as version (tagged tag) of the group's record id. A
// record larger than a quarter of the cache is not kept (it would crowd
// out the rest), and the group's older one goes.
func (c *recordCache) put(group string, id uint64, version int64, tag uint64, rows map[string]recordRow) {
	if c.max <= 0 {
		return
	}
	size := recordBytes(group, rows)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(group)
	if !c.enabled(size) {
		return
	}
	c.entries[group] = c.order.PushFront(&cachedRecord{group: group, id: id, version: version, tag: tag, rows: rows, bytes: size})
	c.size += size
	for c.size > c.max {
		oldest := c.order.Back()
		c.dropLocked(oldest.Value.(*cachedRecord).group)
	}
}

// drop forgets the group's record (the group was deleted).
func (c *recordCache) drop(group string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(group)
}

func (c *recordCache) dropLocked(group string) {
	if el := c.entries[group]; el != nil {
		c.size -= el.Value.(*cachedRecord).bytes
		c.order.Remove(el)
		delete(c.entries, group)
	}
}
