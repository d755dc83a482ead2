package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/inspection"
)

// adminServer serves inst's admin handler.
func adminServer(t testing.TB, inst *instance) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(inst.sc.AdminHandler(inst.reg))
	t.Cleanup(srv.Close)
	return srv
}

// inspectGroup asks the admin listener for group and decodes the answer.
func inspectGroup(t testing.TB, admin, group string) (int, inspection.Group, []byte) {
	t.Helper()
	resp, err := http.Get(admin + "/groups/" + url.PathEscape(group))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	var rep inspection.Group
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &rep); err != nil {
			t.Fatalf("GET /groups/%s: %v\n%s", group, err, raw)
		}
	}
	return resp.StatusCode, rep, raw
}

// events renders a report's history, newest first, in a line each.
func events(rep inspection.Group) []string {
	var out []string
	for _, e := range rep.History {
		if e.Kind == "pull" {
			s := fmt.Sprintf("pull %s order=%d +%d -%d", e.Outcome, e.CookieOrder, *e.Puts, *e.Dels)
			if e.Since != nil {
				s += fmt.Sprintf(" since=%d", *e.Since)
			}
			out = append(out, s)
			continue
		}
		s := fmt.Sprintf("%s/%d %s %s %d", e.ClientID, e.MutationID, e.Mutator, e.Outcome, e.Status)
		if e.Counted != nil {
			s += fmt.Sprintf(" counted=%v", *e.Counted)
		}
		if e.Reason != "" {
			s += " (" + e.Reason + ")"
		}
		out = append(out, s)
	}
	return out
}

