package mutators

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// FuzzArgValue: a placeholder's value is the JSON at its path (found by
// jsonwalk, whose FuzzLookup checks the walk against decoding the whole
// document) in the Go form encoding/json decodes it to with UseNumber;
// objects and arrays stay the bytes the client sent.
func FuzzArgValue(f *testing.F) {
	// One seed per Go form a value can take, and the ways its JSON can be
	// written; the paths themselves are jsonwalk's to fuzz.
	seeds := map[string]string{
		"id":   `{"id":"t1"}`,
		"s":    `{"s":"\ud800 \u00e9 \" \\ \n"}`,
		"bad":  "{\"bad\":\"\xff\"}",
		"n":    `{"n":-1.5e+10}`,
		"big":  `{"big":123456789012345678901234567890}`,
		"t":    `{"t":true,"f":false}`,
		"null": `{"null":null}`,
		"obj":  `{"obj": { "a" : [ 1 , "x" ] } }`,
		"arr":  `{"arr":[]}`,
		"":     `"the args themselves"`,
	}
	for path, args := range seeds {
		f.Add(args, path)
	}
	f.Fuzz(func(t *testing.T, args, path string) {
		if !json.Valid([]byte(args)) {
			return
		}
		ref := strings.Split(path, ".")
		if path == "" {
			ref = nil
		}
		got, ok := argValue([]byte(args), ref)
		raw, found := jsonwalk.Find([]byte(args), ref)
		if ok != found {
			t.Fatalf("args %s path %q: argValue found %v, the walk %v", args, path, ok, found)
		}
		if !ok {
			return
		}
		if raw[0] == '{' || raw[0] == '[' {
			if r, isRaw := got.(json.RawMessage); !isRaw || !bytes.Equal(r, raw) {
				t.Fatalf("args %s path %q: got %#v, want the bytes as sent, %s", args, path, got, raw)
			}
			return
		}
		var want any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("found value %s is not JSON: %v", raw, err)
		}
		if got != want {
			t.Fatalf("args %s path %q: got %#v, decoding gives %#v", args, path, got, want)
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
