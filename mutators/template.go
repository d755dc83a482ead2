package mutators

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// placeholderRE matches one placeholder such as {args.id}, {clientID} or the
// optional form {args.done?}. Braces that do not match are literal text.
var placeholderRE = regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)(\?)?\}`)

// scalarNames are the placeholders that do not read from the mutation's args.
var scalarNames = map[string]bool{
	"clientID":      true,
	"clientGroupID": true,
	"mutationID":    true,
	"name":          true,
	"userID":        true,
}

// part is one piece of a compiled template string: literal text or a
// placeholder reference.
type part struct {
	literal  string
	ref      []string // nil for literal text; ["args", ...] or ["clientID"], ...
	optional bool
	raw      string // the placeholder as written, for error messages
}

// compileString splits s into literal text and placeholders, reporting every
// placeholder whose name is unknown.
func compileString(s string) ([]part, error) {
	var (
		parts []part
		errs  []string
		last  int
	)
	for _, m := range placeholderRE.FindAllStringSubmatchIndex(s, -1) {
		if m[0] > last {
			parts = append(parts, part{literal: s[last:m[0]]})
		}
		name := s[m[2]:m[3]]
		ref := strings.Split(name, ".")
		switch {
		case ref[0] == "args":
		case len(ref) == 1 && scalarNames[ref[0]]:
		default:
			errs = append(errs, fmt.Sprintf("unknown placeholder %s", s[m[0]:m[1]]))
		}
		parts = append(parts, part{ref: ref, optional: m[4] >= 0, raw: s[m[0]:m[1]]})
		last = m[1]
	}
	if last < len(s) {
		parts = append(parts, part{literal: s[last:]})
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return parts, nil
}

// hasPlaceholder reports whether any part of ps is a placeholder.
func hasPlaceholder(ps []part) bool {
	for _, p := range ps {
		if p.ref != nil {
			return true
		}
	}
	return false
}

// errMissing marks a placeholder whose value is absent from the mutation.
type errMissing struct{ placeholder string }

func (e errMissing) Error() string {
	return fmt.Sprintf("%s: no such value in the mutation", e.placeholder)
}

// values is what placeholders resolve against for one mutation.
type values struct {
	m Mutation // m.Args is valid JSON or empty
	// collect: note in mentions each string an argument placeholder
	// resolves to (at most MaxIDBytes long), before any substitution.
	collect  bool
	mentions []string
}

// lookup resolves a placeholder to a JSON-typed Go value (string,
// json.Number, bool or nil; objects and arrays as their json.RawMessage).
// ok is false when the value is absent (as opposed to present and null).
func (v *values) lookup(ref []string) (any, bool) {
	switch ref[0] {
	case "clientID":
		return v.m.ClientID, true
	case "clientGroupID":
		return v.m.ClientGroupID, true
	case "mutationID":
		return json.Number(strconv.FormatInt(v.m.ID, 10)), true
	case "name":
		return v.m.Name, true
	case "userID":
		return v.m.UserID, true
	}
	if len(v.m.Args) == 0 {
		return nil, len(ref) == 1 // absent args read as null
	}
	val, ok := argValue(v.m.Args, ref[1:])
	if s, isString := val.(string); isString && len(s) <= MaxIDBytes {
		if v.collect {
			v.mentions = append(v.mentions, s)
		}
		// A recorded temporary id, whole: the server's id, with its
		// JSON type.
		if id, found := v.m.ServerIDs[s]; found {
			if sv, valid := id.value(); valid {
				return sv, true
			}
		}
	}
	return val, ok
}

// text renders a value for interpolation into a longer string: strings as
// themselves, everything else as its JSON text.
func text(val any) (string, error) {
	switch x := val.(type) {
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	case nil:
		return "null", nil
	case json.RawMessage:
		var b bytes.Buffer
		if err := json.Compact(&b, x); err != nil {
			return "", err
		}
		return b.String(), nil
	default:
		return "", fmt.Errorf("unexpected value %T", val)
	}
}

// scalarText renders a value that must stand in a URL: objects and arrays are
// refused because their text form is ambiguous there.
func scalarText(p part, val any) (string, error) {
	if _, ok := val.(json.RawMessage); ok {
		return "", fmt.Errorf("%s: an object or array cannot be used in a URL", p.raw)
	}
	return text(val)
}
