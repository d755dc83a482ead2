package clientview

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// FuzzEntries: any upstream body yields either entries with non-empty keys
// and valid JSON values, or an error; never a panic.
func FuzzEntries(f *testing.F) {
	srcs := []Source{
		{Path: "/a", Items: "data.items", Key: "t/{id}"},
		{Path: "/b", Key: "x/{owner.id}-{n}"},
		{Path: "/c", Key: "whole"},
	}
	var compiled []*source
	for _, s := range srcs {
		cs, errs := compileSource(s)
		if len(errs) > 0 {
			f.Fatal(errs)
		}
		compiled = append(compiled, cs)
	}
	for _, s := range []string{
		`{"data":{"items":[{"id":"a"},{"id":2}]}}`, `[{"owner":{"id":"o"},"n":1}]`, `{"x":1}`, `[]`, `null`,
		`{"data":{"items":[{"id":null}]}}`, `{"data":{"items":{"id":"a"}}}`, `[{"owner":[1]}]`, `"str"`, `[{"id":"\u0000"}]`,
		`{"data":{"items":[{"id":"a"}]},"data":{"x":1}}`, `{"data":{"items":[{"id":"a"}],"items":[{"id":"b", "id":"c"}]}}`,
		`[{"owner":{"id":"o"},"owner":{"id":"p"},"n":1.5e3}]`, `{"data":{"items":[{"\u0069d":"e"}, {"id":-0}]}}`, `[1,2`, `{"a":tru}`,
		`["\ud800"]`, `{"data":{"items":[{"id":"x y"} , {"id":"\"q\"" }]}}`, "[\"\x01\"]", `[01]`, `[1.]`, `[1e]`, `{"a" 1}`,
	} {
		for i := range compiled {
			f.Add(i, s)
		}
	}
	f.Fuzz(func(t *testing.T, which int, body string) {
		if which < 0 || which >= len(compiled) {
			return
		}
		cs := compiled[which]
		scan, ok := scanPage([]byte(body), cs.items, cs.keyFields, nil)
		if ok != json.Valid([]byte(body)) {
			t.Fatalf("scanPage(%q) ok = %v, json.Valid says %v", body, ok, !ok)
		}
		if !ok {
			return // fetchSource refuses it
		}
		es, err := cs.entries([]byte(body), &scan)
		// The same page through the walk alone (no scan results).
		walked, werr := cs.entries([]byte(body), &pageScan{})
		if (err == nil) != (werr == nil) || (err != nil && err.Error() != werr.Error()) {
			t.Fatalf("%s: scanned entries fail with %v, walked with %v", body, err, werr)
		}
		if len(es) != len(walked) {
			t.Fatalf("%s: %d entries scanned, %d walked", body, len(es), len(walked))
		}
		for i := range es {
			if es[i].Key != walked[i].Key || !bytes.Equal(es[i].Value, walked[i].Value) || es[i].Hash != walked[i].Hash {
				t.Fatalf("%s: entry %d scanned %+v, walked %+v", body, i, es[i], walked[i])
			}
		}
		if err != nil {
			return
		}
		for _, e := range es {
			if e.Key == "" {
				t.Fatalf("empty key from %s", body)
			}
			if !json.Valid(e.Value) {
				t.Fatalf("value %q is not JSON", e.Value)
			}
		}
	})
}

