package proxy

import (
	"context"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// drfMapping maps proxytest.DRFAPI: the API chooses every todo's id.
// updateTodo sends the id in its body too, to show its JSON type.
const drfMapping = `{
  "mutators": {
    "createTodo": {"method": "POST", "path": "/api/todos/", "body": {"title": "{args.title}"},
                   "serverID": {"arg": "id", "field": "%s"}},
    "updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}/",
                   "body": {"id": "{args.id}", "title": "{args.title?}", "done": "{args.done?}"}},
    "deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}/"}
  },
  "clientView": [{"path": "/api/todos/", "key": "todo/{id}"}]
}`

// newDRFHarness is a harness whose sidecars front a DRF-shaped API, with
// createTodo's serverID reading the answer's field.
func newDRFHarness(t *testing.T, api *proxytest.DRFAPI, field string) *harness {
	t.Helper()
	file := filepath.Join(t.TempDir(), "drf-mapping.json")
	if err := os.WriteFile(file, []byte(strings.Replace(drfMapping, "%s", field, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_MAPPING_FILE": file,
		"SIDECAR_AUTH_PATH": "/api/me/"})
}

func todoMut(client string, id int64, name string, args map[string]any) mut {
	return mut{client, id, name, args}
}

// scenario is the issue's: one push creates two todos as tmp-1 and tmp-2,
// edits tmp-1 and deletes tmp-2; a second push, before any pull, renames
// tmp-1 (the client sends its pending mutations again, and the new one).
var (
	firstPush = []mut{
		todoMut("c1", 1, "createTodo", map[string]any{"id": "tmp-1", "title": "milk"}),
		todoMut("c1", 2, "createTodo", map[string]any{"id": "tmp-2", "title": "bread"}),
		todoMut("c1", 3, "updateTodo", map[string]any{"id": "tmp-1", "done": true}),
		todoMut("c1", 4, "deleteTodo", map[string]any{"id": "tmp-2"}),
	}
	secondPush = append(slices.Clone(firstPush), todoMut("c1", 5, "updateTodo", map[string]any{"id": "tmp-1", "title": "oat milk"}))
)

// TestServerIDs: the scenario against a DRF-shaped API whose ids
// are integers (or strings), the second push served by the same replica,
// another one on the same schema, or one started after the first stopped.
// Every call after a create carries the API's id, in the path and, with
// its JSON type, in the body; the API ends with exactly one todo, renamed
// and edited, and the pull shows it under the API's id. Before (no
// serverID): the edit and the delete went to /api/todos/tmp-1/ and
// /api/todos/tmp-2/, were answered 404 and consumed, and the API kept
// both todos, unedited.
func TestServerIDs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		stringIDs bool
		second    string // who serves the second push: same, replica, restarted
	}{
		{"integer ids, same push and a later one", false, "same"},
		{"string ids, same push and a later one", true, "same"},
		// The record is in the shared schema, not in a replica's memory.
		{"another replica serves the later push", false, "replica"},
		{"a restarted sidecar serves the later push", false, "restarted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := proxytest.NewDRFAPI(t)
			api.StringIDs = tc.stringIDs
			var mu sync.Mutex
			var patches []string // the bodies of PATCH calls
			api.SetHook(func(_ http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodPatch {
					b, _ := io.ReadAll(r.Body)
					mu.Lock()
					patches = append(patches, string(b))
					mu.Unlock()
				}
				return false
			})
			h := newDRFHarness(t, api, "id")
			a := h.start()
			id1 := api.NextID()
			id2 := strings.Replace(id1, "17", "18", 1)
			if r := a.push(t, "alice", "g", firstPush...); r.status != http.StatusOK || r.json["applied"] != 4.0 {
				t.Fatalf("first push = %d %s, want 4 applied", r.status, r.raw)
			}
			b := a
			switch tc.second {
			case "replica":
				b = h.start()
			case "restarted":
				a.srv.Close()
				a.pool.Close()
				b = h.start()
			}
			if r := b.push(t, "alice", "g", secondPush...); r.status != http.StatusOK || r.json["applied"] != 1.0 || r.json["duplicate"] != 4.0 {
				t.Fatalf("second push = %d %s, want 1 applied and 4 duplicates", r.status, r.raw)
			}
			wantCalls := []string{"POST /api/todos/ 201", "POST /api/todos/ 201", "PATCH /api/todos/" + id1 + "/ 200",
				"DELETE /api/todos/" + id2 + "/ 204", "PATCH /api/todos/" + id1 + "/ 200"}
			if got := api.Calls(); !slices.Equal(got, wantCalls) {
				t.Errorf("the API's calls:\n%q\nwant\n%q", got, wantCalls)
			}
			jsonID := id1 // the id with its JSON type: a number stays a number
			if tc.stringIDs {
				jsonID = `"` + id1 + `"`
			}
			wantTodo := `{"done":true,"id":` + jsonID + `,"title":"oat milk"}`
			if got := api.Todos("alice"); !maps.Equal(got, map[string]string{id1: wantTodo}) {
				t.Errorf("the API holds %v, want only %s", got, wantTodo)
			}
			wantPatches := []string{`{"done":true,"id":` + jsonID + `}`, `{"id":` + jsonID + `,"title":"oat milk"}`}
			mu.Lock()
			if !slices.Equal(patches, wantPatches) {
				t.Errorf("PATCH bodies %q, want %q", patches, wantPatches)
			}
			mu.Unlock()
			r, pr := b.pull(t, "alice", "g", nil)
			if r.status != http.StatusOK || !slices.Equal(pr.keys(t), []string{"todo/" + id1}) || pr.LastMutationIDChanges["c1"] != 5 {
				t.Fatalf("pull = %d %s; want todo/%s alone and c1 at 5", r.status, r.raw, id1)
			}
			if got := string(pr.Patch[1].Value); got != wantTodo {
				t.Errorf("the view's todo = %s, want %s", got, wantTodo)
			}
		})
	}
}

