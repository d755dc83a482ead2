package clientview

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// A page becomes entries here: each item's key rendered from the source's
// key template, its value compacted; and keySet finds a key produced
// twice.

// entries turns one page's body into entries.
func (s *source) entries(body []byte, scan *pageScan) ([]Entry, error) {
	if sel := jsonwalk.Trim(scan.selected); len(sel) > 0 && sel[0] == '[' && s.keyed {
		return s.scannedEntries(scan)
	}
	// Not an array of items (or one whole value): the path is walked again
	// for the exact error, or the value.
	selected := json.RawMessage(body)
	if s.items != nil {
		var err error
		if selected, err = selectPath(body, s.items); err != nil {
			return nil, err
		}
		if selected == nil {
			return nil, fmt.Errorf("items path %q not found in the response", strings.Join(s.items, "."))
		}
	}
	if !s.keyed {
		v := compact(selected)
		return []Entry{{Key: s.key[0].literal, Value: v, Hash: Hash(v)}}, nil
	}
	selected = jsonwalk.Trim(selected)
	if len(selected) == 0 || selected[0] != '[' {
		return nil, errors.New("selected value is not an array")
	}
	var out []Entry
	for item, spaced := range jsonwalk.Elements(selected) {
		key, err := s.keyOf(item)
		if err == nil {
			err = checkKey(key)
		}
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", len(out), err)
		}
		v := json.RawMessage(item)
		if spaced {
			v = compact(item)
		}
		out = append(out, Entry{Key: key, Value: v, Hash: Hash(v)})
	}
	return out, nil
}