// FuzzWalkMatchesDecoding: the path walks and the page scan find what
// decoding the document with encoding/json finds: the same value (or
// absence, or error) at every path, the same top-level members, and the
// same compact form.
func FuzzWalkMatchesDecoding(f *testing.F) {
	for _, s := range []string{
		`{"a":{"b":[1, 2]},"c":null}`, `{"a":1,"a":2}`, `{"a\u0062":{"c":"x"}}`, ` [ {"id": "a b"} , {"id":2} ] `,
		`{"a":"}","b":{"c":"\"{"}}`, `[]`, `{"a":[{"x":1}]}`, `"str"`, `{"a":{"b":null}}`, `{"é":{"b":true}}`,
		"{\"\xff\":{\"b\":1}}", "{\"\ufffd\":1,\"\xff\":2}",
	} {
		f.Add(s, "a.b")
		f.Add(s, "a")
		f.Add(s, "c")
		f.Add(s, "\ufffd")
	}
	f.Fuzz(func(t *testing.T, doc, dotted string) {
		if !json.Valid([]byte(doc)) || dotted == "" {
			return
		}
		path := strings.Split(dotted, ".")
		got, gotErr := selectPath([]byte(doc), path)
		want, wantErr := decodeSelect([]byte(doc), path)
		if (gotErr != nil) != (wantErr != nil) || !sameJSON(got, want) {
			t.Fatalf("selectPath(%s, %q) = %s, %v; decoding finds %s, %v", doc, dotted, got, gotErr, want, wantErr)
		}
		if top := jsonwalk.Trim([]byte(doc)); len(top) > 0 && top[0] == '{' {
			var decoded map[string]json.RawMessage
			if err := json.Unmarshal(top, &decoded); err != nil {
				t.Fatalf("decoding %s: %v", doc, err)
			}
			scan, ok := scanPage([]byte(doc), path, nil, nil)
			if !ok {
				t.Fatalf("scanPage refuses %s, which json.Valid accepts", doc)
			}
			for k, v := range decoded {
				if got, found := scan.topMember(k); !found || !sameJSON(got, v) {
					t.Fatalf("top member %q of %s: scanned %s (%v), decoded %s", k, doc, got, found, v)
				}
			}
			if got != nil && gotErr == nil && !sameJSON(scan.selected, got) {
				t.Fatalf("scanPage(%s, %q) selected %s; selectPath %s", doc, dotted, scan.selected, got)
			}
		}
		// compact is json.Compact, but for the copy it spares (the
		// element walk itself is jsonwalk's FuzzElements).
		var c bytes.Buffer
		_ = json.Compact(&c, []byte(doc))
		if got := compact([]byte(doc)); !bytes.Equal(got, c.Bytes()) {
			t.Fatalf("compact(%s) = %s, json.Compact %s", doc, got, c.Bytes())
		}
	})
}

// decodeSelect is selectPath by decoding, as the sidecar did before the
// walker: the reference.
func decodeSelect(raw []byte, path []string) (json.RawMessage, error) {
	cur := json.RawMessage(raw)
	for _, seg := range path {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(cur, &obj); err != nil {
			return nil, err
		}
		next, ok := obj[seg]
		if !ok || isNull(next) {
			return nil, nil
		}
		cur = next
	}
	return cur, nil
}

func sameJSON(a, b []byte) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var ca, cb bytes.Buffer
	return json.Compact(&ca, a) == nil && json.Compact(&cb, b) == nil && bytes.Equal(ca.Bytes(), cb.Bytes())
}

// TestScanDepth: nesting is refused past encoding/json's limit, exactly
// where json.Valid refuses it.
func TestScanDepth(t *testing.T) {
	for _, n := range []int{maxDepth - 1, maxDepth, maxDepth + 1} {
		doc := []byte(strings.Repeat("[", n) + strings.Repeat("]", n))
		_, ok := scanPage(doc, nil, nil, nil)
		if ok != json.Valid(doc) {
			t.Errorf("%d levels: scanPage ok = %v, json.Valid %v", n, ok, json.Valid(doc))
		}
	}
	if _, ok := scanPage([]byte(strings.Repeat(`{"a":`, maxDepth)+"1"+strings.Repeat("}", maxDepth)), nil, nil, nil); !ok {
		t.Errorf("%d nested objects refused", maxDepth)
	}
}

// TestKeySetCollision: keys whose hashes collide (here every key hashes
// alike) are told apart, a repeat of any is still found, and the table
// keeps them apart as it grows.
func TestKeySetCollision(t *testing.T) {
	var entries []Entry
	for i := range 40 {
		entries = append(entries, Entry{Key: fmt.Sprint("k", i)})
	}
	entries = append(entries, Entry{Key: "k7"}, Entry{Key: "k0"}, Entry{Key: "k39"})
	k := keySet{hash: func(string) uint64 { return 42 }}
	for i := range 40 {
		if j, seen := k.add(entries[:i+1:i+1], i); seen {
			t.Fatalf("%q reported seen (as entry %d): its hash is held by different keys", entries[i].Key, j)
		}
	}
	for i, want := range []int{7, 0, 39} {
		if j, seen := k.add(entries, 40+i); !seen || j != want {
			t.Fatalf("the second %q = %d, %v; want entry %d", entries[40+i].Key, j, seen, want)
		}
	}
}

// TestSpecial: the eight-byte test never misses a byte the string scan must
// stop at.
func TestSpecial(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 8; pos++ {
			word := []byte("abcdefgh")
			word[pos] = byte(c)
			got := special(binary.LittleEndian.Uint64(word))
			if must := c == '"' || c == '\\' || c < 0x20; must && !got {
				t.Fatalf("byte %#x at %d not flagged", c, pos)
			} else if !must && got {
				t.Fatalf("byte %#x at %d flagged among plain letters", c, pos)
			}
		}
	}
}