// TestServerIDMissingFromAnswer: a create whose answer lacks the field the
// mapping names (here data.id, a Directus habit, against a DRF answer) is
// applied all the same, and loudly: counted in mapping_errors_total and
// logged at error level with the reason. Nothing is recorded, and a later
// mutation goes out with the temporary id (and is answered 404).
func TestServerIDMissingFromAnswer(t *testing.T) {
	t.Parallel()
	api := proxytest.NewDRFAPI(t)
	h := newDRFHarness(t, api, "data.id")
	a := h.start()
	r := a.push(t, "alice", "g", todoMut("c1", 1, "createTodo", map[string]any{"id": "tmp-1", "title": "milk"}),
		todoMut("c1", 2, "updateTodo", map[string]any{"id": "tmp-1", "done": true}))
	if r.status != http.StatusOK || r.json["applied"] != 1.0 || r.json["rejected"] != 1.0 {
		t.Fatalf("push = %d %s; want the create applied, the update rejected", r.status, r.raw)
	}
	if got, want := api.Calls(), []string{"POST /api/todos/ 201", "PATCH /api/todos/tmp-1/ 404"}; !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if n := testutil.ToFloat64(a.sc.core.Metrics.MappingErrors.WithLabelValues("mutation")); n != 2 {
		t.Errorf(`mapping_errors_total{kind="mutation"} = %v, want 2 (the answer without its id, the 404)`, n)
	}
	if !strings.Contains(h.logs.String(), `"level":"ERROR","msg":"likely mapping error","kind":"mutation","mapped":"createTodo","method":"POST","path":"/api/todos/","status":201,"location":"","reason":"the answer has no field data.id (serverID.field); later mutations naming its temporary id go out with it"`) {
		t.Errorf("no error log naming the missing field:\n%s", h.logs.String())
	}
	if n := h.serverIDRows(t, a); len(n) != 0 {
		t.Errorf("recorded %v, want nothing", n)
	}
	if l := h.lmid(t, a.pool, "c1"); l != 2 {
		t.Errorf("lastMutationID = %d, want 2", l)
	}
}

