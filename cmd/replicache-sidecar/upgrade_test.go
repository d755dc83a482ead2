package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// previousRelease is the sidecar binary of the previous release
// (PREVIOUS_RELEASE in the Makefile), which `make test` builds from git
// history and names in SIDECAR_PREVIOUS_BIN. Without it the test is
// skipped, like tests without a database, unless REQUIRE_PREVIOUS_RELEASE
// is set (make test sets it): then it fails.
func previousRelease(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("SIDECAR_PREVIOUS_BIN")
	if bin == "" {
		if os.Getenv("REQUIRE_PREVIOUS_RELEASE") != "" {
			t.Fatal("SIDECAR_PREVIOUS_BIN is not set: run `make test`, which builds the previous release (PREVIOUS_RELEASE) from git history")
		}
		t.Skip("the previous release's binary is not built (SIDECAR_PREVIOUS_BIN unset): skipped; `make test` builds it")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("SIDECAR_PREVIOUS_BIN: %v", err)
	}
	return bin
}

// upgradeMapping maps proxytest.LegacyAPI, as the previous release reads
// mappings too.
const upgradeMapping = `{
  "mutators": {
    "createTodo": {"method": "POST", "path": "/api/todos"},
    "updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}", "body": {"title": "{args.title?}"}},
    "deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}"}
  },
  "clientView": [
    {"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}},
    {"path": "/api/me", "key": "me"}
  ]
}`

// replClient is what a Replicache client holds: its cookie and its view,
// changed only by the patches it is answered.
type replClient struct {
	user, group, id string
	cookie          json.RawMessage
	order           float64
	view            map[string]any
	sent            int64 // mutations pushed (and acknowledged)
	lastVia         string
}

// pullAnswer is the part of a PullResponse the test reads.
type pullAnswer struct {
	Cookie json.RawMessage  `json:"cookie"`
	LMIDs  map[string]int64 `json:"lastMutationIDChanges"`
	Patch  []struct {
		Op    string          `json:"op"`
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	} `json:"patch"`
	Error string `json:"error"`
}

