package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
)

// Example is one mutation for the check to render and, with --write,
// send. Examples are sent in the order given, so a create can come before
// the update and the delete of what it made.
type Example struct {
	Mutator string          `json:"mutator"`
	Args    json.RawMessage `json:"args"`
	// Expect is the answer the example is meant to get: "applied" (the
	// default), "rejected", "retry", a status ("422") or a class of
	// statuses ("4xx"). An example the API answers otherwise is a problem;
	// one meant to be refused (a delete of an item that does not exist)
	// says so here.
	Expect string `json:"expect,omitempty"`
}

// checkExpect says what is wrong with an expectation ("" is "applied").
func checkExpect(e string) error {
	switch e {
	case "", "applied", "rejected", "retry":
		return nil
	}
	if len(e) == 3 && e[0] >= '1' && e[0] <= '5' && strings.ToLower(e[1:]) == "xx" {
		return nil
	}
	if n, err := strconv.Atoi(e); err == nil && n >= 100 && n <= 599 {
		return nil
	}
	return fmt.Errorf("expect %q: want applied, rejected, retry, a status (422) or a class (4xx)", e)
}

// expectMet: an answer of outcome and status is what expect names.
func expectMet(expect, outcome string, status int) bool {
	switch {
	case expect == outcome:
		return true
	case len(expect) == 3 && strings.ToLower(expect[1:]) == "xx":
		return status/100 == int(expect[0]-'0')
	}
	n, err := strconv.Atoi(expect)
	return err == nil && n == status
}

// ParseExample reads the --example flag's value, name[:expect]={json
// args}: createTodo='{"id":"t1"}', or deleteTodo:rejected='{"id":"gone"}'
// for an example meant to be refused.
func ParseExample(s string) (Example, error) {
	name, args, ok := strings.Cut(s, "=")
	if !ok || name == "" || !json.Valid([]byte(args)) {
		return Example{}, errors.New("want name='{json args}' (or name:expect='{…}', expect being rejected, a status or a class such as 4xx)")
	}
	ex := Example{Mutator: name, Args: json.RawMessage(args)}
	if i := strings.LastIndexByte(name, ':'); i > 0 && checkExpect(name[i+1:]) == nil {
		ex.Mutator, ex.Expect = name[:i], name[i+1:]
	}
	return ex, nil
}

// exampleFields are the members of an example in an examples file.
var exampleFields = []string{"mutator", "args", "expect"}

// ParseExamples reads an examples file: a JSON array of examples, or the
// same as a YAML list (any file whose content does not start with "[").
// The error names every problem, each with the example's place.
func ParseExamples(raw []byte) ([]Example, error) {
	doc, err := mapping.ToJSON(raw, '[')
	if err != nil {
		return nil, err
	}
	var items []map[string]json.RawMessage
	if err := json.Unmarshal(doc, &items); err != nil {
		return nil, errors.New("want a list of examples, each {\"mutator\": …, \"args\": {…}, \"expect\": …}")
	}
	var out []Example
	var errs []error
	for i, it := range items {
		place := fmt.Sprintf("examples[%d]", i)
		for _, k := range sortedKeys(it) {
			if !slices.Contains(exampleFields, k) {
				msg := fmt.Sprintf("%s: unknown field %q", place, k)
				if s := mapping.Suggest(k, exampleFields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				errs = append(errs, errors.New(msg))
			}
		}
		var ex Example
		if err := json.Unmarshal(it["mutator"], &ex.Mutator); err != nil || ex.Mutator == "" {
			errs = append(errs, fmt.Errorf("%s: mutator is required (a name of the mapping's mutators)", place))
		} else {
			place = fmt.Sprintf("%s (%s)", place, ex.Mutator)
		}
		ex.Args = it["args"]
		if len(bytes.TrimSpace(ex.Args)) == 0 {
			ex.Args = json.RawMessage("{}")
		}
		if raw, ok := it["expect"]; ok {
			var n json.Number
			if json.Unmarshal(raw, &ex.Expect) != nil && json.Unmarshal(raw, &n) == nil {
				ex.Expect = n.String() // expect: 422, unquoted
			}
		}
		if err := checkExpect(ex.Expect); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", place, err))
		}
		out = append(out, ex)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// answered says how the API answered res, for a report.
func answered(res mutators.Result) string {
	switch {
	case res.Status == 0:
		return "it was not applied: " + res.Cause()
	case res.Outcome == mutators.Applied:
		return fmt.Sprintf("the API applied it (%d)", res.Status)
	}
	return fmt.Sprintf("the API answered %d", res.Status)
}

// answerText is the start of the API's answer to a refused call, quoted
// in parentheses ("" for none): a validation message names the field at
// fault.
func answerText(res mutators.Result) string {
	body := strings.Join(strings.Fields(res.Body), " ")
	if body == "" || res.Outcome == mutators.Applied {
		return ""
	}
	if len(body) > 200 {
		cut := 200
		for cut > 0 && !utf8.RuneStart(body[cut]) {
			cut--
		}
		body = body[:cut] + "…"
	}
	return " (" + body + ")"
}

// expectHint shows how to mark an example of name as meant to be refused
// with status.
func expectHint(name string, status int) string {
	return fmt.Sprintf(`--example %s:%d='{…}', or "expect": "%d" in an examples file`, name, status, status)
}