// TestServerIDRetriedCreate: a create is recorded once. The transaction
// that sent it dies before its commit (the API answered the create): the
// client's retry sends it again with the same key, the API replays its
// answer, and the one record is made then, so the edit after it goes to
// the same todo. A client that sends a committed push
// again makes no call. A temporary id used again by a later create keeps
// its first record (logged).
func TestServerIDRetriedCreate(t *testing.T) {
	t.Parallel()
	api := proxytest.NewDRFAPI(t)
	h := newDRFHarness(t, api, "id")
	a := h.start()
	var once sync.Once
	api.SetHook(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost {
			return false
		}
		once.Do(func() {
			// The API answers the create; the transaction that sent it
			// dies before its commit.
			var n int
			err := a.pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE state = 'idle in transaction' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()`, h.schema).Scan(&n)
			if err != nil || n != 1 {
				t.Errorf("terminated %d transactions (%v), want 1", n, err)
			}
		})
		return false
	})
	push := []mut{
		todoMut("c1", 1, "createTodo", map[string]any{"id": "tmp-1", "title": "milk"}),
		todoMut("c1", 2, "updateTodo", map[string]any{"id": "tmp-1", "done": true}),
	}
	if r := a.push(t, "alice", "g", push...); r.status == http.StatusOK && r.str("error") == "" {
		t.Fatalf("the push whose commit was lost answered %d %s", r.status, r.raw)
	}
	if l := h.lmid(t, a.pool, "c1"); l != 0 {
		t.Fatalf("lastMutationID %d after the lost commit, want 0", l)
	}
	for range 2 { // the retry, then the same push once more: duplicates
		if r := a.push(t, "alice", "g", push...); r.status != http.StatusOK {
			t.Fatalf("retry = %d %s", r.status, r.raw)
		}
	}
	// A later create reuses tmp-1: the API makes todo 18; tmp-1 stays 17.
	reuse := []mut{todoMut("c1", 3, "createTodo", map[string]any{"id": "tmp-1", "title": "again"}),
		todoMut("c1", 4, "updateTodo", map[string]any{"id": "tmp-1", "title": "milk!"})}
	if r := a.push(t, "alice", "g", reuse...); r.status != http.StatusOK || r.json["applied"] != 2.0 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	want := []string{"POST /api/todos/ 201", // sent, commit lost
		"POST /api/todos/ 201", "PATCH /api/todos/17/ 200", // the retry (replayed by the API), the edit
		"POST /api/todos/ 201", "PATCH /api/todos/17/ 200"}
	// The edit may have gone out in the lost transaction too (unless its
	// batch ended after the create, at batchWindow), with the id the
	// create's answer held.
	wantToo := slices.Insert(slices.Clone(want), 1, "PATCH /api/todos/17/ 200")
	if got := api.Calls(); !slices.Equal(got, want) && !slices.Equal(got, wantToo) {
		t.Errorf("calls %q, want %q (or the edit sent before the loss too)", got, want)
	}
	wantTodos := map[string]string{"17": `{"done":true,"id":17,"title":"milk!"}`, "18": `{"done":false,"id":18,"title":"again"}`}
	if got := api.Todos("alice"); !maps.Equal(got, wantTodos) {
		t.Errorf("the API holds %v, want %v", got, wantTodos)
	}
	if got := h.serverIDRows(t, a); !maps.Equal(got, map[string]string{"tmp-1": "17 by c1/1"}) {
		t.Errorf("records %v, want tmp-1 → 17 once, by the first create", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, `"msg":"temporary id already recorded for another server id; the first stands"`) ||
		!strings.Contains(logs, `"mutator":"createTodo","mutation_id":3,"temp_id":"tmp-1","server_id":"17","answered":"18"`) {
		t.Errorf("the reused temporary id was not logged:\n%s", h.logs.String())
	}
}

// serverIDRows reads the schema's server id records: temporary id →
// "server id by client/mutation".
func (h *harness) serverIDRows(t *testing.T, inst *instance) map[string]string {
	t.Helper()
	rows, err := inst.pool.Query(context.Background(), `SELECT convert_from(temp_id, 'UTF8'), convert_from(server_id, 'UTF8') || ' by ' || client_id || '/' || mutation_id
		FROM `+pgx.Identifier{h.schema}.Sanitize()+`.server_ids`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var k, v string
	if _, err := pgx.ForEachRow(rows, []any{&k, &v}, func() error { out[k] = v; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}
