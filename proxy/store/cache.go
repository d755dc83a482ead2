package store

import (
	"sync"
)

// recordCache keeps the view records this process read or wrote last, by
// client group, so a pull of a group whose record did not change since
// reads no rows: only the current version's tag, to check the cached
// version is the database's (the record id, version and tag together
// name one state of a record for good). It is bounded by bytes; the least
// recently used records go first. Safe for concurrent use.
type recordCache struct {
	max int64 // 0: no cache

	mu      sync.Mutex
	size    int64
	clock   uint64
	entries map[string]*cachedRecord
}

type cachedRecord struct {
	id      uint64
	version int64
	tag     uint64
	rows    map[string]recordRow // never changed once cached
	bytes   int64
	used    uint64
}

func newRecordCache(max int64) *recordCache {
	return &recordCache{max: max, entries: map[string]*cachedRecord{}}
}

// get returns the group's cached record if it is version of record id.
func (c *recordCache) get(group string, id uint64, version int64) *cachedRecord {
	if c.max <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[group]
	if e == nil || e.id != id || e.version != version {
		return nil
	}
	c.clock++
	e.used = c.clock
	return e
}

// put caches rows as version (tagged tag) of the group's record id.
func (c *recordCache) put(group string, id uint64, version int64, tag uint64, rows map[string]recordRow) {
	if c.max <= 0 {
		return
	}
	size := int64(0)
	for k := range rows {
		size += int64(len(k)) + recordRowMemory
	}
	if size > c.max/4 {
		return // one record may not crowd out the rest
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[group]; old != nil {
		c.size -= old.bytes
	}
	c.clock++
	c.entries[group] = &cachedRecord{id: id, version: version, tag: tag, rows: rows, bytes: size, used: c.clock}
	c.size += size
	for c.size > c.max {
		var oldest string
		var at uint64
		for g, e := range c.entries {
			if oldest == "" || e.used < at {
				oldest, at = g, e.used
			}
		}
		c.size -= c.entries[oldest].bytes
		delete(c.entries, oldest)
	}
}
