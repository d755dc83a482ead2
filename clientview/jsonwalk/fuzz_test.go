package jsonwalk

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// decodedFind is the reference the walk must agree with: decode the whole
// document with encoding/json (numbers as written) and follow the path
// through the tree, as the sidecar's auth did.
func decodedFind(t *testing.T, doc []byte, path []string) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var cur any
	if err := dec.Decode(&cur); err != nil {
		t.Fatalf("decoding %s, which json.Valid accepts: %v", doc, err)
	}
	for _, seg := range path {
		switch n := cur.(type) {
		case map[string]any:
			next, ok := n[seg]
			if !ok {
				return nil, false
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(n) {
				return nil, false
			}
			cur = n[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// canonical encodes a decoded value, or decodes and encodes a raw one, so
// that the two can be compared.
func canonical(t *testing.T, v any) string {
	if raw, ok := v.([]byte); ok {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("found value %s is not JSON: %v", raw, err)
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzLookup: for any document and path, Lookup refuses exactly what
// json.Valid refuses, and on a valid document finds what decoding it with
// encoding/json and walking the tree finds: the same value or the same
// absence, and StringOrNumber reads it as the decoded string or number.
// Nothing panics on any input.
func FuzzLookup(f *testing.F) {
	for _, s := range []struct{ doc, path string }{
		{`{"id":"u1"}`, "id"},
		{` { "a" : { "b" : [ 1 , {"c":"}]\""} ] } } `, "a.b.1.c"},
		{`{"a":1,"a":2}`, "a"},
		{`{"\u0069d":"escaped name"}`, "id"},
		{`{"x":"{\"id\":1}","id":[true,false,null]}`, "id.2"},
		{`[["a"],["b","c"]]`, "1.1"},
		{`{"n":-1.5e+10,"z":0}`, "n"},
		{`{"n":1E400}`, "n"},
		{`{"a":{}}`, "a.b"},
		{`"str"`, "0"},
		{`{"a":[]}`, "a.0"},
		{`{"a":[1,2]}`, "a.-1"},
		{`[0,1]`, "01"},
		{`{"\ud800":1,"é":"\u00e9"}`, "\ufffd"},
		{"{\"\xff\":1}", "\ufffd"},
		{`{"data":{"users":[{"id":"u\"1"}]}}`, "data.users.0.id"},
		{`{"id":"u1"`, "id"},
		{`[}]`, "0"},
		{`{"a":"\`, "a"},
	} {
		f.Add(s.doc, s.path)
	}
	f.Fuzz(func(t *testing.T, doc, dotted string) {
		var path []string
		if dotted != "" {
			path = strings.Split(dotted, ".")
		}
		exercise([]byte(doc), path)
		got, present, err := Lookup([]byte(doc), path)
		if valid := json.Valid([]byte(doc)); !valid {
			if !errors.Is(err, ErrSyntax) || present || got != nil {
				t.Fatalf("Lookup(%q) = %s, %v, %v on a document json.Valid refuses", doc, got, present, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Lookup(%s, %q): %v on a valid document", doc, dotted, err)
		}
		want, wantPresent := decodedFind(t, []byte(doc), path)
		if present != wantPresent {
			t.Fatalf("Lookup(%s, %q) present = %v; decoding says %v", doc, dotted, present, wantPresent)
		}
		if !present {
			return
		}
		if g, w := canonical(t, got), canonical(t, want); g != w {
			t.Fatalf("Lookup(%s, %q) = %s; decoding finds %s", doc, dotted, g, w)
		}
		text, ok := StringOrNumber(got)
		switch w := want.(type) {
		case string:
			if !ok || text != w {
				t.Fatalf("StringOrNumber(%s) = %q, %v; decoded string %q", got, text, ok, w)
			}
		case json.Number:
			if !ok || text != w.String() {
				t.Fatalf("StringOrNumber(%s) = %q, %v; decoded number %s", got, text, ok, w)
			}
		default:
			if ok {
				t.Fatalf("StringOrNumber(%s) = %q for a %T", got, text, want)
			}
		}
	})
}

// FuzzElements: the element walk yields exactly the items decoding the
// array finds, each as written, and says an item is spaced exactly when
// compacting it would change it.
func FuzzElements(f *testing.F) {
	for _, s := range []string{
		` [ {"id": "a b"} , {"id":2} ] `, `[]`, `[1,"x",{"a":[]}]`, `[ [ 1 , 2 ] , "]" , "\"" ]`,
		"[\n{\"a\":\t1}\r\n]", `[{"a":"b c"}]`, `{"a":[1]}`, `"s"`, `[1,`, `[}]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		exercise([]byte(doc), nil)
		arr := bytes.TrimSpace([]byte(doc))
		if !json.Valid(arr) || arr[0] != '[' {
			return
		}
		var items []json.RawMessage
		if err := json.Unmarshal(arr, &items); err != nil {
			t.Fatalf("decoding the array %s: %v", doc, err)
		}
		n := 0
		for item, spaced := range Elements([]byte(doc)) {
			if n >= len(items) || !bytes.Equal(item, bytes.TrimSpace(items[n])) {
				t.Fatalf("item %d of %s: walked %s, decoded %s", n, doc, item, items)
			}
			var c bytes.Buffer
			_ = json.Compact(&c, item)
			if changes := !bytes.Equal(c.Bytes(), item); spaced != changes {
				t.Fatalf("item %s walked as spaced=%v, but compacting changes it: %v", item, spaced, changes)
			}
			if end, _ := SkipValue(item, 0); end != len(item) {
				t.Fatalf("SkipValue(%s) ends at %d, not at its end", item, end)
			}
			n++
		}
		if n != len(items) {
			t.Fatalf("walked %d items of %s, decoded %d", n, doc, len(items))
		}
	})
}
