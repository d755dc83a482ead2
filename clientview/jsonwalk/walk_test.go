package jsonwalk

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestLookup(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 500) + `"bottom"` + strings.Repeat("}", 500)
	deepPath := strings.TrimSuffix(strings.Repeat("a.", 500), ".")
	tests := []struct {
		name    string
		doc     string
		path    string // dotted; "" is the document itself
		want    string // the raw value found, as the document wrote it
		present bool
		err     error
	}{
		// The auth endpoint's usual answers.
		{"top-level member", `{"id":"u1","name":"Ann"}`, "id", `"u1"`, true, nil},
		{"nested member", `{"user":{"id":42}}`, "user.id", `42`, true, nil},
		{"array element by index", `{"items":[{"id":"a"},{"id":"b"}]}`, "items.1.id", `"b"`, true, nil},
		{"array at the top", `[[1,2],[3,[4,5]]]`, "1.1.0", `4`, true, nil},
		{"the document itself", ` {"a":1} `, "", `{"a":1}`, true, nil},
		// Whitespace around values is not part of them; inside, it stays.
		{"spaced document", " {\n\t\"a\" : [ 1 , { \"b\" : [ true ] } ] \r\n} ", "a.1", `{ "b" : [ true ] }`, true, nil},
		// Numbers are found as written: no float64 rounding, no change of
		// notation.
		{"number with exponent", `{"n":-1.5E+300,"m":2}`, "n", `-1.5E+300`, true, nil},
		{"number beyond float64", `{"n":1e400}`, "n", `1e400`, true, nil},
		{"big integer", `{"n":12345678901234567890}`, "n", `12345678901234567890`, true, nil},
		// A name is compared as decoded: escapes in the document or in the
		// name, and the last of repeated names, as encoding/json decides.
		{"escaped member name in the document", `{"\u0069d":"x"}`, "id", `"x"`, true, nil},
		{"escaped quote and backslash in a name", `{"a\"b\\c":1}`, `a"b\c`, `1`, true, nil},
		{"a name spelled like an escape", `{"\\u0069d":1,"id":2}`, `\u0069d`, `1`, true, nil},
		{"repeated name: the last wins", `{"a":1,"b":0,"a":{"c":3}}`, "a.c", `3`, true, nil},
		{"non-ASCII name", `{"é":{"ü":"ok"}}`, "é.ü", `"ok"`, true, nil},
		// Strings holding JSON's structural characters do not confuse the
		// walk.
		{"brackets and quotes inside strings", `{"a":"}]\"[{","b":{"c":"\\"},"d":5}`, "d", `5`, true, nil},
		{"deep nesting", deep, deepPath, `"bottom"`, true, nil},
		// Absent: a missing name, an index out of range or not a
		// non-negative number, a step into a scalar.
		{"missing member", `{"a":1}`, "b", ``, false, nil},
		{"index out of range", `{"items":[1,2]}`, "items.2", ``, false, nil},
		{"index into an empty array", `[]`, "0", ``, false, nil},
		{"negative index", `[1,2]`, "-1", ``, false, nil},
		{"index that is not a number", `[1,2]`, "first", ``, false, nil},
		{"step into a string", `{"a":"text"}`, "a.b", ``, false, nil},
		{"step into a number", `{"a":1}`, "a.0", ``, false, nil},
		{"step into null", `{"a":null}`, "a.b", ``, false, nil},
		{"member of an array", `[{"a":1}]`, "a", ``, false, nil},
		// null is a value: present.
		{"null is present", `{"a":null}`, "a", `null`, true, nil},
		// strconv.Atoi reads the index, as the decoded walks did: "01" and
		// "+1" are element 1.
		{"index with a leading zero", `[0,1]`, "01", `1`, true, nil},
		{"index with a plus sign", `[0,1]`, "+1", `1`, true, nil},
		// Malformed documents are an error, never a value or a panic.
		{"truncated document", `{"id":"u1"`, "id", ``, false, ErrSyntax},
		{"trailing garbage", `{"id":"u1"} x`, "id", ``, false, ErrSyntax},
		{"two documents", `{"id":1}{"id":2}`, "id", ``, false, ErrSyntax},
		{"unquoted name", `{id:1}`, "id", ``, false, ErrSyntax},
		{"control character in a string", "{\"id\":\"a\nb\"}", "id", ``, false, ErrSyntax},
		{"empty document", ``, "", ``, false, ErrSyntax},
		{"nesting beyond encoding/json's limit", strings.Repeat("[", 10001) + strings.Repeat("]", 10001), "0", ``, false, ErrSyntax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var path []string
			if tc.path != "" {
				path = strings.Split(tc.path, ".")
			}
			got, present, err := Lookup([]byte(tc.doc), path)
			if !errors.Is(err, tc.err) || present != tc.present || string(got) != tc.want {
				t.Fatalf("Lookup(%.60s, %q) = %s, %v, %v; want %s, %v, %v", tc.doc, tc.path, got, present, err, tc.want, tc.present, tc.err)
			}
			if tc.err != nil {
				return
			}
			// Find agrees on a valid document, and the value is a window
			// on the document, not a copy.
			found, ok := Find([]byte(tc.doc), path)
			if ok != present || string(found) != string(got) {
				t.Fatalf("Find = %s, %v; Lookup %s, %v", found, ok, got, present)
			}
		})
	}
}