// scannedEntries makes the entries of the items the scan found. The keys
// the scan's fields spell are written into one buffer and made one string
// that each key is a part of: one allocation per page, not one per key
// (the keys live as long as each other: the pull's, then the record's).
func (s *source) scannedEntries(scan *pageScan) ([]Entry, error) {
	out := make([]Entry, len(scan.items))
	nf := len(s.keyFields)
	var buf []byte
	ends := make([]int32, len(scan.items)) // where each key ends in buf; -1: out[i].Key is its own
	for i, it := range scan.items {
		from := len(buf)
		var ok bool
		var err error
		if buf, ok = s.appendKey(buf, scan.fields[i*nf:(i+1)*nf]); ok {
			if i == 0 { // the page's keys are most likely about as long
				buf = slices.Grow(buf, len(buf)*len(scan.items)+len(buf)/2)
			}
			ends[i] = int32(len(buf))
			err = checkKey(buf[from:])
		} else {
			// Nested, absent, escaped or not a scalar: the walk decides.
			ends[i] = -1
			if out[i].Key, err = s.keyOf(it.raw); err == nil {
				err = checkKey(out[i].Key)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		v := json.RawMessage(it.raw)
		if it.spaced {
			v = compact(it.raw)
		}
		out[i].Value, out[i].Hash = v, Hash(v)
	}
	keys, start := string(buf), 0
	for i := range out {
		if ends[i] >= 0 {
			out[i].Key = keys[start:ends[i]]
			start = int(ends[i])
		}
	}
	return out, nil
}

// appendKey appends the key an item's top-level key fields (found by the
// scan) spell; false, and buf as it was, when a field is nested, absent,
// escaped or not a scalar: keyOf's walk then decides, with its exact
// error.
func (s *source) appendKey(buf []byte, fields [][]byte) ([]byte, bool) {
	n := len(buf)
	for _, p := range s.key {
		if p.field == nil {
			buf = append(buf, p.literal...)
			continue
		}
		v, ok := plainScalar(fields[p.first])
		if len(p.field) != 1 || !ok {
			return buf[:n], false
		}
		buf = append(buf, v...)
	}
	return buf, true
}

// plainScalar returns the key text of a non-empty string without escapes
// (valid UTF-8), a number or a bool, as bytes of the page; false for
// anything else, which scalar decides.
func plainScalar(raw []byte) ([]byte, bool) {
	raw = jsonwalk.Trim(raw)
	if len(raw) == 0 {
		return nil, false
	}
	switch raw[0] {
	case '"':
		inner := raw[1 : len(raw)-1]
		if len(inner) == 0 || bytes.IndexByte(inner, '\\') >= 0 || !utf8.Valid(inner) {
			return nil, false
		}
		return inner, true
	case '{', '[', 'n':
		return nil, false
	default: // number, true, false
		return raw, true
	}
}

// MaxKeyBytes bounds a client view key: the sidecar's record indexes keys,
// and nothing the Replicache client needs comes near it.
const MaxKeyBytes = 1024

// checkKey refuses keys the sidecar cannot keep: too long, or under the
// prefix reserved for its own entries (an item's field can make one).
func checkKey[K string | []byte](key K) error {
	switch {
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("key %.40q… is longer than %d bytes", key, MaxKeyBytes)
	case len(key) >= len(ReservedPrefix) && string(key[:len(ReservedPrefix)]) == ReservedPrefix:
		return fmt.Errorf("key %q starts with %s, which is reserved for the sidecar's own entries", key, ReservedPrefix)
	}
	return nil
}

func (s *source) keyOf(item json.RawMessage) (string, error) {
	var b strings.Builder
	for _, p := range s.key {
		if p.field == nil {
			b.WriteString(p.literal)
			continue
		}
		raw, err := selectPath(item, p.field)
		if err != nil {
			return "", err
		}
		v, ok := scalar(raw)
		if raw == nil || !ok || v == "" {
			return "", fmt.Errorf("missing key field %q", strings.Join(p.field, "."))
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// compact removes insignificant whitespace so values are stored and sent in
// their smallest form. raw must be valid JSON.
func compact(raw json.RawMessage) json.RawMessage {
	raw = jsonwalk.Trim(raw)
	if _, spaced := jsonwalk.SkipValue(raw, 0); !spaced {
		return raw
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// keySet finds a key a source produced twice: a table open-addressed by
// the keys' 64-bit hashes (linear probing, at most half full) whose slots
// hold 32 more bits of the hash, and no position: four bytes a slot, so a
// view of 100,000 keys probes a table of 1 MiB (a map took several times
// as long, and as much memory). Only when a key's bits match a slot's,
// which is a repeat (or one chance in 2^32 per probe), are the entries
// searched for one with the same key: it is exact. The hash is seeded at
// random per set, as Go's maps are, so that keys chosen to collide (item
// ids are often the users') cannot make the table slow.
type keySet struct {
	slots []uint32 // 0: empty
	n     int
	seed  maphash.Seed
	hash  func(string) uint64 // nil: maphash with seed (tests make keys collide)
}

// add notes entries[i]'s key, or returns the index of the entry that
// already holds it. The keys of entries[:i] were added before.
func (k *keySet) add(entries []Entry, i int) (int, bool) {
	if 2*(k.n+1) > len(k.slots) {
		k.grow(entries[:i], max(cap(entries), 2*k.n, 8)) // sized for the reported total, when entries is
	}
	key := entries[i].Key
	h := k.sum(key)
	tag, mask := uint32(h>>32)|1, uint64(len(k.slots)-1)
	for j := h & mask; ; j = (j + 1) & mask {
		switch k.slots[j] {
		case 0:
			k.slots[j] = tag
			k.n++
			return 0, false
		case tag:
			for at, e := range entries[:i] {
				if e.Key == key {
					return at, true
				}
			}
		}
	}
}

func (k *keySet) sum(key string) uint64 {
	if k.hash != nil {
		return k.hash(key)
	}
	return maphash.String(k.seed, key)
}

// grow makes room for at least want keys (at most half full) and puts
// back the keys of held, which were added before.
func (k *keySet) grow(held []Entry, want int) {
	size := 8
	for size < 2*want {
		size *= 2
	}
	if k.slots == nil {
		k.seed = maphash.MakeSeed()
	}
	k.slots = make([]uint32, size)
	k.n = 0
	mask := uint64(size - 1)
	for _, e := range held {
		h := k.sum(e.Key)
		for j := h & mask; ; j = (j + 1) & mask {
			if k.slots[j] == 0 {
				k.slots[j] = uint32(h>>32) | 1
				k.n++
				break
			}
		}
	}
}
