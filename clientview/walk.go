package clientview

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The walkers below read values out of JSON already known to be valid
// (scanPage checked it): a nested key field, a nested pagination field, and
// the exact error when a page's items are not where the mapping says.

// walkSpace returns the index of the first non-space byte at or after i.
func walkSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// walkString returns the index just past the string that starts at b[i].
func walkString(b []byte, i int) int {
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

// walkValue returns the index just past the value that starts at b[i], and
// whether it holds whitespace outside its strings (compacting would change
// it).
func walkValue(b []byte, i int) (end int, spaced bool) {
	if i >= len(b) {
		return i, false
	}
	switch b[i] {
	case '"':
		return walkString(b, i), false
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = walkString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, spaced
				}
			case ' ', '\t', '\r', '\n':
				spaced = true
			}
		}
		return len(b), spaced
	default: // number, true, false, null
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return i, false
			}
		}
		return i, false
	}
}

// walkEach calls fn with each member of the object that starts obj
// (trimmed): its quoted key and its value, in order.
func walkEach(obj []byte, fn func(quotedKey, value []byte)) {
	i := walkSpace(obj, 1)
	for i < len(obj) && obj[i] != '}' {
		kEnd := walkString(obj, i)
		k := obj[i:kEnd]
		i = walkSpace(obj, kEnd)
		i = walkSpace(obj, i+1) // the colon
		vEnd, _ := walkValue(obj, i)
		fn(k, obj[i:vEnd])
		i = walkSpace(obj, vEnd)
		if i < len(obj) && obj[i] == ',' {
			i = walkSpace(obj, i+1)
		}
	}
}

// walkMember returns the value of key in the object that starts obj
// (trimmed). When the key repeats, the last one wins, as encoding/json
// decides.
func walkMember(obj []byte, key string) (val []byte, found bool) {
	walkEach(obj, func(k, v []byte) {
		if quotedEquals(k, key) {
			val, found = v, true
		}
	})
	return val, found
}

// walkElements calls fn with each value of the array that starts arr
// (trimmed), and whether it holds whitespace outside its strings.
func walkElements(arr []byte, fn func(item []byte, spaced bool) error) error {
	i := walkSpace(arr, 1)
	for i < len(arr) && arr[i] != ']' {
		end, spaced := walkValue(arr, i)
		if err := fn(arr[i:end], spaced); err != nil {
			return err
		}
		i = walkSpace(arr, end)
		if i < len(arr) && arr[i] == ',' {
			i = walkSpace(arr, i+1)
		}
	}
	return nil
}

// quotedEquals compares a quoted JSON key with name; only a key written
// with escapes is decoded.
func quotedEquals(quoted []byte, name string) bool {
	inner := quoted[1 : len(quoted)-1]
	if string(inner) == name && utf8.ValidString(name) && strings.IndexByte(name, '\\') < 0 {
		return true // valid, without escapes: nothing to decode
	}
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return false
	}
	var s string
	return json.Unmarshal(quoted, &s) == nil && s == name
}

func trimmed(b []byte) []byte { return bytes.TrimSpace(b) }

func isNull(raw []byte) bool { return bytes.Equal(trimmed(raw), []byte("null")) }

// lookupPath walks a dotted path through JSON objects. present is false
// when a step is absent (a null step ends the walk: present, value null);
// a step that is neither an object nor null is an error naming it.
func lookupPath(raw []byte, path []string) (value json.RawMessage, present bool, err error) {
	cur := trimmed(raw)
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
		next, ok := walkMember(cur, seg)
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
	cur := trimmed(raw)
	for i, seg := range path {
		if isNull(cur) {
			return nil, nil
		}
		if len(cur) == 0 || cur[0] != '{' {
			return nil, fmt.Errorf("%q is not an object", strings.Join(path[:i], "."))
		}
		next, ok := walkMember(cur, seg)
		if !ok || isNull(next) {
			return nil, nil
		}
		cur = next
	}
	return cur, nil
}

// scalar renders a JSON string, number or bool as key text.
func scalar(raw json.RawMessage) (string, bool) {
	raw = trimmed(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		inner := raw[1 : len(raw)-1]
		if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
			return string(inner), true
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		return s, true
	case '{', '[', 'n':
		return "", false
	default: // number, true, false
		return string(raw), true
	}
}
