package check_test

import (
	"strings"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/check"
)

// TestParseExample: --example's name[:expect]={json} form.
func TestParseExample(t *testing.T) {
	for _, tc := range []struct {
		in, mutator, expect string
		ok                  bool
	}{
		{`createTodo={"id":"a"}`, "createTodo", "", true},
		{`deleteTodo:rejected={"id":"gone"}`, "deleteTodo", "rejected", true},
		{`deleteTodo:404={}`, "deleteTodo", "404", true},
		{`deleteTodo:4xx={}`, "deleteTodo", "4xx", true},
		{`ns:deleteTodo={}`, "ns:deleteTodo", "", true}, // not an expectation: part of the name
		{`createTodo={not json`, "", "", false},
		{`={}`, "", "", false},
	} {
		ex, err := check.ParseExample(tc.in)
		if (err == nil) != tc.ok || ex.Mutator != tc.mutator || ex.Expect != tc.expect {
			t.Errorf("ParseExample(%s) = %+v, %v", tc.in, ex, err)
		}
	}
}

// TestParseExamples: an examples file keeps its order, reads JSON and
// YAML, and names every problem with the example's place.
func TestParseExamples(t *testing.T) {
	list, err := check.ParseExamples([]byte(`[{"mutator": "b", "args": {"id": 1}}, {"mutator": "a", "expect": 422}]`))
	if err != nil || len(list) != 2 || list[0].Mutator != "b" || string(list[0].Args) != `{"id": 1}` || list[1].Expect != "422" || string(list[1].Args) != "{}" {
		t.Errorf("JSON: %+v, %v", list, err)
	}
	list, err = check.ParseExamples([]byte("- {mutator: b, args: {id: 1}}\n- {mutator: a, expect: rejected}\n"))
	if err != nil || len(list) != 2 || list[0].Mutator != "b" || list[1].Expect != "rejected" {
		t.Errorf("YAML: %+v, %v", list, err)
	}
	_, err = check.ParseExamples([]byte(`[{"mutatr": "b"}, {"mutator": "a", "expect": "maybe"}]`))
	for _, want := range []string{`examples[0]: unknown field "mutatr" (did you mean "mutator"?)`, `examples[0]: mutator is required`, `examples[1] (a): expect "maybe"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %s", err, want)
		}
	}
}