// TestFoundValueSharesTheDocument: a found value is a sub-slice of the
// document (the contract says so; callers rely on it costing no copy).
func TestFoundValueSharesTheDocument(t *testing.T) {
	doc := []byte(`{"a":[1,{"b":"x"}]}`)
	v, ok := Find(doc, []string{"a", "1", "b"})
	if !ok {
		t.Fatal("not found")
	}
	doc[bytes.Index(doc, []byte(`"x"`))+1] = 'y'
	if string(v) != `"y"` {
		t.Errorf("value %s does not see the document's change: a copy", v)
	}
}

func TestStringOrNumber(t *testing.T) {
	for _, tc := range []struct {
		name, raw, want string
		ok              bool
	}{
		{"plain string", `"u1"`, "u1", true},
		{"escapes decoded", `"a\"b\\c\u00e9\n"`, "a\"b\\cé\n", true},
		{"surrogate pair decoded", `"\ud83d\ude00"`, "😀", true},
		// As json.Unmarshal: a lone surrogate and invalid UTF-8 read as
		// U+FFFD.
		{"lone surrogate", `"\ud800"`, "\ufffd", true},
		{"invalid UTF-8", "\"a\xffb\"", "a\ufffdb", true},
		{"empty string", `""`, "", true},
		{"integer as written", `42`, "42", true},
		{"negative with exponent as written", `-1.50e+03`, "-1.50e+03", true},
		{"number beyond float64 as written", `1e400`, "1e400", true},
		{"whitespace around", " \t\"x\"\n", "x", true},
		{"true is not a string or number", `true`, "", false},
		{"false", `false`, "", false},
		{"null", `null`, "", false},
		{"object", `{"a":1}`, "", false},
		{"array", `["a"]`, "", false},
		{"nothing", ``, "", false},
		// Not JSON at all: no panic, no text.
		{"lone quote", `"`, "", false},
		{"unterminated string", `"abc`, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := StringOrNumber([]byte(tc.raw))
			if got != tc.want || ok != tc.ok {
				t.Errorf("StringOrNumber(%q) = %q, %v; want %q, %v", tc.raw, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestKeyEquals: a quoted name matches exactly what it decodes to, never
// its raw spelling when that differs.
func TestKeyEquals(t *testing.T) {
	for _, tc := range []struct {
		name, quoted, to string
		want             bool
	}{
		{"plain", `"id"`, "id", true},
		{"different", `"id"`, "ids", false},
		{"escaped letter", `"\u0069d"`, "id", true},
		{"escape's raw spelling", `"\u0069d"`, `\u0069d`, false},
		{"one backslash", `"\\"`, `\`, true},
		{"two backslashes spelled", `"\\"`, `\\`, false},
		{"invalid UTF-8 reads as U+FFFD", "\"\xff\"", "\ufffd", true},
		{"invalid UTF-8 not its raw bytes", "\"\xff\"", "\xff", false},
		{"empty name", `""`, "", true},
		{"too short to be quoted", `"`, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := KeyEquals([]byte(tc.quoted), tc.to); got != tc.want {
				t.Errorf("KeyEquals(%q, %q) = %v, want %v", tc.quoted, tc.to, got, tc.want)
			}
		})
	}
}

// TestElements: each element with whether compacting it would change it;
// the walk stops where the caller does.
func TestElements(t *testing.T) {
	var got []string
	for v, spaced := range Elements([]byte(` [ 1 , "a b" ,{"x": [2]}, [3,4] ,{"y":"s p"}] `)) {
		got = append(got, fmt.Sprintf("%s/%v", v, spaced))
	}
	want := `1/false "a b"/false {"x": [2]}/true [3,4]/false {"y":"s p"}/false`
	if strings.Join(got, " ") != want {
		t.Errorf("elements %s\nwant     %s", strings.Join(got, " "), want)
	}
	n := 0
	for range Elements([]byte(`[1,2,3]`)) {
		n++
		break
	}
	if n != 1 {
		t.Errorf("break after the first element: %d yielded", n)
	}
	for range Elements([]byte(`{"a":1}`)) {
		t.Error("an object yielded elements")
	}
}

// TestMalformedInputIsSafe: the walking functions assume valid JSON, but
// broken input makes them return, not panic or loop.
func TestMalformedInputIsSafe(t *testing.T) {
	for _, doc := range []string{
		``, `{`, `[`, `{"`, `{"a"`, `{"a":`, `{"a":1`, `[1,`, `[}`, `[}]`, `[,]`, `[:]`, `{]`, `{"a":}`,
		`"`, `"\`, `{"\`, `[1 2 3]`, `{"a" 1 "b" 2}`, `]]]`, `}`, `{,,,}`, `[[[[`, "{\"a\":\"\\",
	} {
		t.Run(doc, func(t *testing.T) {
			if _, _, err := Lookup([]byte(doc), []string{"a"}); !errors.Is(err, ErrSyntax) {
				t.Errorf("Lookup accepted %q", doc)
			}
			exercise([]byte(doc), []string{"a", "0"})
		})
	}
}

// exercise calls every walking function on doc, for inputs that may not
// be JSON: none may panic or loop.
func exercise(doc []byte, path []string) {
	Find(doc, path)
	Member(doc, "a")
	Element(doc, 1)
	for range Elements(doc) {
	}
	for i := range len(doc) + 2 {
		SkipValue(doc, i)
		SkipSpace(doc, i)
	}
	KeyEquals(doc, "a")
	Unquote(doc)
	StringOrNumber(doc)
	Trim(doc)
}

// BenchmarkFind: a field behind 64 KiB that the path does not go into,
// the shape of a mutation's args with a large unrelated argument.
func BenchmarkFind(b *testing.B) {
	var d strings.Builder
	d.WriteString(`{"blob":[`)
	for i := 0; d.Len() < 64<<10; i++ {
		fmt.Fprintf(&d, `{"n":%d,"s":"alpha \"bravo\" charlie","a":[1,2.5e3,true,null]},`, i)
	}
	d.WriteString(`{}], "list": {"id": "L1"}, "ids": ["x", "y", "z"]}`)
	doc := []byte(d.String())
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		if v, ok := Find(doc, []string{"ids", "1"}); !ok || string(v) != `"y"` {
			b.Fatal(string(v), ok)
		}
	}
}

// BenchmarkElements: splitting a page of 1,000 items of about 110 bytes.
func BenchmarkElements(b *testing.B) {
	var d strings.Builder
	d.WriteString(`[`)
	for i := range 1000 {
		if i > 0 {
			d.WriteByte(',')
		}
		fmt.Fprintf(&d, `{"id":"t%07d","title":"alpha bravo charlie delta echo %d","done":false,"updatedAt":"2026-11-30T04:12:33.000Z"}`, i, i)
	}
	d.WriteString(`]`)
	doc := []byte(d.String())
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		n := 0
		for range Elements(doc) {
			n++
		}
		if n != 1000 {
			b.Fatal(n)
		}
	}
}

func ExampleLookup() {
	answer := []byte(`{"data": {"users": [{"id": "u1", "uid": 1.5e3}]}}`)
	raw, present, err := Lookup(answer, strings.Split("data.users.0.uid", "."))
	if err != nil || !present {
		fmt.Println("no user id")
		return
	}
	id, ok := StringOrNumber(raw)
	fmt.Println(id, ok)
	// Output: 1.5e3 true
}
