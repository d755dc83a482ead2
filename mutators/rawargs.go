package mutators

import (
	"encoding/json"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// A mutation's args stay the bytes the client sent: a placeholder is
// resolved by walking those bytes to the value it names (jsonwalk), so an
// argument the mapping never mentions costs a scan, not a decoded tree (a
// 16 MiB array decoded into []any takes more than 30 times its size).
// The walk expects valid JSON: Render checks the args with json.Valid once
// before any lookup.

// argValue resolves ref (the path below "args") in raw. It returns the
// value as string, json.Number, bool or nil for scalars, and as
// json.RawMessage (the bytes as sent) for objects and arrays. ok is false
// when a step is absent.
func argValue(raw []byte, ref []string) (any, bool) {
	v, ok := jsonwalk.Find(raw, ref)
	if !ok {
		return nil, false
	}
	return scalarOrRaw(v)
}

// scalarOrRaw turns one JSON value into its Go form for templates.
func scalarOrRaw(v []byte) (any, bool) {
	if len(v) == 0 {
		return nil, false
	}
	switch v[0] {
	case '{', '[':
		return json.RawMessage(v), true
	case '"':
		if s, ok := jsonwalk.Unquote(v); ok {
			return s, true
		}
		return nil, false
	case 't':
		return true, true
	case 'f':
		return false, true
	case 'n':
		return nil, true
	default:
		return json.Number(v), true
	}
}
