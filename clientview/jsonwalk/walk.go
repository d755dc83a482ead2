package jsonwalk

import (
	"bytes"
	"encoding/json"
	"errors"
	"iter"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrSyntax is Lookup's error for a document that is not valid JSON.
var ErrSyntax = errors.New("not valid JSON")

// Lookup follows path through doc and returns the value it names, and
// whether the document holds one there. It checks doc with json.Valid
// first: for a document that is not valid JSON it returns ErrSyntax (and
// no value), never a guess. A step that is absent, an index out of range
// or a step into a string, number, true, false or null is not present,
// and no error. For a document already known to be valid, Find does the
// same without the check.
func Lookup(doc []byte, path []string) (value []byte, present bool, err error) {
	if !json.Valid(doc) {
		return nil, false, ErrSyntax
	}
	value, present = Find(doc, path)
	return value, present, nil
}

// Find is Lookup for a document known to be valid JSON: it does not check
// doc (on one that is not valid, what it returns is unspecified). It reads
// each object on its way to the end, since the last of repeated names
// wins, and each array only up to the element it needs.
func Find(doc []byte, path []string) (value []byte, present bool) {
	cur := Trim(doc)
	for _, seg := range path {
		if len(cur) == 0 {
			return nil, false
		}
		var ok bool
		switch cur[0] {
		case '{':
			cur, ok = Member(cur, seg)
		case '[':
			n, err := strconv.Atoi(seg)
			if err != nil || n < 0 {
				return nil, false
			}
			cur, ok = Element(cur, n)
		}
		if !ok {
			return nil, false
		}
	}
	if len(cur) == 0 {
		return nil, false
	}
	return cur, true
}

// Member returns the value of the member called name in the object obj
// (the last one, when the name repeats); false when obj has no such
// member or is not an object.
func Member(obj []byte, name string) (value []byte, ok bool) {
	obj = Trim(obj)
	if len(obj) == 0 || obj[0] != '{' {
		return nil, false
	}
	for i := SkipSpace(obj, 1); i < len(obj) && obj[i] != '}'; {
		kEnd := skipString(obj, i)
		v := SkipSpace(obj, min(SkipSpace(obj, kEnd)+1, len(obj))) // past the colon
		vEnd, _ := SkipValue(obj, v)
		if KeyEquals(obj[i:kEnd], name) {
			value, ok = obj[v:vEnd], true
		}
		i = following(obj, vEnd)
	}
	return value, ok
}

// Element returns the n-th value (from 0) of the array arr; false when
// arr holds fewer or is not an array.
func Element(arr []byte, n int) (value []byte, ok bool) {
	k := 0
	for v := range Elements(arr) {
		if k == n {
			return v, true
		}
		k++
	}
	return nil, false
}

// Elements yields each value of the array arr, in order, with whether it
// holds whitespace outside its strings (see SkipValue). It yields nothing
// when arr is not an array.
func Elements(arr []byte) iter.Seq2[[]byte, bool] {
	return func(yield func(value []byte, spaced bool) bool) {
		a := Trim(arr)
		if len(a) == 0 || a[0] != '[' {
			return
		}
		for i := SkipSpace(a, 1); i < len(a) && a[i] != ']'; {
			end, spaced := SkipValue(a, i)
			if end == i { // no value here: not JSON
				return
			}
			if !yield(a[i:end], spaced) {
				return
			}
			i = following(a, end)
		}
	}
}

// following returns where the member or element after the one ending at
// end starts: past the whitespace and the comma between them.
func following(b []byte, end int) int {
	i := SkipSpace(b, end)
	if i < len(b) && b[i] == ',' {
		i = SkipSpace(b, i+1)
	}
	return i
}

// SkipSpace returns the index of the first byte at or after i that is not
// JSON whitespace (space, tab, CR, LF); len(b) when there is none, and i
// itself when i is past the end.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// Trim returns b without the JSON whitespace around it.
func Trim(b []byte) []byte {
	i, j := SkipSpace(b, 0), len(b)
	for j > i && isSpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// skipString returns the index just past the string that starts at b[i]
// (b[i] is its opening quote).
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

// Kinds of byte, for the walk over an object or array.
const (
	kindOther = iota
	kindQuote
	kindOpen
	kindClose
	kindSpace
)

// kind classifies bytes for SkipValue. Read-only.
var kind = [256]uint8{
	'"': kindQuote,
	'{': kindOpen, '[': kindOpen,
	'}': kindClose, ']': kindClose,
	' ': kindSpace, '\t': kindSpace, '\r': kindSpace, '\n': kindSpace,
}

// SkipValue returns the index just past the value that starts at b[i], and
// whether it holds whitespace outside its strings (compacting it would
// change it; a string, number or literal never does).
func SkipValue(b []byte, i int) (end int, spaced bool) {
	if i >= len(b) {
		return len(b), false
	}
	switch b[i] {
	case '"':
		return skipString(b, i), false
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch kind[b[i]] {
			case kindOther:
			case kindQuote:
				i = skipString(b, i) - 1
			case kindOpen:
				depth++
			case kindClose:
				depth--
				if depth == 0 {
					return i + 1, spaced
				}
			case kindSpace:
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
		return len(b), false
	}
}

// KeyEquals reports whether the JSON string quoted (quotes included, as a
// document writes a member's name) decodes to name. Only a string written
// with escapes, or holding invalid UTF-8, is decoded.
func KeyEquals(quoted []byte, name string) bool {
	if len(quoted) < 2 {
		return false
	}
	inner := quoted[1 : len(quoted)-1]
	if string(inner) == name && utf8.ValidString(name) && strings.IndexByte(name, '\\') < 0 {
		return true // valid, without escapes: nothing to decode
	}
	// Written plainly (no escape, nothing but ASCII), a name decodes to its
	// own bytes, which differ from name: the common case, checked in one
	// short loop.
	plain := true
	for _, c := range inner {
		if c == '\\' || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if plain || bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return false
	}
	s, ok := Unquote(quoted)
	return ok && s == name
}

// Unquote returns the text of the JSON string raw, as json.Unmarshal
// decodes it (escapes resolved, invalid UTF-8 replaced by U+FFFD); false
// when raw is not a string.
func Unquote(raw []byte) (string, bool) {
	raw = Trim(raw)
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// StringOrNumber returns the text a JSON string or number stands for: a
// string's decoded text (see Unquote), a number's text exactly as written
// ("1.5e3" stays "1.5e3"). false for anything else: an object, an array,
// true, false or null.
func StringOrNumber(raw []byte) (string, bool) {
	raw = Trim(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch c := raw[0]; {
	case c == '"':
		return Unquote(raw)
	case c == '-' || (c >= '0' && c <= '9'):
		return string(raw), true
	}
	return "", false
}
