package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestReviewServerIDInArgsBody: a mutator without a body template sends
// the mutation's args as its body; a temporary id the group has recorded
// a server id for must go out as the server's id there too (here a todo
// created in a list created under a temporary id, in the same push and
// in a later one). Before the fix only placeholders were rendered again,
// so the args went out as the client wrote them, naming the temporary
// id: the API refused the todo (a business error, consumed) or, worse,
// stored the temporary id.
func TestReviewServerIDInArgsBody(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var todos []string // the bodies of POST /api/todos
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/me":
			_, _ = fmt.Fprintf(w, `{"id":"alice"}`)
		case r.Method == http.MethodPost && r.URL.Path == "/api/lists":
			w.WriteHeader(http.StatusCreated)
			_, _ = fmt.Fprint(w, `{"id": 7}`)
		case r.Method == http.MethodPost && r.URL.Path == "/api/todos":
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			todos = append(todos, string(b))
			mu.Unlock()
			w.WriteHeader(http.StatusCreated)
			_, _ = fmt.Fprint(w, `{}`)
		default:
			_, _ = fmt.Fprint(w, `[]`)
		}
	}))
	t.Cleanup(api.Close)
	sc := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": writeFile(t, `{
		"mutators": {
			"createList": {"method": "POST", "path": "/api/lists", "serverID": {"arg": "id", "field": "id"}},
			"createTodo": {"method": "POST", "path": "/api/todos"}
		},
		"clientView": [{"path": "/api/lists", "key": "list/{id}"}]}`)}).start()
	r := sc.push(t, "alice", "g",
		mut{"c", 1, "createList", map[string]any{"id": "tmp-L", "name": "groceries"}},
		mut{"c", 2, "createTodo", map[string]any{"id": "t1", "listID": "tmp-L", "tags": []any{"tmp-L", "x"}}})
	if r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if r := sc.push(t, "alice", "g", mut{"c", 3, "createTodo", map[string]any{"id": "t2", "listID": "tmp-L", "note": "tmp-L!"}}); r.status != http.StatusOK {
		t.Fatalf("second push = %d %s", r.status, r.raw)
	}
	want := []map[string]any{
		{"id": "t1", "listID": 7.0, "tags": []any{7.0, "x"}},
		{"id": "t2", "listID": 7.0, "note": "tmp-L!"}, // only whole values
	}
	mu.Lock()
	defer mu.Unlock()
	if len(todos) != len(want) {
		t.Fatalf("the API got %d todos: %q", len(todos), todos)
	}
	for i, body := range todos {
		var got map[string]any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("todo body %q: %v", body, err)
		}
		if g, w := fmt.Sprint(got), fmt.Sprint(want[i]); g != w {
			t.Errorf("todo %d went out as %s, want %s", i+1, g, w)
		}
	}
}