func postJSON(t *testing.T, url, user string, body any) (int, []byte) {
	t.Helper()
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// push sends muts (name, args) as the client's next mutations through base.
func (c *replClient) push(t *testing.T, base string, muts ...[2]any) {
	t.Helper()
	var list []map[string]any
	for _, m := range muts {
		c.sent++
		list = append(list, map[string]any{"id": c.sent, "clientID": c.id, "name": m[0], "args": m[1], "timestamp": 1})
	}
	status, body := postJSON(t, base+"/replicache/push", c.user, map[string]any{
		"pushVersion": 1, "clientGroupID": c.group, "profileID": "p", "schemaVersion": "", "mutations": list,
	})
	if status != 200 || strings.Contains(string(body), `"error"`) {
		t.Fatalf("push of %s via %s: %d %s", c.id, base, status, body)
	}
}

// pull pulls through base, applies the patch and returns whether it was a
// reset.
func (c *replClient) pull(t *testing.T, base, via string) (reset bool, lmids map[string]int64) {
	t.Helper()
	cookie := c.cookie
	if cookie == nil {
		cookie = json.RawMessage("null")
	}
	status, body := postJSON(t, base+"/replicache/pull", c.user, map[string]any{
		"pullVersion": 1, "clientGroupID": c.group, "profileID": "p", "schemaVersion": "", "cookie": cookie,
	})
	var a pullAnswer
	if status != 200 || json.Unmarshal(body, &a) != nil || a.Error != "" {
		t.Fatalf("pull of %s via %s (cookie %s from %s): %d %s", c.group, via, cookie, c.lastVia, status, body)
	}
	var ck struct {
		Order float64 `json:"order"`
	}
	if err := json.Unmarshal(a.Cookie, &ck); err != nil || ck.Order <= c.order {
		t.Fatalf("pull of %s via %s: cookie %s does not order after %v (%v)", c.group, via, a.Cookie, c.order, err)
	}
	for i, op := range a.Patch {
		switch op.Op {
		case "clear":
			if i != 0 {
				t.Fatalf("pull of %s via %s: clear at %d", c.group, via, i)
			}
			reset = true
			c.view = map[string]any{}
		case "put":
			var v any
			if err := json.Unmarshal(op.Value, &v); err != nil {
				t.Fatal(err)
			}
			c.view[op.Key] = v
		case "del":
			delete(c.view, op.Key)
		default:
			t.Fatalf("pull via %s: op %q", via, op.Op)
		}
	}
	c.cookie, c.order, c.lastVia = a.Cookie, ck.Order, via
	return reset, a.LMIDs
}

// todoModel is what the API holds per user, as the view shows it.
type todoModel map[string]map[string]any // user → key → value

func (m todoModel) view(user string) map[string]any {
	out := map[string]any{"me": map[string]any{"id": user, "name": strings.ToUpper(user)}}
	for k, v := range m[user] {
		out[k] = v
	}
	return out
}

// TestPreviousReleaseBesideThisOne is a rolling upgrade on one database: the
// previous release (PREVIOUS_RELEASE) runs and serves, this release starts
// beside it and migrates the schema, and both serve pushes and pulls of
// several client groups of two users, interleaved, including pulls of one
// group alternating between the two; then a replica of the previous
// release starts on the migrated schema (a rollback, or a restart during
// the rollout). Every pull is checked: the client's view, patched from
// what it held, equals the API's state (a diff across versions is exact,
// or the pull answers a reset), every lastMutationID is exact, cookies
// only grow; and no call took effect twice. This release caps view records
// per user at 2 of the 3 groups each user has, so the previous release
// also pulls groups whose record this one evicted.
func TestPreviousReleaseBesideThisOne(t *testing.T) {
	t.Parallel()
	prev := previousRelease(t)
	dbURL := proxytest.DatabaseURL(t)
	api := proxytest.NewLegacyAPI(t)
	mapping := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(mapping, []byte(upgradeMapping), 0o600); err != nil {
		t.Fatal(err)
	}
	schema := fmt.Sprintf("upgrade_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	env := map[string]string{
		"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping,
		"SIDECAR_DB_SCHEMA": schema, "SIDECAR_AUTH_PATH": "/api/me", "SIDECAR_LOG_LEVEL": "warn",
		"SIDECAR_MAX_VIEW_RECORDS_PER_USER": "2",
	}
	schemaVersion := func() int {
		t.Helper()
		conn, err := pgx.Connect(context.Background(), dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close(context.Background()) }()
		var v int
		if err := conn.QueryRow(context.Background(), "SELECT max(version) FROM "+pgx.Identifier{schema}.Sanitize()+".schema_migrations").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	old := spawnBinary(t, prev, env)
	old.waitReady()
	oldVersion := schemaVersion()
	if oldVersion >= store.SchemaVersion() {
		t.Fatalf("the previous release migrated to %d, this one needs %d: nothing to upgrade", oldVersion, store.SchemaVersion())
	}

	model := todoModel{}
	var clients []*replClient
	for _, user := range []string{"alice", "bob"} {
		model[user] = map[string]any{}
		for g := range 3 {
			clients = append(clients, &replClient{user: user, group: fmt.Sprintf("%s-g%d", user, g), id: fmt.Sprintf("%s-g%d-c", user, g), view: map[string]any{}})
		}
	}
	seq := 0
	// step pushes a few mutations of c through one replica and pulls c's
	// group through another, checking what the client then holds.
	type transition struct{ from, to string }
	kinds := map[transition]map[bool]int{}
	step := func(c *replClient, pushVia, pushBase, pullVia, pullBase string) {
		t.Helper()
		seq++
		todos := model[c.user]
		var muts [][2]any
		id := fmt.Sprintf("t%d", seq)
		muts = append(muts, [2]any{"createTodo", map[string]any{"id": id, "title": "new " + id}})
		todos["todo/"+id] = map[string]any{"id": id, "title": "new " + id}
		keys := make([]string, 0, len(todos))
		for k := range todos {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if seq%3 == 0 && len(keys) > 2 { // update one
			k := keys[seq%len(keys)]
			tid := strings.TrimPrefix(k, "todo/")
			muts = append(muts, [2]any{"updateTodo", map[string]any{"id": tid, "title": fmt.Sprintf("edit %d", seq)}})
			todos[k] = map[string]any{"id": tid, "title": fmt.Sprintf("edit %d", seq)}
		}
		if seq%4 == 0 && len(keys) > 3 { // delete one
			k := keys[(seq/4)%len(keys)]
			if _, ok := todos[k]; ok && k != "todo/"+id {
				muts = append(muts, [2]any{"deleteTodo", map[string]any{"id": strings.TrimPrefix(k, "todo/")}})
				delete(todos, k)
			}
		}
		c.push(t, pushBase, muts...)
		from := c.lastVia
		reset, lmids := c.pull(t, pullBase, pullVia)
		if from != "" {
			tr := transition{from, pullVia}
			if kinds[tr] == nil {
				kinds[tr] = map[bool]int{}
			}
			kinds[tr][reset]++
		}
		if want := model.view(c.user); !reflect.DeepEqual(c.view, want) {
			t.Fatalf("client of %s after a pull via %s (cookie from %s, reset %v): holds\n%v\nwant\n%v", c.group, pullVia, from, reset, c.view, want)
		}
		for _, o := range clients {
			if o.group == c.group && lmids[o.id] != o.sent {
				t.Fatalf("pull of %s via %s: lastMutationID of %s = %d, want %d", c.group, pullVia, o.id, lmids[o.id], o.sent)
			}
		}
	}

	// The previous release alone, as before the rollout: its connections
	// prepare their statements.
	for _, c := range clients {
		step(c, "old", old.public, "old", old.public)
	}
	// This release starts beside it and migrates.
	cur := startSidecar(t, env)
	if v := schemaVersion(); v != store.SchemaVersion() {
		t.Fatalf("schema at %d after this release started, want %d", v, store.SchemaVersion())
	}
	replicas := []struct {
		name string
		proc *sidecarProc
	}{{"old", old}, {"new", cur}}
	for round := range 6 {
		for i, c := range clients {
			a, b := replicas[(round+i)%2], replicas[(round+i+1)%2]
			step(c, a.name, a.proc.public, b.name, b.proc.public)
			// The same group again through the other replica: a diff of an
			// unchanged view, from a cookie the other version issued.
			c.pull(t, a.proc.public, a.name)
			if want := model.view(c.user); !reflect.DeepEqual(c.view, want) {
				t.Fatalf("client of %s after a second pull via %s: holds %v, want %v", c.group, a.name, c.view, want)
			}
		}
	}
	if resp, err := http.Get(old.admin + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("the previous release on the migrated schema is not ready: %v %v", resp, err)
	} else {
		_ = resp.Body.Close()
	}
	// A replica of the previous release starting on the migrated schema
	// (a rollback, or one restarted during the rollout) serves too.
	old.signal(syscall.SIGTERM)
	again := spawnBinary(t, prev, env)
	again.waitReady()
	replicas[0].proc = again
	for round := range 4 {
		for i, c := range clients {
			a, b := replicas[(round+i)%2], replicas[(round+i+1)%2]
			step(c, a.name, a.proc.public, b.name, b.proc.public)
		}
	}

	for tr, n := range kinds {
		t.Logf("pulls with a cookie from %s answered by %s: %d diffs, %d resets", tr.from, tr.to, n[false], n[true])
	}
	for _, tr := range []transition{{"old", "new"}, {"new", "old"}} {
		if kinds[tr][false] == 0 {
			t.Errorf("no pull with a cookie from %s was answered with a diff by %s: the test proves little", tr.from, tr.to)
		}
	}
	if twice := api.MultiplyApplied(); len(twice) > 0 {
		t.Errorf("calls that took effect more than once: %v", twice)
	}
	for user, todos := range model {
		if got := len(api.TodoIDs(user)); got != len(todos) {
			t.Errorf("%s: the API holds %d todos, want %d", user, got, len(todos))
		}
	}
}
