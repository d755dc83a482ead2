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
// valid: each JSON block of "Fitting your API" is a client view source that
// the mapping loader accepts.
func TestFittingYourAPIExamplesCompile(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	start := strings.Index(text, "## Fitting your API")
	if start < 0 {
		t.Fatal("README has no \"Fitting your API\" section")
	}
	section := text[start+3:]
	section = section[:strings.Index(section, "\n## ")]
	blocks := strings.Split(section, "```json\n")[1:]
	if len(blocks) < 6 {
		t.Fatalf("found %d JSON examples, want one per API family (6)", len(blocks))
	}
	for _, b := range blocks {
		src := b[:strings.Index(b, "```")]
		if _, err := Parse([]byte(`{"clientView": [` + src + `]}`)); err != nil {
			t.Errorf("README example does not load: %v\n%s", err, src)
		}
	}
}
