package mutators

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
)

// FuzzRender: whatever the arguments, a rendered request stays on the
// upstream (a relative path of the mapped shape, no raw control characters,
// no dot segments), its body is valid JSON, and nothing panics.
func FuzzRender(f *testing.F) {
	m, err := Compile(map[string]Spec{
		"seg":   {Method: "PATCH", Path: "/api/items/{args.id}/sub/{args.sub?}", Body: json.RawMessage(`{"t":"{args.t}","s":"x {args.t} y","n":"{args.n?}"}`)},
		"query": {Method: "POST", Path: "/api/search?q={args.q}&u={userID}"},
		"raw":   {Method: "POST", Path: "/api/raw"},
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		`{"id":"a","t":"x"}`, `{"id":"..","t":1}`, `{"id":"../../etc","t":null}`, `{"id":"a\r\nb","t":{"x":[1]}}`,
		`{"id":"http://evil/x","t":true,"sub":"%2e%2e"}`, `{"q":"a&b=c#d"}`, `null`, `[]`, `{"id":""}`, `{"id":1e999}`,
	} {
		f.Add("seg", s)
		f.Add("query", s)
		f.Add("raw", s)
	}
	f.Fuzz(func(t *testing.T, name, args string) {
		if !json.Valid([]byte(args)) {
			return // the push decoder only hands over valid JSON
		}
		req, err := m.Render(Mutation{ClientID: "c", ID: 1, Name: name, Args: json.RawMessage(args), UserID: "u"})
		if err != nil {
			if re := (*renderError)(nil); !errors.As(err, &re) {
				t.Fatalf("non-business error %T: %v", err, err)
			}
			return
		}
		if !strings.HasPrefix(req.PathQuery, "/api/") || strings.HasPrefix(req.PathQuery, "//") {
			t.Fatalf("path %q left the mapped shape", req.PathQuery)
		}
		if strings.ContainsAny(req.PathQuery, " \r\n\t#") {
			t.Fatalf("path %q has raw control or fragment characters", req.PathQuery)
		}
		u, err := url.Parse("http://upstream.internal" + req.PathQuery)
		if err != nil || u.Host != "upstream.internal" {
			t.Fatalf("path %q changes the host or does not parse: %v", req.PathQuery, err)
		}
		// Segments as the upstream receives them: an escaped slash stays
		// inside its segment.
		for _, seg := range strings.Split(u.EscapedPath(), "/")[1:] {
			if seg == "." || seg == ".." {
				t.Fatalf("path %q has a dot segment", req.PathQuery)
			}
		}
		if name == "query" && len(u.Query()["u"]) != 1 {
			t.Fatalf("query %q gained or lost parameters", u.RawQuery)
		}
		if req.Body != nil && !json.Valid(req.Body) {
			t.Fatalf("body is not JSON: %s", req.Body)
		}
	})
}
