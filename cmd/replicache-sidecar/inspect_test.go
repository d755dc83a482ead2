package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/inspection"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// inspectAPI is an API whose mutation m answers the status its args ask
// for (201 and a new item without one), and whose /items lists the items.
func inspectAPI(t *testing.T) *httptest.Server {
	t.Helper()
	var mu sync.Mutex
	var items []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			var a struct {
				ID     string `json:"id"`
				Status int    `json:"status"`
			}
			_ = json.NewDecoder(r.Body).Decode(&a)
			if a.Status != 0 {
				w.WriteHeader(a.Status)
				_, _ = fmt.Fprintf(w, `{"error":"refused %s"}`, a.ID)
				return
			}
			mu.Lock()
			items = append(items, a.ID)
			mu.Unlock()
			w.WriteHeader(http.StatusCreated)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		out := []map[string]string{}
		for _, id := range items {
			out = append(out, map[string]string{"id": id})
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(api.Close)
	return api
}

// TestInspect: `replicache-sidecar inspect` against the real binary after
// pushes (applied, rejected by the API, given up on), pulls (a reset, a
// diff) and a poke stream naming the group: the human report names each,
// --json is the endpoint's document, an unknown group exits 1, the
// binary finds the admin listener from SIDECAR_ADMIN_ADDR by itself, and
// the public listener does not serve the report.
func TestInspect(t *testing.T) {
	dbURL := proxytest.DatabaseURL(t)
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}},"clientView":[{"path":"/items","key":"i/{id}"}]}`), 0o600)
	schema := fmt.Sprintf("inspect_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	sc := startSidecar(t, map[string]string{
		"SIDECAR_UPSTREAM_URL": inspectAPI(t).URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_DB_SCHEMA": schema,
		"SIDECAR_GIVE_UP_ATTEMPTS": "1", "SIDECAR_GIVE_UP_AFTER": "0s",
	})
	const group = "tab 1"
	pull := func(cookie json.RawMessage) json.RawMessage {
		t.Helper()
		status, raw := postJSON(t, sc.public+"/replicache/pull", "", json.RawMessage(fmt.Sprintf(`{"pullVersion":1,"clientGroupID":%q,"cookie":%s}`, group, cookie)))
		var pr struct{ Cookie json.RawMessage }
		if status != http.StatusOK || json.Unmarshal(raw, &pr) != nil {
			t.Fatalf("pull = %d %s", status, raw)
		}
		return pr.Cookie
	}
	cookie := pull(json.RawMessage("null"))
	status, raw := postJSON(t, sc.public+"/replicache/push", "", json.RawMessage(fmt.Sprintf(`{"pushVersion":1,"clientGroupID":%q,"mutations":[
		{"id":1,"clientID":"c1","name":"m","args":{"id":"one"}},
		{"id":2,"clientID":"c1","name":"m","args":{"id":"two","status":422}},
		{"id":3,"clientID":"c1","name":"m","args":{"id":"three","status":500}},
		{"id":4,"clientID":"c1","name":"m","args":{"id":"four"}}]}`, group)))
	if status != http.StatusOK || !bytes.Contains(raw, []byte(`"rejected":2`)) {
		t.Fatalf("push = %d %s; want 2 applied and 2 rejected (422, and the 500 given up on)", status, raw)
	}
	pull(cookie)
	// A stream naming the group, open while the group is inspected.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sc.public+"/replicache/poke?clientGroupID="+url.QueryEscape(group), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("poke stream: %v %v", resp, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if line, _ := bufio.NewReader(resp.Body).ReadString('\n'); line != ": connected\n" {
		t.Fatalf("poke stream began %q", line)
	}

	inspect := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := runCommand(context.Background(), append([]string{"inspect"}, args...), map[string]string{}, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, out, errOut := inspect("--admin", sc.admin, group)
	if code != 0 {
		t.Fatalf("inspect = %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"client group tab 1\n",
		"(none: single-tenant)",
		"c1      4 ", // the client and its last mutation id
		"c1/1 m: applied (API 201)",
		"c1/2 m: rejected (API 422): upstream answered 422",
		"c1/3 m: pending (API 500), counts toward giving up",
		"c1/3 m: abandoned (API 500): gave up after 1 attempts over 0s",
		"c1/4 m: applied (API 201)",
		"reset: cookie 1, version 1, 0 entries put",
		"diff: cookie 2, version 1 → 2, 2 put, 0 deleted",
		`the API answered: {"error":"refused three"}`,
		"/items  full",
		"poke streams naming the group: 1 open on replica",
		"history (7 events, newest first; at most 50 kept)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
	t.Logf("replicache-sidecar inspect:\n%s", out)

	// Flags after the group, and --json: the endpoint's document.
	code, out, errOut = inspect(group, "--json", "--admin", sc.admin)
	var rep inspection.Group
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.ClientGroupID != group || len(rep.History) != 7 || rep.PokeStreams.Open != 1 {
		t.Errorf("inspect --json = %d %s%s; want the group's report, 7 events and 1 stream", code, out, errOut)
	}

	if code, _, errOut := inspect("--admin", sc.admin, "nobody"); code != inspectUnknown || !strings.Contains(errOut, `no client group "nobody"`) {
		t.Errorf("inspect of an unknown group = %d %q; want exit 1 naming it", code, errOut)
	}
	for _, args := range [][]string{
		{},                                       // no group
		{"a", "b"},                               // two
		{"--admin", "ftp://x", group},            // not http
		{"--admin", "http://127.0.0.1:1", group}, // nothing listens
	} {
		if code, _, errOut := inspect(args...); code != inspectFailed || errOut == "" {
			t.Errorf("inspect %q = %d %q; want exit 2 saying why", args, code, errOut)
		}
	}

	// The binary itself, finding the listener from SIDECAR_ADMIN_ADDR.
	cmd := exec.Command(sidecarBin, "inspect", group)
	cmd.Env = append(os.Environ(), "SIDECAR_ADMIN_ADDR="+strings.TrimPrefix(sc.admin, "http://"))
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "c1/4 m: applied (API 201)") {
		t.Errorf("replicache-sidecar inspect with SIDECAR_ADMIN_ADDR: %v\n%s", err, out)
	}

	// The public listener passes the path through to the API, which knows
	// nothing of it.
	r, err := http.Get(sc.public + "/groups/" + url.PathEscape(group))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if bytes.Contains(body, []byte("clientGroupID")) {
		t.Errorf("the public listener answered GET /groups/{id} with the report: %d %s", r.StatusCode, body)
	}
}

// TestAdminURL: where `inspect` looks for the admin listener, from
// SIDECAR_ADMIN_ADDR as the sidecar listens on it.
func TestAdminURL(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{
		"":                      "http://127.0.0.1:9090", // the sidecar's default, :9090
		":9091":                 "http://127.0.0.1:9091",
		"0.0.0.0:9090":          "http://127.0.0.1:9090",
		"[::]:9090":             "http://127.0.0.1:9090",
		"10.1.2.3:9090":         "http://10.1.2.3:9090",
		"[fd00::1]:9090":        "http://[fd00::1]:9090",
		"localhost:9090":        "http://localhost:9090",
		"http://sidecar:9090":   "http://sidecar:9090",
		"https://sidecar:9443/": "https://sidecar:9443/",
	} {
		if got := adminURL(addr); got != want {
			t.Errorf("adminURL(%q) = %q, want %q", addr, got, want)
		}
	}
}
