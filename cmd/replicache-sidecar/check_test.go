package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkReport is the JSON report, as a CI pipeline would read it.
type checkReport struct {
	User     string   `json:"user"`
	Identity []string `json:"identityProblems"`
	Problems int      `json:"problems"`
	Sources  []struct {
		Path       string   `json:"path"`
		Pagination string   `json:"pagination"`
		Pages      int      `json:"pages"`
		Entities   int      `json:"entities"`
		SampleKeys []string `json:"sampleKeys"`
		Problems   []string `json:"problems"`
	} `json:"sources"`
	Mutators []struct {
		Name     string   `json:"name"`
		Method   string   `json:"method"`
		Path     string   `json:"path"`
		Outcome  string   `json:"outcome"`
		Status   int      `json:"status"`
		Problems []string `json:"problems"`
	} `json:"mutators"`
}

func writeMapping(t *testing.T, mapping string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(f, []byte(mapping), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func check(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runCheck(context.Background(), args, env, &out, &errOut)
	return code, out.String(), errOut.String()
}

// hostileAPI behaves like the APIs a mapping meets in the wild: Django REST
// Framework's trailing-slash redirect and body pagination, items without
// the key's field, a path that wants other credentials, a list that
// silently answers its first page only, and a 404 for a mistyped write.
func hostileAPI(t *testing.T) *httptest.Server {
	item := func(i int) string { return fmt.Sprintf(`{"id":"i%d","name":"item %d"}`, i, i) }
	page := func(from, to int, next string, count int) string {
		var items []string
		for i := from; i < to; i++ {
			items = append(items, item(i))
		}
		return fmt.Sprintf(`{"count":%d,"next":%s,"previous":null,"results":[%s]}`, count, next, strings.Join(items, ","))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Token good" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/items": // DRF's APPEND_SLASH
			http.Redirect(w, r, "/api/items/", http.StatusMovedPermanently)
		case r.URL.Path == "/api/items/" && r.Method == http.MethodGet && r.URL.Query().Get("page") == "2":
			_, _ = fmt.Fprint(w, page(25, 30, "null", 30))
		case r.URL.Path == "/api/items/" && r.Method == http.MethodGet:
			_, _ = fmt.Fprint(w, page(0, 25, `"http://`+r.Host+`/api/items/?page=2"`, 30))
		case r.URL.Path == "/api/items/" && r.Method == http.MethodPost:
			w.WriteHeader(http.StatusCreated)
			_, _ = fmt.Fprint(w, `{}`)
		case r.URL.Path == "/api/nokeys/":
			_, _ = fmt.Fprint(w, `{"results":[{"id":"a"},{"name":"no id here"}]}`)
		case r.URL.Path == "/api/dups/":
			_, _ = fmt.Fprint(w, `{"results":[{"id":"a"},{"id":"b"},{"id":"a"}]}`)
		case r.URL.Path == "/api/admin/":
			w.WriteHeader(http.StatusForbidden)
		case r.URL.Path == "/api/firstpage/": // 25 of 120, the rest behind a next the mapping does not follow
			_, _ = fmt.Fprint(w, page(0, 25, `"http://`+r.Host+`/api/firstpage/?page=2"`, 120))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

const hostileMapping = `{
  "mutators": {
    "createItem": {"method": "POST", "path": "/api/items/"},
    "renameItem": {"method": "PATCH", "path": "/api/items/{args.id}/", "body": {"name": "{args.name}"}},
    "archiveItem": {"method": "POST", "path": "/api/item/{args.id}/archive/"}
  },
  "clientView": [
    {"path": "/api/items", "items": "results", "key": "item/{id}", "pagination": {"type": "url"}},
    {"path": "/api/items/", "items": "results", "key": "item/{id}", "pagination": {"type": "url"}},
    {"path": "/api/nokeys/", "items": "results", "key": "x/{id}"},
    {"path": "/api/admin/", "items": "results", "key": "admin/{id}"},
    {"path": "/api/dups/", "items": "results", "key": "d/{id}"},
    {"path": "/api/firstpage/", "items": "results", "key": "f/{id}"}
  ]
}`

// TestCheckHostileUpstream: every problem the issue lists is named, with
// what to write instead where there is one, and the exit status is 1.
func TestCheckHostileUpstream(t *testing.T) {
	api := hostileAPI(t)
	env := map[string]string{
		"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": writeMapping(t, hostileMapping),
		"SIDECAR_USER_ID_HEADER": "X-User-Id",
	}
	code, out, errOut := check(t, env, "--user", "u1", "--header", "Authorization: Token good", "--json", "--write",
		"--example", `createItem={"id":"i99","name":"new"}`,
		"--example", `renameItem={"name":"no id"}`,
		"--example", `archiveItem={"id":"i1"}`)
	if code != 1 {
		t.Fatalf("exit %d, want 1 (problems)\n%s%s", code, out, errOut)
	}
	var rep checkReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	sources := map[string]int{}
	for i, s := range rep.Sources {
		sources[s.Path] = i
	}
	wantProblem := func(path, want string) {
		t.Helper()
		s := rep.Sources[sources[path]]
		if len(s.Problems) != 1 || !strings.Contains(s.Problems[0], want) {
			t.Errorf("source %s: problems %q, want one containing %q", path, s.Problems, want)
		}
	}
	wantProblem("/api/items", "write /api/items/ in the mapping")
	wantProblem("/api/nokeys/", `missing key field "id"`)
	wantProblem("/api/admin/", "answers 403: the credentials given")
	wantProblem("/api/firstpage/", "next")
	wantProblem("/api/dups/", `duplicate key "d/a"`)
	good := rep.Sources[sources["/api/items/"]]
	if len(good.Problems) != 0 || good.Pages != 2 || good.Entities != 30 || good.Pagination != "url" || len(good.SampleKeys) != 3 || good.SampleKeys[0] != "item/i0" {
		t.Errorf("the DRF source: %+v; want 2 pages, 30 entities, sample keys item/i0…, no problem", good)
	}
	mutators := map[string]int{}
	for i, m := range rep.Mutators {
		mutators[m.Name] = i
	}
	if m := rep.Mutators[mutators["createItem"]]; m.Outcome != "applied" || m.Status != 201 || len(m.Problems) != 0 {
		t.Errorf("createItem: %+v; want applied (201)", m)
	}
	if m := rep.Mutators[mutators["renameItem"]]; len(m.Problems) != 1 || !strings.Contains(m.Problems[0], "id") || m.Outcome != "" {
		t.Errorf("renameItem (example without id): %+v; want a render problem naming id, nothing sent", m)
	}
	if m := rep.Mutators[mutators["archiveItem"]]; m.Outcome != "rejected" || m.Status != 404 || len(m.Problems) != 1 ||
		!strings.Contains(m.Problems[0], "consume every mutation") || m.Path != "/api/item/i1/archive/" {
		t.Errorf("archiveItem (mistyped path): %+v; want rejected (404) named as a problem", m)
	}
	if rep.Problems != 7 {
		t.Errorf("%d problems counted, want 7", rep.Problems)
	}
	// The same, for a person: a table, every problem on its own line.
	code, out, _ = check(t, env, "--user", "u1", "--header", "Authorization: Token good")
	for _, want := range []string{"✗ /api/items: /api/items answers 301", "✗ /api/nokeys/:", "5 problems to fix."} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	row := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		row = row || len(f) >= 5 && f[0] == "/api/items/" && f[1] == "url" && f[2] == "2" && f[3] == "30"
	}
	if !row {
		t.Errorf("text report lacks the row of /api/items/ (url, 2 pages, 30 entities):\n%s", out)
	}
	if code != 1 {
		t.Errorf("text report: exit %d, want 1", code)
	}
	// A view over the size bound is named with the setting to raise.
	env["SIDECAR_MAX_UPSTREAM_BODY_BYTES"] = "1000"
	_, out, _ = check(t, env, "--user", "u1", "--header", "Authorization: Token good")
	if !strings.Contains(out, "✗ /api/items/: the client view is larger than 1000 bytes") || !strings.Contains(out, "SIDECAR_MAX_UPSTREAM_BODY_BYTES is 1000") {
		t.Errorf("a view over the bound is not named:\n%s", out)
	}
}

// TestCheckCredentialsAndUsage: wrong credentials are a problem (1), not
// knowing whom to be is a problem, a bad flag or an unreachable API means
// the check could not run (2), and a bad mapping lists every problem (1).
func TestCheckCredentialsAndUsage(t *testing.T) {
	api := hostileAPI(t)
	mapping := writeMapping(t, hostileMapping)
	authEnv := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_AUTH_PATH": "/api/me/"}
	if code, out, _ := check(t, authEnv, "--header", "Authorization: Token bad"); code != 1 || !strings.Contains(out, "the auth endpoint GET /api/me/") {
		t.Errorf("bad credentials: exit %d\n%s", code, out)
	}
	headerEnv := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_USER_ID_HEADER": "X-User-Id"}
	if code, out, _ := check(t, headerEnv); code != 1 || !strings.Contains(out, "say which with --user") {
		t.Errorf("no user: exit %d\n%s", code, out)
	}
	if code, _, errOut := check(t, headerEnv, "--example", "createItem={not json"); code != 2 || !strings.Contains(errOut, "--example") {
		t.Errorf("bad example: exit %d %s", code, errOut)
	}
	if code, _, _ := check(t, headerEnv, "--nonsense"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	down := map[string]string{"SIDECAR_UPSTREAM_URL": "http://" + freeAddr(t), "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_USER_ID_HEADER": "X-User-Id"}
	if code, _, errOut := check(t, down, "--user", "u1"); code != 2 || !strings.Contains(errOut, "could not be reached") {
		t.Errorf("API down: exit %d %s", code, errOut)
	}
	bad := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_USER_ID_HEADER": "X-User-Id",
		"SIDECAR_MAPPING_FILE": writeMapping(t, `{"mutators":{"m":{"method":"POST"}},"clientView":[{"path":"nope","key":""}]}`)}
	code, out, _ := check(t, bad, "--user", "u1")
	if code != 1 || !strings.Contains(out, "path is required") || !strings.Contains(out, "key is required") {
		t.Errorf("bad mapping: exit %d, want 1 listing every problem\n%s", code, out)
	}
}

// TestCheckDemoAPI: the built binary's check against the demo API (todo-api)
// with the example mapping: nothing to fix, and --write applies an example.
func TestCheckDemoAPI(t *testing.T) {
	dir := t.TempDir()
	apiBin := filepath.Join(dir, "todo-api")
	if out, err := exec.Command("go", "build", "-o", apiBin, "../todo-api").CombinedOutput(); err != nil {
		t.Fatalf("building todo-api: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	api := exec.Command(apiBin, "-addr", addr)
	if err := api.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Process.Kill(); _ = api.Wait() })
	base := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodPost, base+"/api/todos", strings.NewReader(`{"id":"seed","title":"seeded"}`))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("todo-api did not start: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd := exec.Command(sidecarBin, "check", "--json", "--write", "--header", "Authorization: Bearer alice",
		"--example", `createTodo={"id":"t1","title":"from check"}`)
	cmd.Env = append(os.Environ(), "SIDECAR_UPSTREAM_URL="+base, "SIDECAR_MAPPING_FILE=../../deploy/examples/todo/mapping.json",
		"SIDECAR_AUTH_PATH=/api/me", "SIDECAR_DATABASE_URL=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check against the demo API: %v\n%s", err, out)
	}
	var rep checkReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if rep.Problems != 0 || rep.User != "alice" || len(rep.Sources) != 3 {
		t.Fatalf("report: %s", out)
	}
	for _, s := range rep.Sources {
		if s.Path == "/api/todos" && (s.Entities != 1 || s.SampleKeys[0] != "todo/seed") {
			t.Errorf("/api/todos: %+v; want the seeded todo", s)
		}
	}
	for _, m := range rep.Mutators {
		if m.Name == "createTodo" && (m.Outcome != "applied" || m.Status != 201) {
			t.Errorf("createTodo: %+v; want applied (201)", m)
		}
	}
}
