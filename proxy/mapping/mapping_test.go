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
