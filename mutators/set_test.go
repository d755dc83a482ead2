package mutators

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func mustCompile(t *testing.T, specs map[string]Spec) *Set {
	t.Helper()
	m, err := Compile(specs)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return m
}

func TestCompileReportsEveryProblem(t *testing.T) {
	_, err := Compile(map[string]Spec{
		"noMethod":   {Path: "/a"},
		"badMethod":  {Method: "GET", Path: "/a"},
		"noPath":     {Method: "POST"},
		"relative":   {Method: "POST", Path: "api/x"},
		"unknown":    {Method: "POST", Path: "/a/{nope}"},
		"badBody":    {Method: "POST", Path: "/a", Body: json.RawMessage(`{"x":`)},
		"bodyPh":     {Method: "POST", Path: "/a", Body: json.RawMessage(`{"x":"{arg.id}"}`)},
		"reserved":   {Method: "POST", Path: "/a", Headers: map[string]string{"Host": "evil"}},
		"crlfHeader": {Method: "POST", Path: "/a", Headers: map[string]string{"X-A": "a\r\nX-B: b"}},
		"fragment":   {Method: "POST", Path: "/a#frag"},
		"outcomes":   {Method: "POST", Path: "/a", Outcomes: map[string]string{"404": "ignored", "4xx": "retry", "6xx": "applied", "99": "applied", "abc": "rejected"}},
		"ok":         {Method: "post", Path: "/a/{args.id}", Outcomes: map[string]string{"404": "applied", "5xx": "rejected"}},
	})
	if err == nil {
		t.Fatal("Compile accepted a broken mapping")
	}
	msg := err.Error()
	// Each broken mutator is named, so an operator can fix all at once.
	for _, want := range []string{
		`"noMethod": method is required`,
		`"badMethod": method "GET" is not one of`,
		`"noPath": path is required`,
		`"relative": path "api/x" must start`,
		`"unknown": path: unknown placeholder {nope}`,
		`"badBody": body: not valid JSON`,
		`"bodyPh": body: unknown placeholder {arg.id}`,
		`"reserved": header "Host"`,
		`"crlfHeader": header "X-A": value contains a control character`,
		`"fragment": path "/a#frag" contains a fragment`,
		`"outcomes": outcomes["404"]: "ignored" is not applied, rejected or retry`,
		`"outcomes": outcomes: "6xx" is not a status`,
		`"outcomes": outcomes: "99" is not a status`,
		`"outcomes": outcomes: "abc" is not a status`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q; got:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, `"ok"`) {
		t.Errorf("error blames the valid mutator: %s", msg)
	}
}