// TestInspectGroup: GET /groups/{id} on the admin listener shows a group
// after pushes (applied, rejected by the API, answered 503 then applied,
// given up on) and pulls (a reset, a diff, one that changed nothing): its
// user, clients and last mutation ids, the mutation still pending, its
// record and sources, its poke streams on this replica (only its owner's,
// naming it), the rejection records with the API's answer, and its
// history, newest first, without the pull that changed nothing. An
// unknown group is a 404 problem; a bad id a 400 (a stream naming one
// too); and the public listener does not serve it (the path goes through
// to the API).
func TestInspectGroup(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{
		"SIDECAR_GIVE_UP_ATTEMPTS": "1", "SIDECAR_GIVE_UP_AFTER": "0s", "SIDECAR_BREAKER_FAILURES": "0",
	})
	var fail sync.Map // idempotency key → the status the API answers
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if code, _ := fail.Load(r.Header.Get("Idempotency-Key")); code != nil {
			w.WriteHeader(code.(int))
			_, _ = io.WriteString(w, `{"error":"injected"}`)
			return true
		}
		return false
	})
	sc := h.start()
	admin := adminServer(t, sc).URL
	group := "g/1 é"                                                           // a slash and a space: the path escapes them
	fail.Store(keyOf("alice", group, "c1", 3), http.StatusInternalServerError) // given up on (one answer, 0s)
	fail.Store(keyOf("alice", group, "c1", 4), http.StatusServiceUnavailable)  // pending, then applied
	rep := newReplica()
	sc.pullInto(t, "alice", group, rep) // a reset of nothing
	r := sc.push(t, "alice", group, create("c1", 1, "one"),
		mut{"c1", 2, "createTodo", map[string]any{"id": "two"}}, // no title: 422
		create("c1", 3, "poison"), create("c1", 4, "four"))
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("push = %d %s; want 503 at mutation 4", r.status, r.raw)
	}
	fail.Delete(keyOf("alice", group, "c1", 4))
	if r := sc.push(t, "alice", group, create("c1", 4, "four"), create("c2", 1, "five")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	fail.Store(keyOf("alice", group, "c2", 2), http.StatusBadGateway) // pending for good
	if r := sc.push(t, "alice", group, create("c2", 2, "six")); r.status != http.StatusServiceUnavailable {
		t.Fatalf("push = %d %s; want 503", r.status, r.raw)
	}
	sc.pullInto(t, "alice", group, rep) // a diff: 3 todos
	sc.pullInto(t, "alice", group, rep) // nothing changed: not recorded, its cookie kept
	openGroupStream(t, sc, "alice", group)
	openGroupStream(t, sc, "mallory", group) // not hers: not counted
	openStream(t, sc, "Bearer alice", nil).waitOpen(t)
	if bad := openStreamURL(t, sc.srv.URL+"/replicache/poke?clientGroupID=a%0Ab", "Bearer alice", nil); bad.status != http.StatusBadRequest {
		t.Errorf("a stream naming an invalid group id = %d, want 400", bad.status)
	}

	status, got, raw := inspectGroup(t, admin, group)
	if status != http.StatusOK {
		t.Fatalf("GET /groups/{id} = %d %s", status, raw)
	}
	if got.ClientGroupID != group || got.User != "alice" || got.CookieOrder != 2 {
		t.Errorf("group %q of %q at cookie order %d; want %q, alice, 2", got.ClientGroupID, got.User, got.CookieOrder, group)
	}
	var clients []string
	for _, c := range got.Clients {
		clients = append(clients, fmt.Sprintf("%s=%d", c.ClientID, c.LastMutationID))
	}
	if !slices.Equal(clients, []string{"c1=4", "c2=1"}) {
		t.Errorf("clients = %v, want [c1=4 c2=1]", clients)
	}
	if len(got.Pending) != 1 || got.Pending[0].ClientID != "c2" || got.Pending[0].MutationID != 2 || got.Pending[0].LastStatus != 502 {
		t.Errorf("pending = %+v; want c2/2, last answered 502", got.Pending)
	}
	rec := got.Record
	if rec.ID == "" || rec.Version != 2 || rec.Entries != 4 || rec.Bytes == 0 || len(rec.Sources) != 2 {
		t.Errorf("record = %+v; want version 2 with 4 entries (3 todos and me) and its 2 sources", rec)
	}
	for _, src := range rec.Sources {
		if (src.Path != "/api/todos" && src.Path != "/api/me") || src.Mode != "full" || src.Fingerprint == "" {
			t.Errorf("source %+v; want a mapped path, read in full by every pull", src)
		}
	}
	if got.PokeStreams.Open != 1 || got.PokeStreams.Replica == "" {
		t.Errorf("poke streams = %+v; want 1 (alice's naming the group), and the replica named", got.PokeStreams)
	}
	if len(got.Rejections) != 2 || !strings.Contains(got.Rejections[0].Reason, "gave up") || got.Rejections[1].Status != 422 {
		t.Errorf("rejections = %+v; want the give-up, then the 422", got.Rejections)
	}
	want := []string{
		"pull diff order=2 +3 -0 since=1",
		"c2/2 createTodo pending 502 counted=false",
		"c2/1 createTodo applied 201",
		"c1/4 createTodo applied 201",
		"c1/4 createTodo pending 503 counted=false",
		"c1/3 createTodo abandoned 500 (gave up after 1 attempts over 0s)",
		"c1/3 createTodo pending 500 counted=true",
		"c1/2 createTodo rejected 422 (upstream answered 422)",
		"c1/1 createTodo applied 201",
		"pull reset order=1 +1 -0",
	}
	if e := events(got); !slices.Equal(e, want) {
		t.Errorf("history =\n  %s\nwant\n  %s", strings.Join(e, "\n  "), strings.Join(want, "\n  "))
	}
	// The API's answers appear only in the rejection record that holds
	// one (the give-up's); no credentials at all.
	if n := strings.Count(string(raw), "injected"); n != 1 || strings.Contains(string(raw), "Bearer") {
		t.Errorf("the API's answer appears %d times (want once, in the give-up's rejection record), or credentials do: %s", n, raw)
	}
	if got.HistoryKept != 50 {
		t.Errorf("historyKept = %d, want the default 50", got.HistoryKept)
	}

	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/groups/nobody", http.StatusNotFound, "NotFound"},                // never seen
		{"/groups/a%00b", http.StatusBadRequest, "BadRequest"},             // a control character
		{"/groups/" + strings.Repeat("x", 600), http.StatusBadRequest, ""}, // too long
	} {
		resp, err := http.Get(admin + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		var p struct{ Error, Message string }
		if resp.StatusCode != tc.status || json.Unmarshal(body, &p) != nil || (tc.code != "" && p.Error != tc.code) || p.Message == "" {
			t.Errorf("GET %.40s = %d %s; want %d with a JSON problem %s", tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
	// Not on the public listener: the path is the API's (which has none).
	req, _ := http.NewRequest(http.MethodGet, sc.srv.URL+"/groups/"+url.PathEscape(group), nil)
	req.Header.Set("Authorization", "Bearer alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), "clientGroupID") {
		t.Errorf("GET /groups/{id} on the public listener = %d %s; want the API's 404, no report", resp.StatusCode, body)
	}
}

// TestInspectHistoryIsBounded: a push of 200 mutations leaves the newest
// SIDECAR_MAX_HISTORY_PER_GROUP events, the last mutation's first; and 0
// records none.
func TestInspectHistoryIsBounded(t *testing.T) {
	t.Parallel()
	for _, keep := range []int{20, 0} {
		t.Run(fmt.Sprint(keep), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, map[string]string{"SIDECAR_MAX_HISTORY_PER_GROUP": fmt.Sprint(keep)})
			sc := h.start()
			var muts []mut
			for i := int64(1); i <= 200; i++ {
				muts = append(muts, create("c", i, fmt.Sprint("t", i)))
			}
			for pushed := 0; pushed < 200; {
				r := sc.push(t, "alice", "g", muts[pushed:]...)
				if r.status != http.StatusOK {
					t.Fatalf("push = %d %s", r.status, r.raw)
				}
				pushed += int(r.json["applied"].(float64))
			}
			status, got, raw := inspectGroup(t, adminServer(t, sc).URL, "g")
			if status != http.StatusOK {
				t.Fatalf("GET /groups/g = %d %s", status, raw)
			}
			if len(got.History) != keep || keep > 0 && got.History[0].MutationID != 200 || got.Clients[0].LastMutationID != 200 {
				t.Errorf("%d events (newest %+v); want %d, the newest mutation 200's", len(got.History), got.History[:min(1, len(got.History))], keep)
			}
		})
	}
}
