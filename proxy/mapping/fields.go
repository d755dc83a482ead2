package mapping

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Unknown fields are found by walking the decoded document beside the Go
// types it decodes into (their json tags), so every one is reported with
// its place and a likely name, in JSON and YAML alike, and a field added
// to a mutator or source type is known here without a list to keep.

// rawMessage is the type of free-form JSON (a mutator's body template, a
// changes overlap): nothing inside it is a mapping field.
var rawMessage = reflect.TypeFor[json.RawMessage]()

// unknownFields returns one error per field of doc (the mapping file,
// decoded into any) that the mapping's types do not have, in file order
// for lists and name order for objects.
func unknownFields(doc any) []error {
	var errs []error
	top, ok := doc.(map[string]any)
	if !ok {
		return nil // not an object: the decoder says so
	}
	for _, k := range sortedKeys(top) {
		v := top[k]
		switch f, known := fieldOf(reflect.TypeFor[fileFormat](), k); {
		case !known:
			errs = append(errs, unknownField("", k, reflect.TypeFor[fileFormat]()))
		case f.Name == "Mutators":
			ms, _ := v.(map[string]any)
			for _, name := range sortedKeys(ms) {
				errs = append(errs, walkFields(fmt.Sprintf("mutator %q", name), "", ms[name], f.Type.Elem())...)
			}
		case f.Name == "ClientView":
			srcs, _ := v.([]any)
			for i, s := range srcs {
				place := fmt.Sprintf("clientView[%d]", i)
				if m, ok := s.(map[string]any); ok {
					if p, ok := m["path"].(string); ok {
						place += " (" + p + ")"
					}
				}
				errs = append(errs, walkFields(place, "", s, f.Type.Elem())...)
			}
		default:
			errs = append(errs, walkFields("", k, v, f.Type)...)
		}
	}
	return errs
}

// walkFields checks v against type t; place names the mutator or source,
// within the dotted path inside it ("" at its top).
func walkFields(place, within string, v any, t reflect.Type) []error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == rawMessage {
		return nil
	}
	var errs []error
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil // a wrong type: the decoder says so
		}
		for _, k := range sortedKeys(obj) {
			f, known := fieldOf(t, k)
			if !known {
				errs = append(errs, unknownField(place, joinPath(within, k), t))
				continue
			}
			errs = append(errs, walkFields(place, joinPath(within, tagName(f)), obj[k], f.Type)...)
		}
	case reflect.Map:
		obj, _ := v.(map[string]any)
		for _, k := range sortedKeys(obj) {
			errs = append(errs, walkFields(place, joinPath(within, k), obj[k], t.Elem())...)
		}
	case reflect.Slice:
		list, _ := v.([]any)
		for i, e := range list {
			errs = append(errs, walkFields(place, fmt.Sprintf("%s[%d]", within, i), e, t.Elem())...)
		}
	}
	return errs
}

// unknownField is the error for the field at path (dotted, within place)
// that type t does not have, with the name likely meant.
func unknownField(place, path string, t reflect.Type) error {
	name, parent := path, ""
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		parent, name = path[:i], path[i+1:]
	}
	msg := fmt.Sprintf("unknown field %q", name)
	if parent != "" {
		msg += " in " + parent
	}
	var known []string
	nested := map[string]string{} // a field of a struct-typed field → that field
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || tagName(f) == "-" {
			continue
		}
		known = append(known, tagName(f))
		inner := f.Type
		for inner.Kind() == reflect.Pointer {
			inner = inner.Elem()
		}
		if inner.Kind() == reflect.Struct && inner != rawMessage {
			for j := range inner.NumField() {
				if g := inner.Field(j); g.IsExported() {
					if _, seen := nested[strings.ToLower(tagName(g))]; !seen {
						nested[strings.ToLower(tagName(g))] = tagName(f)
					}
				}
			}
		}
	}
	switch s := Suggest(name, known); {
	case s != "":
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	case nested[strings.ToLower(name)] != "":
		msg += fmt.Sprintf(" (it belongs inside %q)", nested[strings.ToLower(name)])
	default:
		msg += fmt.Sprintf(" (known here: %s)", strings.Join(known, ", "))
	}
	if place == "" {
		return fmt.Errorf("%s", msg)
	}
	return fmt.Errorf("%s: %s", place, msg)
}

// fieldOf returns the field of struct t that a JSON member named k
// decodes into, matched as encoding/json matches (exactly, else ignoring
// case).
func fieldOf(t reflect.Type, k string) (reflect.StructField, bool) {
	var folded *reflect.StructField
	for i := range t.NumField() {
		f := t.Field(i)
		name := tagName(f)
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == k {
			return f, true
		}
		if folded == nil && strings.EqualFold(name, k) {
			folded = &f
		}
	}
	if folded != nil {
		return *folded, true
	}
	return reflect.StructField{}, false
}

// tagName is the JSON name of f.
func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

func joinPath(within, k string) string {
	if within == "" {
		return k
	}
	return within + "." + k
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Suggest returns the name among known that name was most likely meant to
// be, or "" when none is close: the same but for case, '_' and '-'
// ("full_every" for "fullEvery"), else the fewest single-letter edits
// (an insertion, deletion, substitution or swap of neighbours), at most
// one for names of up to four letters, two up to eight, three beyond.
// Ties go to the earliest in known.
func Suggest(name string, known []string) string {
	n := normalize(name)
	limit := 3
	switch {
	case len(n) <= 4:
		limit = 1
	case len(n) <= 8:
		limit = 2
	}
	best, bestD := "", limit+1
	for _, k := range known {
		if k == name {
			continue
		}
		d := editDistance(n, normalize(k))
		if d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func normalize(s string) string {
	return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
}

// editDistance is the optimal string alignment distance between a and b
// (bytes): insertions, deletions, substitutions and swaps of two
// neighbours each count one.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
