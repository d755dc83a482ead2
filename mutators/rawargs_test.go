package mutators

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// decodedLookup is the reference: decode the whole args and walk the tree.
func decodedLookup(t testing.TB, raw string, ref []string) (string, bool) {
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	var cur any
	if err := dec.Decode(&cur); err != nil {
		t.Fatalf("reference decode of %s: %v", raw, err)
	}
	for _, seg := range ref {
		switch n := cur.(type) {
		case map[string]any:
			next, ok := n[seg]
			if !ok {
				return "", false
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(n) {
				return "", false
			}
			cur = n[i]
		default:
			return "", false
		}
	}
	b, err := json.Marshal(cur)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

// canonical re-encodes a value found by argValue the way the reference does.
func canonical(t testing.TB, v any) string {
	if raw, ok := v.(json.RawMessage); ok {
		var tree any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&tree); err != nil {
			t.Fatalf("found value %s is not JSON: %v", raw, err)
		}
		v = tree
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzArgValue: walking the raw bytes finds exactly what decoding the whole
// args and walking the tree finds, for any valid JSON and any path.
func FuzzArgValue(f *testing.F) {
	for _, s := range []struct{ args, path string }{
		{`{"id":"t1"}`, "id"},
		{` { "a" : { "b" : [ 1 , {"c":"}]\""} ] } } `, "a.b.1.c"},
		{`{"a":1,"a":2}`, "a"},
		{`{"\u0069d":"escaped key"}`, "id"},
		{`{"x":"{\"id\":1}","id":[true,false,null]}`, "id.2"},
		{`[["a"],["b","c"]]`, "1.1"},
		{`{"n":-1.5e+10,"z":0}`, "n"},
		{`{"a":{}}`, "a.b"},
		{`"str"`, "0"},
		{`{"a":[]}`, "a.0"},
		{`{"a":[1,2]}`, "a.-1"},
	} {
		f.Add(s.args, s.path)
	}
	f.Fuzz(func(t *testing.T, args, path string) {
		if !json.Valid([]byte(args)) {
			return
		}
		ref := strings.Split(path, ".")
		if path == "" {
			ref = nil
		}
		want, wantOK := decodedLookup(t, args, ref)
		got, ok := argValue([]byte(args), ref)
		if ok != wantOK {
			t.Fatalf("args %s path %q: found %v, the decoded tree says %v", args, path, ok, wantOK)
		}
		if ok && canonical(t, got) != want {
			t.Fatalf("args %s path %q: got %s, want %s", args, path, canonical(t, got), want)
		}
	})
}

// Args the mapping does not mention are never decoded: rendering a
// mutation whose args hold a 16 MiB array allocates a small fraction of
// that (decoded into []any, it took more than 30 times its size).
func TestRenderDoesNotDecodeUnusedArgs(t *testing.T) {
	m := mustCompile(t, map[string]Spec{
		"update": {Method: "PATCH", Path: "/api/todos/{args.id}", Body: json.RawMessage(`{"title":"{args.title}"}`)},
	})
	var b bytes.Buffer
	b.WriteString(`{"blob":[`)
	for b.Len() < 16<<20 {
		b.WriteString(`1,"x",{"a":[]},`)
	}
	b.WriteString(`0],"id":"t1","title":"hello"}`)
	args := b.Bytes()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	req, err := m.Render(Mutation{ClientID: "c", ID: 1, Name: "update", Args: args})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if req.PathQuery != "/api/todos/t1" || string(req.Body) != `{"title":"hello"}` {
		t.Fatalf("rendered %s %s", req.PathQuery, req.Body)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<10 {
		t.Errorf("rendering allocated %d bytes for %d bytes of args; want under 64 KiB", alloc, len(args))
	}
}
