package mutators

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// benchArgs is a mutation's args of about 64 KiB: the fields the mapping
// names come after a blob it never mentions, so each lookup walks past it.
func benchArgs() json.RawMessage {
	var b strings.Builder
	b.WriteString(`{"blob":[`)
	for i := 0; b.Len() < 64<<10; i++ {
		fmt.Fprintf(&b, `{"n":%d,"s":"alpha \"bravo\" charlie","a":[1,2.5e3,true,null]},`, i)
	}
	b.WriteString(`{}], "list": {"id": "L1", "owner": {"name": "ann"}}, "ids": ["x", "y", "z"],`)
	b.WriteString(`"id":"t1","title":"milk \u00e9","done":false,"meta":{"tags":["a","b"]}}`)
	return json.RawMessage(b.String())
}

// BenchmarkRender: rendering one mutation whose placeholders read nested
// fields and array elements out of raw args.
func BenchmarkRender(b *testing.B) {
	m, err := Compile(map[string]Spec{
		"update": {Method: "PATCH", Path: "/lists/{args.list.id}/todos/{args.id}?by={args.list.owner.name}&second={args.ids.1}",
			Body: json.RawMessage(`{"title":"{args.title}","done":"{args.done}","meta":"{args.meta}","note":"{args.title} in {args.list.id}"}`)},
	})
	if err != nil {
		b.Fatal(err)
	}
	mu := Mutation{ClientGroupID: "g", ClientID: "c", ID: 7, Name: "update", Args: benchArgs(), UserID: "u"}
	b.SetBytes(int64(len(mu.Args)))
	for b.Loop() {
		if _, err := m.Render(mu); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenderWithServerIDs: the same call when the mapping declares a
// serverID (each placeholder's string is noted for the look-up), rendered
// again with two recorded temporary ids, as a call that names one is.
func BenchmarkRenderWithServerIDs(b *testing.B) {
	m, err := Compile(map[string]Spec{
		"update": {Method: "PATCH", Path: "/lists/{args.list.id}/todos/{args.id}?by={args.list.owner.name}&second={args.ids.1}",
			Body: json.RawMessage(`{"title":"{args.title}","done":"{args.done}","meta":"{args.meta}","note":"{args.title} in {args.list.id}"}`)},
		"create": {Method: "POST", Path: "/todos", ServerID: &ServerIDSpec{Arg: "id", Field: "id"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	mu := Mutation{ClientGroupID: "g", ClientID: "c", ID: 7, Name: "update", Args: benchArgs(), UserID: "u",
		ServerIDs: ServerIDs{"t1": `17`, "L1": `"list-9"`}}
	b.SetBytes(int64(len(mu.Args)))
	for b.Loop() {
		if _, err := m.Render(mu); err != nil {
			b.Fatal(err)
		}
	}
}
