package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzDecodePush: any body either decodes to a valid PushRequest or yields
// a 400/413 with a message; it never panics.
func FuzzDecodePush(f *testing.F) {
	for _, s := range []string{
		`{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"clientID":"c","name":"m","args":{"a":[1,2]},"timestamp":1.5}]}`,
		`{"pushVersion":0,"clientID":"c","mutations":[]}`,
		`{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":-1}]}`,
		`{"pushVersion":1e400}`, `[]`, `null`, `{"mutations":[null]}`, "\xff\xfe", `{"pushVersion":1} {}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/replicache/push", strings.NewReader(body))
		var req pushRequest
		herr := decodeBody(w, r, 1<<16, &req)
		if herr == nil && req.PushVersion != nil && *req.PushVersion == 1 {
			herr = req.validate()
			if herr == nil {
				for _, m := range req.Mutations {
					if m.ID < 1 || m.ClientID == "" || m.Name == "" || len(m.ClientID) > maxIDLen {
						t.Fatalf("validated a bad mutation: %+v", m)
					}
				}
			}
		}
		if herr != nil {
			if herr.Status != 400 && herr.Status != 413 {
				t.Fatalf("status %d for bad input", herr.Status)
			}
			if herr.Message == "" {
				t.Fatal("error without a message")
			}
			writeError(w, herr)
			if !json.Valid(w.Body.Bytes()) {
				t.Fatalf("error body is not JSON: %s", w.Body)
			}
		}
	})
}

// FuzzPullCookie: any cookie is either refused or ordered, and the next
// cookie is strictly greater than it.
func FuzzPullCookie(f *testing.F) {
	for _, s := range []string{`null`, `7`, `"12"`, `{"order":5}`, `{"order":"x"}`, `-1`, `1e300`, `{"order":{"order":1}}`, `[]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cookie string) {
		order, err := cookieOrder(json.RawMessage(cookie))
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
