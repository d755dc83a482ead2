package clientview

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// The paths below read values out of a page already known to be valid JSON
// (scanPage checked it), through objects only: a nested key field, a
// nested pagination field, and the exact error when a page's items are not
// where the mapping says.

func isNull(raw []byte) bool { return bytes.Equal(jsonwalk.Trim(raw), []byte("null")) }

// lookupPath walks a dotted path through JSON objects. present is false
// when a step is absent (a null step ends the walk: present, value null);
// a step that is neither an object nor null is an error naming it.
func lookupPath(raw []byte, path []string) (value json.RawMessage, present bool, err error) {
	cur := jsonwalk.Trim(raw)
	for i, seg := range path {
		if isNull(cur) {
			return cur, true, nil
		}
		if len(cur) == 0 || cur[0] != '{' {
			where := strings.Join(path[:i], ".")
			if where == "" {
				where = "the response"
			}
			return nil, false, fmt.Errorf("%s is not an object", where)
		}
		next, ok := jsonwalk.Member(cur, seg)
		if !ok {
			return nil, false, nil
		}
		cur = next
	}
	return cur, true, nil
}

// selectPath walks a dotted path through JSON objects. It returns nil, nil
// when a step is absent or null, and an error when a step is not an object.
func selectPath(raw []byte, path []string) (json.RawMessage, error) {
	cur := jsonwalk.Trim(raw)
	for i, seg := range path {
		if isNull(cur) {
			return nil, nil
		}
		if len(cur) == 0 || cur[0] != '{' {
			return nil, fmt.Errorf("%q is not an object", strings.Join(path[:i], "."))
		}
		next, ok := jsonwalk.Member(cur, seg)
		if !ok || isNull(next) {
			return nil, nil
		}
		cur = next
	}
	return cur, nil
}

// scalar renders a JSON string, number or bool as key text.
func scalar(raw json.RawMessage) (string, bool) {
	raw = jsonwalk.Trim(raw)
	if len(raw) > 0 && (raw[0] == 't' || raw[0] == 'f') {
		return string(raw), true
	}
	return jsonwalk.StringOrNumber(raw)
}
