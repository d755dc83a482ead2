package main

import (
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
