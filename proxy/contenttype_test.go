package proxy

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestPushSendsTheMappingsContentType: through the sidecar, a mutator's
// mapped Content-Type and a form body reach the API as the mapping says,
// byte for byte, whatever Content-Type the client's push carried.
func TestPushSendsTheMappingsContentType(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(file, []byte(`{
	  "mutators": {
	    "renameArticle": {"method": "PATCH", "path": "/jsonapi/articles/{args.id}",
	                      "headers": {"Content-Type": "application/vnd.api+json"},
	                      "body": {"data": {"type": "articles", "id": "{args.id}", "attributes": {"title": "{args.title}"}}}},
	    "createPost": {"method": "POST", "path": "/forms/posts", "bodyFormat": "form",
	                   "body": {"post[title]": "{args.title}", "post[draft]": "{args.draft}", "post[rank]": "{args.rank}", "post[note]": "{args.note}"}}
	  },
	  "clientView": [{"path": "/api/me", "key": "me"}]
	}`), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]string{"SIDECAR_MAPPING_FILE": file, "SIDECAR_FORWARD_HEADERS": "Authorization,Content-Type"})
	var mu sync.Mutex
	got := map[string]string{}
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/jsonapi/") && !strings.HasPrefix(r.URL.Path, "/forms/") {
			return false
		}
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got[r.Method+" "+r.URL.Path] = r.Header.Get("Content-Type") + "\n" + string(b)
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
		return true
	})
	sc := h.start()
	r := sc.push(t, "alice", "g",
		mut{"c1", 1, "renameArticle", map[string]any{"id": "1", "title": "Hi & bye"}},
		mut{"c1", 2, "createPost", map[string]any{"title": "Hi & bye", "draft": false, "rank": 2.50, "note": nil}})
	if r.status != http.StatusOK || r.json["applied"] != 2.0 {
		t.Fatalf("push = %d %s, want 2 applied", r.status, r.raw)
	}
	want := map[string]string{
		"PATCH /jsonapi/articles/1": "application/vnd.api+json\n" + `{"data":{"attributes":{"title":"Hi \u0026 bye"},"id":"1","type":"articles"}}`,
		"POST /forms/posts":         "application/x-www-form-urlencoded\n" + `post%5Bdraft%5D=false&post%5Bnote%5D=&post%5Brank%5D=2.5&post%5Btitle%5D=Hi+%26+bye`,
	}
	mu.Lock()
	defer mu.Unlock()
	for call, w := range want {
		if got[call] != w {
			t.Errorf("%s received\n%s\nwant\n%s", call, got[call], w)
		}
	}
}
