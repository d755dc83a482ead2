package clientview

import (
	"encoding/json"
	"testing"
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
	} {
		for i := range compiled {
			f.Add(i, s)
		}
	}
	f.Fuzz(func(t *testing.T, which int, body string) {
		if which < 0 || which >= len(compiled) || !json.Valid([]byte(body)) {
			return // fetchSource checks JSON validity first
		}
		es, err := compiled[which].entries([]byte(body))
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
