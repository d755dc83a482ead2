package push

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/body"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
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
	f.Fuzz(func(t *testing.T, raw string) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/replicache/push", strings.NewReader(raw))
		var req pushRequest
		herr := body.Decode(w, r, 1<<16, nil, time.Time{}, &req)
		if herr == nil && req.PushVersion != nil && *req.PushVersion == 1 {
			herr = req.Validate()
			if herr == nil {
				for _, m := range req.Mutations {
					if m.ID < 1 || m.ClientID == "" || m.Name == "" || len(m.ClientID) > engine.MaxIDLen {
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
			problem.Write(w, herr)
			if !json.Valid(w.Body.Bytes()) {
				t.Fatalf("error body is not JSON: %s", w.Body)
			}
		}
	})
}
