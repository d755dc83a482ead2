package clientview

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"

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

// keySet finds a key a source produced twice: a table of the entries'
// positions, open-addressed by the keys' 64-bit hashes (linear probing,
// at most half full), each slot holding the position and 32 bits of the
// hash. No pointers for the collector to scan, eight bytes a slot, and one
// probe on average where a map took several times as long; keys whose
// hash bits match are compared themselves, so it is exact.
type keySet struct {
	slots []keySlot
	n     int                 // slots in use
	hash  func(string) uint64 // nil: xxhash (tests make keys collide)
}

type keySlot struct {
	tag uint32 // the hash's high half, never 0 (0: an empty slot)
	pos int32  // the entry's position
}

// add notes entries[i]'s key, or returns the index of the entry that
// already holds it.
func (k *keySet) add(entries []Entry, i int) (int, bool) {
	if 2*(k.n+1) > len(k.slots) {
		k.grow(entries, max(cap(entries), 2*k.n, 8)) // sized for the reported total, when entries is
	}
	key := entries[i].Key
	h := k.sum(key)
	tag, mask := uint32(h>>32)|1, uint64(len(k.slots)-1)
	for j := h & mask; ; j = (j + 1) & mask {
		s := &k.slots[j]
		switch {
		case s.tag == 0:
			*s = keySlot{tag, int32(i)}
			k.n++
			return 0, false
		case s.tag == tag && entries[s.pos].Key == key:
			return int(s.pos), true
		}
	}
}

func (k *keySet) sum(key string) uint64 {
	if k.hash != nil {
		return k.hash(key)
	}
	return xxhash.Sum64String(key)
}

// grow makes room for at least want keys (at most half full), moving the
// ones held.
func (k *keySet) grow(entries []Entry, want int) {
	size := 8
	for size < 2*want {
		size *= 2
	}
	old := k.slots
	k.slots = make([]keySlot, size)
	mask := uint64(size - 1)
	for _, s := range old {
		if s.tag == 0 {
			continue
		}
		for j := k.sum(entries[s.pos].Key) & mask; ; j = (j + 1) & mask {
			if k.slots[j].tag == 0 {
				k.slots[j] = s
				break
			}
		}
	}
}
