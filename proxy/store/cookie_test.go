package store

import (
	"encoding/json"
	"testing"
)

func TestParseCookieOrder(t *testing.T) {
	for in, want := range map[string]int64{`null`: 0, ``: 0, `3`: 3, `3.9`: 3, `"12"`: 12, `{"order":5}`: 5, `{"order":"6"}`: 6} {
		got, err := ParseCookieOrder(json.RawMessage(in))
		if err != nil || got != want {
			t.Errorf("ParseCookieOrder(%s) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{`true`, `[1]`, `{"order":{}}`, `"x"`, `-1`, `1e20`, `{"order":null}`} {
		if _, err := ParseCookieOrder(json.RawMessage(in)); err == nil {
			t.Errorf("ParseCookieOrder(%s) accepted", in)
		}
	}
}

// FuzzPullCookie: any cookie is either refused or ordered, and the next
// cookie is strictly greater than it.
func FuzzPullCookie(f *testing.F) {
	for _, s := range []string{`null`, `7`, `"12"`, `{"order":5}`, `{"order":"x"}`, `-1`, `1e300`, `{"order":{"order":1}}`, `[]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cookie string) {
		order, err := ParseCookieOrder(json.RawMessage(cookie))
		if err != nil {
			return
		}
		if order < 0 || order > maxCookieOrder {
			t.Fatalf("cookie %q ordered as %d, out of range", cookie, order)
		}
		next := max(order, 0) + 1
		if next <= order {
			t.Fatalf("next cookie %d not above %d", next, order)
		}
	})
}

func TestSafeText(t *testing.T) {
	for in, want := range map[string]string{
		"plain":         "plain",
		"nul\x00inside": "nul\uFFFDinside",
		"bad \xff utf8": "bad \uFFFD utf8",
		"éééé":          "éé", // cut to 5 bytes on a rune boundary: 4
		"":              "",
	} {
		max := 64
		if in == "éééé" {
			max = 5
		}
		if got := safeText(in, max); got != want {
			t.Errorf("safeText(%q) = %q, want %q", in, got, want)
		}
	}
}
