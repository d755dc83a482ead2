package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestCheckServerIDField: `check --write` sends a create whose mutator
// declares serverID and says when the answer lacks the id at
// serverID.field, naming the field; a field that holds it is no problem.
func TestCheckServerIDField(t *testing.T) {
	api := proxytest.NewDRFAPI(t)
	for _, tc := range []struct {
		field string
		code  int
		want  string
	}{
		{"id", 0, "No problems"},
		{"data.id", 1, `✗ createTodo: applied (201), but the id the API chose is unknown: the answer has no field data.id (serverID.field); later mutations naming the temporary id would go out with it`},
	} {
		t.Run(tc.field, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "mapping.json")
			if err := os.WriteFile(file, []byte(`{"mutators": {"createTodo": {"method": "POST", "path": "/api/todos/", "body": {"title": "{args.title}"},
				"serverID": {"arg": "id", "field": "`+tc.field+`"}}},
				"clientView": [{"path": "/api/todos/", "key": "todo/{id}"}]}`), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_AUTH_PATH": "/api/me/", "SIDECAR_MAPPING_FILE": file}
			code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice", "--write", "--example", `createTodo={"id":"tmp-1","title":"from check"}`)
			if code != tc.code || !strings.Contains(out, tc.want) || strings.Contains(out, "✗") != (tc.code != 0) {
				t.Errorf("exit %d, want %d and %s\n%s%s", code, tc.code, tc.want, out, errOut)
			}
		})
	}
}

// TestCheckServerIDExamples: `check --write` runs its examples as one client
// group's pushes: an update and a delete naming a create's temporary id go
// out with the id the API chose, as the server sends them, and the create's
// row names that id.
func TestCheckServerIDExamples(t *testing.T) {
	api := proxytest.NewDRFAPI(t)
	file := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(file, []byte(`{"mutators": {
		"createTodo": {"method": "POST", "path": "/api/todos/", "body": {"title": "{args.title}"}, "serverID": {"arg": "id", "field": "id"}},
		"updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}/", "body": {"done": "{args.done}"}},
		"deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}/"}},
		"clientView": [{"path": "/api/todos/", "key": "todo/{id}"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_AUTH_PATH": "/api/me/", "SIDECAR_MAPPING_FILE": file}
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice", "--write",
		"--example", `createTodo={"id":"tmp-1","title":"from check"}`,
		"--example", `updateTodo={"id":"tmp-1","done":true}`,
		"--example", `deleteTodo={"id":"tmp-1"}`)
	if code != 0 || strings.Contains(out, "✗") {
		t.Fatalf("exit %d, want 0 and no problem\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"applied (201), the API's id 17", "/api/todos/17/  applied (200)", "/api/todos/17/  applied (204)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q\n%s", want, out)
		}
	}
	if got, want := strings.Join(api.Calls(), ", "), "POST /api/todos/ 201, PATCH /api/todos/17/ 200, DELETE /api/todos/17/ 204"; got != want {
		t.Errorf("the API saw %s, want %s", got, want)
	}
}

// TestCheckMutatorAnswersSayWhatToFix: a mutator path without DRF's
// trailing slash is named with the redirect's target, and a 5xx is quoted
// (Django in DEBUG answers a POST without the slash with a 500 whose text
// says so).
func TestCheckMutatorAnswersSayWhatToFix(t *testing.T) {
	api := proxytest.NewDRFAPI(t)
	api.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || strings.HasSuffix(r.URL.Path, "/") {
			return false
		}
		http.Error(w, "RuntimeError: You called this URL via POST, but the URL doesn't end in a slash", http.StatusInternalServerError)
		return true
	})
	file := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(file, []byte(`{"mutators": {
		"createTodo": {"method": "POST", "path": "/api/todos"},
		"deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}"}},
		"clientView": [{"path": "/api/todos/", "key": "todo/{id}"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_AUTH_PATH": "/api/me/", "SIDECAR_MAPPING_FILE": file}
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice", "--write",
		"--example", `createTodo={"title":"x"}`, "--example", `deleteTodo={"id":"17"}`)
	for _, want := range []string{
		`✗ createTodo: not applied: upstream answered 500 (RuntimeError: You called this URL via POST, but the URL doesn't end in a slash)`,
		`✗ deleteTodo: answered 301, a redirect to /api/todos/17/: the sidecar never follows redirects, so the mutation would wait for a fixed mapping; write the path it names (a trailing slash?)`,
	} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit %d, want 1 and %s\n%s%s", code, want, out, errOut)
		}
	}
}
