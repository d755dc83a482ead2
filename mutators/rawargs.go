package mutators

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// A mutation's args stay the bytes the client sent: a placeholder is
// resolved by walking those bytes to the value it names, so an argument the
// mapping never mentions costs a scan, not a decoded tree (a 16 MiB array
// decoded into []any takes more than 30 times its size).
//
// The functions below expect valid JSON: Render checks the args with
// json.Valid once before any lookup.

// argValue resolves ref (the path below "args") in raw. It returns the
// value as string, json.Number, bool or nil for scalars, and as
// json.RawMessage (the bytes as sent) for objects and arrays. ok is false
// when a step is absent.
func argValue(raw []byte, ref []string) (any, bool) {
	cur := raw
	for _, seg := range ref {
		cur = bytes.TrimLeft(cur, " \t\r\n")
		if len(cur) == 0 {
			return nil, false
		}
		var found bool
		switch cur[0] {
		case '{':
			cur, found = member(cur, seg)
		case '[':
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 {
				return nil, false
			}
			cur, found = element(cur, i)
		}
		if !found {
			return nil, false
		}
	}
	return scalarOrRaw(bytes.TrimSpace(cur))
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
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, false
		}
		return s, true
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

// member returns the value of key in the object that starts obj. When the
// key repeats, the last one wins, as encoding/json decides.
func member(obj []byte, key string) ([]byte, bool) {
	var (
		val   []byte
		found bool
	)
	i := skipSpace(obj, 1)
	for i < len(obj) && obj[i] != '}' {
		kEnd := skipString(obj, i)
		k := obj[i:kEnd]
		i = skipSpace(obj, kEnd)
		i = skipSpace(obj, i+1) // the colon
		vEnd := skipValue(obj, i)
		if keyEquals(k, key) {
			val, found = obj[i:vEnd], true
		}
		i = skipSpace(obj, vEnd)
		if i < len(obj) && obj[i] == ',' {
			i = skipSpace(obj, i+1)
		}
	}
	return val, found
}

// element returns the n-th value of the array that starts arr.
func element(arr []byte, n int) ([]byte, bool) {
	i := skipSpace(arr, 1)
	for k := 0; i < len(arr) && arr[i] != ']'; k++ {
		end := skipValue(arr, i)
		if k == n {
			return arr[i:end], true
		}
		i = skipSpace(arr, end)
		if i < len(arr) && arr[i] == ',' {
			i = skipSpace(arr, i+1)
		}
	}
	return nil, false
}

// keyEquals compares a quoted JSON key with name; only a key written with
// escapes is decoded.
func keyEquals(quoted []byte, name string) bool {
	inner := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner) == name
	}
	var s string
	return json.Unmarshal(quoted, &s) == nil && s == name
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index just past the string that starts at b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just past the value that starts at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default: // number, true, false, null
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return i
			}
		}
		return i
	}
}
