package clientview

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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

// scannedEntries makes the entries of the items the scan found.
func (s *source) scannedEntries(scan *pageScan) ([]Entry, error) {
	out := make([]Entry, len(scan.items))
	nf := len(s.keyFields)
	for i, it := range scan.items {
		key, err := s.keyFrom(it.raw, scan.fields[i*nf:(i+1)*nf])
		if err == nil {
			err = checkKey(key)
		}
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		v := json.RawMessage(it.raw)
		if it.spaced {
			v = compact(it.raw)
		}
		out[i] = Entry{Key: key, Value: v, Hash: Hash(v)}
	}
	return out, nil
}

// keyFrom is keyOf with the item's top-level key fields already found by
// the scan; anything else (a nested field, a field absent or not a scalar)
// takes keyOf's walk, and its exact error.
func (s *source) keyFrom(item []byte, fields [][]byte) (string, error) {
	// Sized first, then written once: one allocation per key.
	n := 0
	for _, p := range s.key {
		if p.field == nil {
			n += len(p.literal)
			continue
		}
		v, ok := plainScalar(fields[p.first])
		if len(p.field) != 1 || !ok {
			return s.keyOf(item) // nested, absent, escaped or not a scalar
		}
		n += len(v)
	}
	var b strings.Builder
	b.Grow(n)
	for _, p := range s.key {
		if p.field == nil {
			b.WriteString(p.literal)
		} else {
			v, _ := plainScalar(fields[p.first])
			b.Write(v)
		}
	}
	return b.String(), nil
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
func checkKey(key string) error {
	switch {
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("key %.40q… is longer than %d bytes", key, MaxKeyBytes)
	case strings.HasPrefix(key, ReservedPrefix):
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

// keySet finds a key a source produced twice. Keys are held by their
// 64-bit hash, pointing at the entry that holds it (no pointers for the
// collector to scan, a third of a string map's memory); a key whose hash
// another key holds goes to a map by the key itself.
type keySet struct {
	byHash map[uint64]int32
	exact  map[string]int32
}

// add notes entries[i]'s key, or returns the index of the entry that
// already holds it.
func (k *keySet) add(entries []Entry, i int) (int, bool) {
	if k.byHash == nil {
		k.byHash = make(map[uint64]int32, cap(entries)) // sized for the reported total, when entries is
	}
	key := entries[i].Key
	h := xxhash.Sum64String(key)
	j, held := k.byHash[h]
	switch {
	case !held:
		k.byHash[h] = int32(i)
		return 0, false
	case entries[j].Key == key:
		return int(j), true
	}
	if j, ok := k.exact[key]; ok {
		return int(j), true
	}
	if k.exact == nil {
		k.exact = map[string]int32{}
	}
	k.exact[key] = int32(i)
	return 0, false
}