func TestRenderPath(t *testing.T) {
	m := mustCompile(t, map[string]Spec{
		"one":    {Method: "PATCH", Path: "/api/todos/{args.id}"},
		"prefix": {Method: "PATCH", Path: "/api/todos/item-{args.id}"},
		"query":  {Method: "POST", Path: "/api/search?q={args.q}&by={userID}&flag"},
		"scalar": {Method: "POST", Path: "/g/{clientGroupID}/c/{clientID}/m/{mutationID}/{name}"},
		"nested": {Method: "POST", Path: "/lists/{args.list.id}/items/{args.ids.1}"},
		"opt":    {Method: "POST", Path: "/o/{args.a}{args.b?}?x={args.x?}&y=1"},
	})
	tests := []struct {
		name    string
		mutator string
		args    string
		want    string // "" means a renderError is expected
		errPart string
	}{
		{"plain value", "one", `{"id":"t1"}`, "/api/todos/t1", ""},
		// The brief's own example: traversal stays inside its segment.
		{"traversal is escaped", "one", `{"id":"../admin"}`, "/api/todos/..%2Fadmin", ""},
		{"dot-dot segment refused", "one", `{"id":".."}`, "", `not allowed`},
		{"dot segment refused", "one", `{"id":"."}`, "", `not allowed`},
		{"empty segment refused", "one", `{"id":""}`, "", `not allowed`},
		{"dot-dot inside a longer segment is harmless", "prefix", `{"id":".."}`, "/api/todos/item-..", ""},
		{"absolute URL cannot change host", "one", `{"id":"http://evil.example/x"}`, "/api/todos/http:%2F%2Fevil.example%2Fx", ""},
		{"query and fragment characters escaped", "one", `{"id":"a?b=c#d"}`, "/api/todos/a%3Fb=c%23d", ""},
		{"CRLF escaped", "one", `{"id":"a\r\nHost: x"}`, "/api/todos/a%0D%0AHost:%20x", ""},
		{"number in path", "one", `{"id":42}`, "/api/todos/42", ""},
		{"object in path refused", "one", `{"id":{"a":1}}`, "", "object or array"},
		{"missing arg", "one", `{"title":"x"}`, "", "{args.id}: no such value"},
		{"null args", "one", `null`, "", "{args.id}: no such value"},
		{"query values escaped", "query", `{"q":"a&b=c d"}`, "/api/search?q=a%26b%3Dc+d&by=u%2F1&flag", ""},
		{"context placeholders", "scalar", `{}`, "/g/g%201/c/c1/m/7/scalar", ""},
		// The "?" of an optional placeholder is not the query separator.
		{"optional placeholders in path and query", "opt", `{"a":"A"}`, "/o/A?x=&y=1", ""},
		{"optional placeholders present", "opt", `{"a":"A","b":"B","x":"X"}`, "/o/AB?x=X&y=1", ""},
		{"nested and array args", "nested", `{"list":{"id":"L"},"ids":["x","y"]}`, "/lists/L/items/y", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := m.Render(Mutation{ClientGroupID: "g 1", ClientID: "c1", ID: 7, Name: tc.mutator, Args: json.RawMessage(tc.args), UserID: "u/1"})
			if tc.want == "" {
				var re *renderError
				if !errors.As(err, &re) || !strings.Contains(err.Error(), tc.errPart) {
					t.Fatalf("want renderError containing %q, got %v (req %+v)", tc.errPart, err, req)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if req.PathQuery != tc.want {
				t.Errorf("path = %q, want %q", req.PathQuery, tc.want)
			}
		})
	}
}

func TestRenderBody(t *testing.T) {
	m := mustCompile(t, map[string]Spec{
		"create": {Method: "POST", Path: "/api/todos"},
		"update": {Method: "PATCH", Path: "/api/todos/{args.id}", Body: json.RawMessage(
			`{"title":"{args.title}","done":"{args.done}","meta":"{args.meta}","note":"by {userID}: {args.title} #{mutationID}","nothing":"{args.none}","fixed":[1,true,"lit"]}`)},
		"partial": {Method: "PATCH", Path: "/p", Body: json.RawMessage(`{"title":"{args.title?}","done":"{args.done?}"}`)},
		"delete":  {Method: "DELETE", Path: "/api/todos/{args.id}"},
		"delBody": {Method: "DELETE", Path: "/x", Body: json.RawMessage(`{"why":"{args.why}"}`)},
	})
	tests := []struct {
		name, mutator, args string
		want                string // expected JSON body; "-" means no body; "" means renderError
	}{
		{"no body template sends args as is", "create", `{"id":"t1","title":"milk","n":1.50}`, `{"id":"t1","title":"milk","n":1.50}`},
		{"null args without template", "create", `null`, `null`},
		{"lone placeholders keep their JSON type; longer strings interpolate",
			"update", `{"id":"t1","title":"milk","done":true,"meta":{"a":[1,2]},"none":null}`,
			`{"done":true,"fixed":[1,true,"lit"],"meta":{"a":[1,2]},"note":"by u1: milk #7","nothing":null,"title":"milk"}`},
		{"large numbers survive exactly", "update", `{"id":"t1","title":1e400,"done":12345678901234567890,"meta":0,"none":1}`,
			`{"done":12345678901234567890,"fixed":[1,true,"lit"],"meta":0,"note":"by u1: 1e400 #7","nothing":1,"title":1e400}`},
		{"missing arg is a business error", "update", `{"id":"t1","title":"x"}`, ""},
		{"optional placeholders drop absent keys", "partial", `{"title":"x"}`, `{"title":"x"}`},
		{"optional keeps explicit null", "partial", `{"done":null}`, `{"done":null}`},
		{"DELETE without template has no body", "delete", `{"id":"t1"}`, "-"},
		{"DELETE with template has a body", "delBody", `{"why":"dup"}`, `{"why":"dup"}`},
		{"unmapped mutator", "nope", `{}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := m.Render(Mutation{ClientGroupID: "g", ClientID: "c", ID: 7, Name: tc.mutator, Args: json.RawMessage(tc.args), UserID: "u1"})
			if tc.want == "" {
				var re *renderError
				if !errors.As(err, &re) {
					t.Fatalf("want renderError, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if tc.want == "-" {
				if req.Body != nil {
					t.Fatalf("body = %s, want none", req.Body)
				}
				return
			}
			if string(req.Body) != tc.want {
				t.Errorf("body = %s\nwant   %s", req.Body, tc.want)
			}
			if req.IdempotencyKey != "c:7" {
				t.Errorf("idempotency key = %q, want c:7", req.IdempotencyKey)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	for status, want := range map[int]Outcome{
		200: Applied, 201: Applied, 204: Applied,
		301: Transient, 304: Transient,
		400: Rejected, 403: Rejected, 404: Rejected, 409: Rejected, 422: Rejected,
		401: Unauthorized, // expired credentials: never consumed
		408: Transient, 425: Transient, 429: Transient,
		500: Transient, 502: Transient, 503: Transient, 504: Transient,
	} {
		if got := classify(status); got != want {
			t.Errorf("classify(%d) = %v, want %v", status, got, want)
		}
	}
}

// TestOutcomeRules: a mutator's outcomes override the defaults, exact
// statuses before classes, and leave every other status to the defaults.
func TestOutcomeRules(t *testing.T) {
	rules, errs := compileOutcomes(map[string]string{"404": "applied", "409": "retry", "5xx": "rejected", "503": "retry", "2xx": "applied"})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	for status, want := range map[int]Outcome{
		404: Applied,   // exact: a DELETE of something already gone
		409: Transient, // exact: a conflict worth retrying
		500: Rejected,  // class: an API answering 500 for a duplicate
		503: Transient, // exact beats class
		422: Rejected,  // default
		429: Transient, // default
		201: Applied,
		302: Transient, // default: redirects are never followed
	} {
		if got := rules.classify(status); got != want {
			t.Errorf("classify(%d) = %v, want %v", status, got, want)
		}
	}
	if got := (outcomeRules{}).classify(404); got != Rejected {
		t.Errorf("no rules: classify(404) = %v, want the default rejected", got)
	}
}
