package mapping

import (
	"os"
	"strings"
	"testing"
)

// TestYAMLMapping: YAML mappings load like JSON ones, and are checked the
// same way.
func TestYAMLMapping(t *testing.T) {
	m, err := Parse([]byte(`
# YAML works too; quote strings that start with "{".
mutators:
  createTodo: {method: POST, path: /api/todos}
  updateTodo:
    method: PATCH
    path: "/api/todos/{args.id}"
    body: {title: "{args.title?}", done: "{args.done?}", source: yaml}
clientView:
  - {path: /api/todos, items: todos, key: "todo/{id}", pagination: {type: link}}
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := strings.Join(m.Mutators.Names(), ","); got != "createTodo,updateTodo" {
		t.Errorf("mutators = %s", got)
	}
	_, err = Parse([]byte("mutators:\n  x: {method: GET, path: nope}\n"))
	if err == nil || !strings.Contains(err.Error(), `method "GET"`) {
		t.Errorf("invalid YAML mapping: %v", err)
	}
	if _, err := Parse([]byte("mutators: [unclosed\n")); err == nil || !strings.Contains(err.Error(), "not valid YAML") {
		t.Errorf("broken YAML: %v", err)
	}
}

// TestFittingYourAPIExamplesCompile keeps the README's worked mappings
// valid: each JSON block of "Fitting your API" and of the guide "From zero
// to your own API" is a whole mapping (it names "mutators" or
// "clientView") or client view sources, and the mapping loader accepts it.
func TestFittingYourAPIExamplesCompile(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	for _, tc := range []struct {
		heading string
		min     int // JSON blocks at least
	}{
		{"## Fitting your API", 6},
		{"## From zero to your own API", 1},
	} {
		start := strings.Index(text, tc.heading+"\n")
		if start < 0 {
			t.Errorf("README has no %q section", tc.heading)
			continue
		}
		section := text[start+3:]
		section = section[:strings.Index(section, "\n## ")]
		blocks := strings.Split(section, "```json\n")[1:]
		if len(blocks) < tc.min {
			t.Errorf("%s: found %d JSON examples, want at least %d", tc.heading, len(blocks), tc.min)
		}
		for _, b := range blocks {
			src := b[:strings.Index(b, "```")]
			doc := `{"clientView": [` + src + `]}`
			if strings.Contains(src, `"mutators"`) || strings.Contains(src, `"clientView"`) {
				doc = src
			}
			if _, err := Parse([]byte(doc)); err != nil {
				t.Errorf("%s: README example does not load: %v\n%s", tc.heading, err, src)
			}
		}
	}
}

// TestUnknownFieldsNamedEveryOne: every unknown field is reported, each
// with its mutator or source and the name likely meant, in JSON and YAML
// alike (issue 29: only the first was reported, as `json: unknown field
// "methd"`, naming no mutator).
func TestUnknownFieldsNamedEveryOne(t *testing.T) {
	want := []string{
		`mutator "createTodo": unknown field "methd" (did you mean "method"?)`,
		`mutator "updateTodo": unknown field "bdy" (did you mean "body"?)`,
		`clientView[0] (/api/todos): unknown field "itmes" (did you mean "items"?)`,
		`clientView[0] (/api/todos): unknown field "typ" in pagination (did you mean "type"?)`,
		`clientView[1] (/api/me): unknown field "limit" (it belongs inside "pagination")`,
		`clientView[1] (/api/me): unknown field "full_every" in changes (did you mean "fullEvery"?)`,
		`unknown field "mutator" (did you mean "mutators"?)`,
	}
	docs := map[string]string{
		"json": `{
  "mutator": {},
  "mutators": {
    "createTodo": {"methd": "POST", "path": "/api/todos"},
    "updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}", "bdy": {"title": "{args.title}"},
                   "headers": {"X-Anything": "free"}, "outcomes": {"404": "applied"}}
  },
  "clientView": [
    {"path": "/api/todos", "itmes": "todos", "key": "todo/{id}", "pagination": {"typ": "link"}},
    {"path": "/api/me", "key": "me/{id}", "limit": 5, "changes": {"param": "since", "field": "updated_at", "full_every": "1m"}}
  ]
}`,
		"yaml": `
mutator: {}
mutators:
  createTodo: {methd: POST, path: /api/todos}
  updateTodo:
    method: PATCH
    path: "/api/todos/{args.id}"
    bdy: {title: "{args.title}"}
    headers: {X-Anything: free}
    outcomes: {404: applied}
clientView:
  - {path: /api/todos, itmes: todos, key: "todo/{id}", pagination: {typ: link}}
  - path: /api/me
    key: "me/{id}"
    limit: 5
    changes: {param: since, field: updated_at, full_every: 1m}
`,
	}
	for format, doc := range docs {
		t.Run(format, func(t *testing.T) {
			_, err := Parse([]byte(doc))
			if err == nil {
				t.Fatal("a mapping with unknown fields loaded")
			}
			got := err.Error()
			for _, w := range want {
				if !strings.Contains(got, w) {
					t.Errorf("the error lacks %s", w)
				}
			}
			if strings.Contains(got, "json:") {
				t.Errorf("the error speaks of json: %s", got)
			}
			// Each problem once, one per line; free-form maps and bodies hold
			// no mapping fields.
			if n := strings.Count(got, "unknown field"); n != len(want) {
				t.Errorf("%d unknown fields reported, want %d:\n%s", n, len(want), got)
			}
		})
	}
}

// TestUnknownFieldsAndOtherProblemsTogether: a typo and what it causes
// (a required field then missing) come out together, each on its own
// error, and a field's case is not a typo (encoding/json matches
// case-insensitively, so "Method" was always accepted).
func TestUnknownFieldsAndOtherProblemsTogether(t *testing.T) {
	_, err := Parse([]byte(`{"mutators": {"m": {"methd": "POST", "path": "/x"}, "n": {"Method": "POST", "path": "/y"}}}`))
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v does not join one error per problem", err)
	}
	var lines []string
	for _, e := range j.Unwrap() {
		lines = append(lines, e.Error())
	}
	want := []string{`mutator "m": unknown field "methd" (did you mean "method"?)`, `mutator "m": method is required`}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// TestYAMLNumericKeys: outcomes keyed by an unquoted status in YAML load
// like JSON's string keys (they failed with a json: error).
func TestYAMLNumericKeys(t *testing.T) {
	m, err := Parse([]byte("mutators:\n  d: {method: DELETE, path: \"/x/{args.id}\", outcomes: {404: applied, 5xx: rejected}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !m.Mutators.Has("d") {
		t.Error("mutator d not loaded")
	}
}

// TestSuggest: the likely name for a typo, and none for a name far from
// every known one.
func TestSuggest(t *testing.T) {
	known := []string{"path", "items", "key", "pagination", "total", "changes", "maxAge", "shared"}
	for _, tc := range []struct{ in, want string }{
		{"itmes", "items"}, // a swap
		{"pagnation", "pagination"},
		{"max_age", "maxAge"}, // spelling, not letters
		{"ky", "key"},
		{"totl", "total"},
		{"url", ""}, // nothing close
		{"filter", ""},
	} {
		if got := Suggest(tc.in, known); got != tc.want {
			t.Errorf("Suggest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
