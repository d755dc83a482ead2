package mutators

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// Ids the API chooses. A create mutator may declare
//
//	"serverID": {"arg": "id", "field": "id"}
//
// arg names the argument that carries the id the client made up (its
// temporary id: a string), field the dotted path into the API's answer
// that holds the id the API chose (its server id: a JSON string or
// number). The sidecar records temporary → server id per client group once
// the create is applied; from then on a placeholder of a later mutation of
// the group whose whole value is that temporary id renders as the server's
// id (Mutation.ServerIDs), with its JSON type: a number stays a number in a
// body, and is its decimal text in a path or a longer string.

// ServerIDSpec is a mutator's "serverID" as written in the mapping file.
type ServerIDSpec struct {
	Arg   string `json:"arg"`
	Field string `json:"field"`
}

// MaxIDBytes bounds a temporary id and a server id: a longer one is not
// recorded (nor looked up), so one odd value cannot bloat the records.
const MaxIDBytes = 256

// serverIDAnswerMax bounds how much of a create's answer is read for its
// server id: created resources are small; a larger answer is read no
// further and counts as one without the id.
const serverIDAnswerMax = 256 << 10

// ServerID is an id the API chose, as the JSON text of its answer's value:
// a string (`"a1"`, quotes included) or a number (`17`), exactly as
// answered. It is only ever made from an answer (Result.ServerID) or read
// back from where the caller stored one.
type ServerID string

// ServerIDs maps a client group's temporary ids to the ids the API chose
// for them. Render substitutes a placeholder whose whole value is a key.
type ServerIDs map[string]ServerID

// value is the id as a template value: a string, or a json.Number that
// keeps the number's text exactly. ok is false for text that is neither.
func (id ServerID) value() (any, bool) {
	raw := []byte(id)
	switch {
	case len(raw) == 0:
		return nil, false
	case raw[0] == '"':
		return jsonwalk.Unquote(raw)
	case json.Valid(raw) && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9'):
		return json.Number(id), true
	}
	return nil, false
}

// serverIDRule is a compiled ServerIDSpec.
type serverIDRule struct {
	arg, field []string
	argText    string // as written, for reports
	fieldText  string
}

func compileServerID(s *ServerIDSpec) (*serverIDRule, []error) {
	var errs []error
	check := func(what, p string) []string {
		switch {
		case p == "":
			errs = append(errs, fmt.Errorf("serverID.%s is required", what))
			return nil
		case strings.ContainsAny(p, "{}"):
			errs = append(errs, fmt.Errorf("serverID.%s %q is a dotted path, not a placeholder (write %q)", what, p, strings.Trim(p, "{}")))
			return nil
		}
		segs := strings.Split(p, ".")
		for _, seg := range segs {
			if seg == "" {
				errs = append(errs, fmt.Errorf("serverID.%s %q has an empty step", what, p))
				return nil
			}
		}
		return segs
	}
	r := &serverIDRule{arg: check("arg", s.Arg), field: check("field", s.Field), argText: s.Arg, fieldText: s.Field}
	if len(r.arg) > 1 && r.arg[0] == "args" {
		errs = append(errs, fmt.Errorf("serverID.arg %q names an argument without \"args.\" (write %q)", s.Arg, strings.TrimPrefix(s.Arg, "args.")))
	}
	return r, errs
}

// tempID reads the create's temporary id from its args: the id, or why
// there is none to record.
func (r *serverIDRule) tempID(args []byte) (string, string) {
	val, ok := any(nil), false
	if len(args) > 0 {
		val, ok = argValue(args, r.arg)
	}
	s, isString := val.(string)
	switch {
	case !ok:
		return "", fmt.Sprintf("the mutation has no argument %s (serverID.arg) holding its temporary id", r.argText)
	case !isString || s == "":
		return "", fmt.Sprintf("argument %s (serverID.arg), the temporary id, is not a non-empty string", r.argText)
	case len(s) > MaxIDBytes:
		return "", fmt.Sprintf("argument %s (serverID.arg), the temporary id, is longer than %d bytes", r.argText, MaxIDBytes)
	}
	return s, ""
}

// read finds the server id in an applied answer's body: the id, or why
// there is none.
func (r *serverIDRule) read(body io.Reader) (ServerID, string) {
	b, err := io.ReadAll(io.LimitReader(body, serverIDAnswerMax+1))
	switch {
	case err != nil:
		return "", fmt.Sprintf("reading the answer for its id (serverID.field %s): %v", r.fieldText, err)
	case len(b) > serverIDAnswerMax:
		return "", fmt.Sprintf("the answer is larger than %d bytes; its id (serverID.field %s) was not read", serverIDAnswerMax, r.fieldText)
	}
	v, present, err := jsonwalk.Lookup(b, r.field)
	switch {
	case len(jsonwalk.Trim(b)) == 0:
		return "", fmt.Sprintf("the answer has no body to read the id (serverID.field %s) from", r.fieldText)
	case errors.Is(err, jsonwalk.ErrSyntax):
		return "", fmt.Sprintf("the answer is not JSON, so it holds no id at serverID.field %s", r.fieldText)
	case !present:
		return "", fmt.Sprintf("the answer has no field %s (serverID.field)", r.fieldText)
	}
	v = jsonwalk.Trim(v)
	if s, ok := jsonwalk.StringOrNumber(v); !ok || s == "" {
		return "", fmt.Sprintf("the answer's %s (serverID.field) is not a non-empty string or a number", r.fieldText)
	}
	if len(v) > MaxIDBytes {
		return "", fmt.Sprintf("the answer's %s (serverID.field) is longer than %d bytes", r.fieldText, MaxIDBytes)
	}
	return ServerID(v), ""
}

// argsBody is the body of a call whose mutator has no body template (the
// mutation's args as the client wrote them), for a Set that declares
// serverID: each string in it, at any depth (at most MaxIDBytes long),
// is a mention, and one whose whole value is a recorded temporary id goes
// out as the server's id with its JSON type, as a placeholder's would.
// Args naming none go out byte for byte. args is valid JSON.
func (v *values) argsBody(args []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.UseNumber()
	var tree any
	if dec.Decode(&tree) != nil {
		return args
	}
	changed := false
	var walk func(any) any
	walk = func(n any) any {
		switch x := n.(type) {
		case map[string]any:
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		case string:
			if len(x) > MaxIDBytes {
				return n
			}
			v.mentions = append(v.mentions, x)
			if id, found := v.m.ServerIDs[x]; found {
				if sv, valid := id.value(); valid {
					changed = true
					return sv
				}
			}
		}
		return n
	}
	tree = walk(tree)
	if !changed {
		return args
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // as the client wrote it: only the ids change
	if enc.Encode(tree) != nil {
		return args
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
