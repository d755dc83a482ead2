package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/push"
)

func TestPushAppliesInOrderAndSkipsProcessed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	r := sc.push(t, "alice", "g1", create("c1", 1, "a"), create("c1", 2, "b"), create("c2", 1, "c"),
		mut{"c1", 3, "updateTodo", map[string]any{"id": "a", "done": true}})
	if r.status != http.StatusOK || r.json["applied"] != 4.0 {
		t.Fatalf("push = %d %s, want 200 with 4 applied", r.status, r.raw)
	}
	if got := h.up.TodoIDs("alice"); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("upstream todos = %v, want [a b c] in order", got)
	}
	calls := h.up.MutationCalls()
	// The client retries the same batch (its answer got lost): nothing is
	// sent upstream again.
	r = sc.push(t, "alice", "g1", create("c1", 1, "a"), create("c1", 2, "b"), create("c2", 1, "c"))
	if r.status != http.StatusOK || r.json["duplicate"] != 3.0 {
		t.Fatalf("repeat push = %d %s, want 200 with 3 duplicates", r.status, r.raw)
	}
	if n := h.up.MutationCalls(); n != calls {
		t.Errorf("repeat push made %d upstream calls, want 0", n-calls)
	}
	if l1, l2 := h.lmid(t, sc.pool, "c1"), h.lmid(t, sc.pool, "c2"); l1 != 3 || l2 != 1 {
		t.Errorf("lastMutationIDs = c1:%d c2:%d, want 3 and 1", l1, l2)
	}
}

func TestPushUpstreamCallCarriesKeyAndHeaders(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_IDEMPOTENCY_HEADER": "X-Idem", "SIDECAR_FORWARD_HEADERS": "Authorization, X-Tenant"})
	var got http.Header
	h.up.SetFault(func(r *http.Request) int {
		if r.Method == http.MethodPost {
			got = r.Header.Clone()
		}
		return 0
	})
	sc := h.start()
	req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/push",
		strings.NewReader(`{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"clientID":"c9","name":"createTodo","args":{"id":"x","title":"y"},"timestamp":1.5}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("X-Tenant", "acme")
	req.Header.Set("Cookie", "session=secret")
	req.Header.Set("X-Replicache-RequestID", "c9-s1-0")
	if r := do(t, req); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	for k, want := range map[string]string{
		"X-Idem": keyOf("alice", "g", "c9", 1), "Authorization": "Bearer alice", "X-Tenant": "acme",
		"X-Request-Id": "c9-s1-0", "Content-Type": "application/json", "Cookie": "",
	} {
		if v := got.Get(k); v != want {
			t.Errorf("upstream header %s = %q, want %q", k, v, want)
		}
	}
}

func TestPushBadInput(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_BODY_BYTES": "2048"})
	sc := h.start()
	tests := []struct {
		name   string
		body   string
		status int
		code   string // the JSON "error" field
		msg    string // part of the JSON "message"
	}{
		{"malformed JSON", `{"pushVersion":1,`, 400, "BadRequest", "truncated"},
		{"not JSON at all", `hello`, 400, "BadRequest", "malformed JSON"},
		{"empty body", ``, 400, "BadRequest", "empty"},
		{"trailing garbage", `{"pushVersion":1,"clientGroupID":"g","mutations":[]} {}`, 400, "BadRequest", "after the JSON value"},
		{"wrong type", `{"pushVersion":"1","clientGroupID":"g"}`, 400, "BadRequest", `"pushVersion"`},
		{"fractional id", `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1.5,"clientID":"c","name":"createTodo"}]}`, 400, "BadRequest", "mutations.id"},
		{"overflowing id", `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":99999999999999999999,"clientID":"c","name":"createTodo"}]}`, 400, "BadRequest", "mutations.id"},
		{"negative id", `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":-1,"clientID":"c","name":"createTodo"}]}`, 400, "BadRequest", "not a positive integer"},
		{"missing version", `{"clientGroupID":"g","mutations":[]}`, 400, "BadRequest", "pushVersion is required"},
		{"missing client group", `{"pushVersion":1,"mutations":[]}`, 400, "BadRequest", "clientGroupID is required"},
		{"missing client id", `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"name":"createTodo"}]}`, 400, "BadRequest", "mutations[0].clientID is required"},
		{"missing mutator name", `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"clientID":"c"}]}`, 400, "BadRequest", "mutations[0].name is required"},
		{"oversize body", `{"pushVersion":1,"clientGroupID":"g","mutations":[],"x":"` + strings.Repeat("a", 3000) + `"}`, 413, "PayloadTooLarge", "larger than 2048"},
		// Protocol errors go out with 200: the client ignores them otherwise.
		{"version 0", `{"pushVersion":0,"clientID":"c","mutations":[]}`, 200, "VersionNotSupported", ""},
		{"version 2", `{"pushVersion":2,"clientGroupID":"g","mutations":[]}`, 200, "VersionNotSupported", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := sc.post(t, "/replicache/push", "Bearer alice", tc.body)
			if r.status != tc.status || r.str("error") != tc.code || !strings.Contains(r.str("message"), tc.msg) {
				t.Fatalf("got %d %s; want %d error=%s message~%q", r.status, r.raw, tc.status, tc.code, tc.msg)
			}
			if tc.code == "VersionNotSupported" && r.str("versionType") != "push" {
				t.Errorf("versionType = %q, want push", r.str("versionType"))
			}
		})
	}
	if n := h.up.MutationCalls(); n != 0 {
		t.Errorf("bad input caused %d upstream calls", n)
	}
	r := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/replicache/push"))
	if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "POST" {
		t.Errorf("GET push = %d (Allow %q), want 405 with Allow: POST", r.status, r.header.Get("Allow"))
	}
}

func mustRequest(t testing.TB, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestPushMutationIDGap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	// 1 is applied, then 3 arrives where 2 is due: stop, keep 1, apply
	// nothing out of order.
	r := sc.push(t, "alice", "g", create("c1", 1, "a"), create("c1", 3, "c"), create("c1", 4, "d"))
	if r.status != http.StatusBadRequest || r.str("error") != "MutationIDGap" || r.json["expected"] != 2.0 || r.json["received"] != 3.0 ||
		!strings.Contains(r.str("message"), "expected mutation 2, received 3") {
		t.Fatalf("gap push = %d %s; want 400 MutationIDGap expected 2 received 3", r.status, r.raw)
	}
	if got := h.up.TodoIDs("alice"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("upstream todos = %v, want [a]", got)
	}
	if l := h.lmid(t, sc.pool, "c1"); l != 1 {
		t.Errorf("lastMutationID = %d, want 1", l)
	}
}

func TestPushBusinessErrorsAdvance(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	r := sc.push(t, "alice", "g",
		create("c1", 1, "a"),
		mut{"c1", 2, "createTodo", map[string]any{"id": "b"}}, // 422 from the upstream: no title
		create("c1", 3, "a"), // 409: already exists
		mut{"c1", 4, "renameEverything", map[string]any{"id": "a"}},         // unmapped
		mut{"c1", 5, "updateTodo", map[string]any{"title": "no id"}},        // missing placeholder
		mut{"c1", 6, "deleteTodo", map[string]any{"id": "../../admin"}},     // hostile id: escaped, upstream 404s
		mut{"c1", 7, "updateTodo", map[string]any{"id": "a", "done": true}}, // still syncs afterwards
	)
	if r.status != http.StatusOK || r.json["applied"] != 2.0 || r.json["rejected"] != 5.0 {
		t.Fatalf("push = %d %s; want 200 with 2 applied, 5 rejected", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c1"); l != 7 {
		t.Errorf("lastMutationID = %d, want 7 (rejections advance it)", l)
	}
	rows, err := sc.pool.Query(context.Background(), "SELECT mutation_id, mutator, coalesce(status, 0), reason, body FROM "+
		pgx.Identifier{h.schema}.Sanitize()+".mutation_rejections WHERE client_id = 'c1' ORDER BY mutation_id")
	if err != nil {
		t.Fatal(err)
	}
	type rej struct {
		id           int64
		mutator      string
		status       int
		reason, body string
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (rej, error) {
		var x rej
		err := row.Scan(&x.id, &x.mutator, &x.status, &x.reason, &x.body)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		id      int64
		status  int
		reason  string
		mutator string
	}{
		{2, 422, "upstream answered 422", "createTodo"},
		{3, 409, "upstream answered 409", "createTodo"},
		{4, 0, "no mapping for this mutator", "renameEverything"},
		{5, 0, "{args.id}: no such value", "updateTodo"},
		{6, 404, "upstream answered 404", "deleteTodo"},
	}
	if len(got) != len(want) {
		t.Fatalf("rejections = %+v, want %d rows", got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.id != w.id || g.status != w.status || !strings.Contains(g.reason, w.reason) || g.mutator != w.mutator {
			t.Errorf("rejection %d = %+v, want %+v", i, g, w)
		}
	}
	// The hostile id stayed inside its path segment.
	if calls := h.up.Calls(); !slices.Contains(calls, "DELETE /api/todos/..%2F..%2Fadmin") {
		t.Errorf("upstream calls %v lack the escaped DELETE", calls)
	}
}

func TestPushTransientStopsAndRetrySucceeds(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_TIMEOUT": "300ms"})
	sc := h.start()
	tests := []struct {
		name   string
		status int           // injected status for the second mutation
		delay  time.Duration // or: the second mutation's call outlives the timeout
		cause  string
	}{
		{"503", 503, 0, "upstream answered 503"},
		{"429", 429, 0, "upstream answered 429"},
		{"408", 408, 0, "upstream answered 408"},
		// The slow call is applied upstream after the sidecar gave up: the
		// retry carries the same key and the upstream replays its answer.
		{"timeout", 0, time.Second, "did not answer within 300ms"},
	}
	next := int64(1)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			good, bad := next, next+1
			next += 2
			badKey := keyOf("alice", "g", "c1", bad)
			h.up.SetFault(func(r *http.Request) int {
				if r.Header.Get("Idempotency-Key") != badKey {
					return 0
				}
				time.Sleep(tc.delay)
				return tc.status
			})
			batch := []mut{create("c1", good, tc.name+"-1"), create("c1", bad, tc.name+"-2")}
			r := sc.push(t, "alice", "g", batch...)
			if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || r.str("mutator") != "createTodo" ||
				!strings.Contains(r.str("cause"), tc.cause) {
				t.Fatalf("push = %d %s (Retry-After %q); want 503 naming createTodo and %q", r.status, r.raw, r.header.Get("Retry-After"), tc.cause)
			}
			if l := h.lmid(t, sc.pool, "c1"); l != good {
				t.Fatalf("lastMutationID = %d, want %d (the failed one is not consumed)", l, good)
			}
			h.up.SetFault(nil)
			if tc.delay > 0 { // let the late upstream effect land first
				proxytest.WaitFor(t, "the slow call to land", func() bool { return h.up.CallsFor(badKey) == 1 })
			}
			r = sc.push(t, "alice", "g", batch...)
			if r.status != http.StatusOK || r.json["applied"] != 1.0 || r.json["duplicate"] != 1.0 {
				t.Fatalf("retry = %d %s; want 200 with 1 applied, 1 duplicate", r.status, r.raw)
			}
			if l := h.lmid(t, sc.pool, "c1"); l != bad {
				t.Errorf("lastMutationID = %d, want %d", l, bad)
			}
			// Injected statuses answer before the API sees the call; the
			// slow call reaches it twice, with one key.
			wantCalls := 1
			if tc.delay > 0 {
				wantCalls = 2
			}
			if n := h.up.CallsFor(badKey); n != wantCalls {
				t.Errorf("key %s reached the API %d times, want %d", badKey, n, wantCalls)
			}
		})
	}
	if dup := h.up.MultiplyApplied(); len(dup) > 0 {
		t.Errorf("applied more than once upstream: %v", dup)
	}
	ids := h.up.TodoIDs("alice")
	if len(ids) != 2*len(tests) {
		t.Errorf("upstream todos = %v, want %d", ids, 2*len(tests))
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestPushUpstreamDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_USER_ID_HEADER": "X-User", "SIDECAR_AUTH_PATH": ""})
	sc := h.start()
	h.up.Server.Close()
	r := sc.post(t, "/replicache/push", "", pushBody("g", create("c1", 1, "a")))
	if r.status != http.StatusUnauthorized {
		t.Fatalf("push without X-User = %d %s, want 401", r.status, r.raw)
	}
	body := `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"clientID":"c1","name":"createTodo","args":{"id":"a","title":"x"}}]}`
	req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/push", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-User", "alice")
	r = do(t, req)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.str("cause"), "calling upstream") {
		t.Fatalf("push with the upstream down = %d %s, want 503 naming the connection error", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c1"); l != 0 {
		t.Errorf("lastMutationID = %d, want 0", l)
	}
}

func TestPushOwnership(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	if r := sc.push(t, "alice", "ga", create("ca", 1, "a")); r.status != 200 {
		t.Fatalf("alice's push = %d %s", r.status, r.raw)
	}
	if r := sc.push(t, "alice", "gb", create("cb", 1, "b")); r.status != 200 {
		t.Fatalf("alice's second group = %d %s", r.status, r.raw)
	}
	tests := []struct {
		name        string
		user, group string
		muts        []mut
		msg         string
	}{
		{"another user's group", "bob", "ga", []mut{create("cx", 1, "x")}, "belongs to someone else"},
		{"a client of another group", "alice", "gb", []mut{create("cb", 2, "b2"), create("ca", 2, "a2")}, "belongs to someone else"},
		{"empty push to another user's group", "bob", "ga", nil, "belongs to someone else"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := h.up.MutationCalls()
			r := sc.push(t, tc.user, tc.group, tc.muts...)
			if r.status != http.StatusForbidden || r.str("error") != "Forbidden" || !strings.Contains(r.str("message"), tc.msg) {
				t.Fatalf("push = %d %s; want 403 %q", r.status, r.raw, tc.msg)
			}
			if n := h.up.MutationCalls() - calls; n != 0 {
				t.Errorf("a refused push made %d upstream calls", n)
			}
		})
	}
	r, _ := sc.pull(t, "bob", "ga", nil)
	if r.status != http.StatusForbidden {
		t.Errorf("bob pulling alice's group = %d %s, want 403", r.status, r.raw)
	}
}

func TestPushTimeBudgetExitsEarly(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_PUSH_TIME_BUDGET": "250ms"})
	h.up.SetDelay(60 * time.Millisecond)
	sc := h.start()
	var muts []mut
	for i := int64(1); i <= 20; i++ {
		muts = append(muts, create("c1", i, "t"+itoa(i)))
	}
	r := sc.push(t, "alice", "g", muts...)
	applied := int64(r.json["applied"].(float64))
	if r.status != http.StatusOK || r.json["earlyExit"] != true || applied == 0 || applied >= 20 {
		t.Fatalf("push = %d %s; want 200 with an early exit after some mutations", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c1"); l != applied {
		t.Errorf("lastMutationID = %d, want %d (what was applied)", l, applied)
	}
	// The client pushes again until all are applied (each push within the
	// budget; a loaded machine may need more than one): exactly the rest.
	h.up.SetDelay(0)
	rest := int64(0)
	for i := 0; rest < 20-applied; i++ {
		r = sc.push(t, "alice", "g", muts...)
		if r.status != http.StatusOK || i == 20 {
			t.Fatalf("push %d after the early exit = %d %s; %d of the remaining %d applied so far", i+2, r.status, r.raw, rest, 20-applied)
		}
		rest += int64(r.json["applied"].(float64))
	}
	if rest != 20-applied || h.lmid(t, sc.pool, "c1") != 20 {
		t.Fatalf("the later pushes applied %d, want the remaining %d", rest, 20-applied)
	}
	if n := len(h.up.TodoIDs("alice")); n != 20 {
		t.Errorf("upstream has %d todos, want 20", n)
	}
}

func TestPushClientLeavingDoesNotAbandonMutation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	started := make(chan struct{}, 1)
	h.up.SetFault(func(r *http.Request) int {
		if r.Method == http.MethodPost {
			started <- struct{}{}
			time.Sleep(300 * time.Millisecond) // the client gives up meanwhile
		}
		return 0
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, sc.srv.URL+"/replicache/push",
		strings.NewReader(`{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"clientID":"c1","name":"createTodo","args":{"id":"a","title":"x"}},{"id":2,"clientID":"c1","name":"createTodo","args":{"id":"b","title":"x"}}]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	go func() { <-started; cancel() }()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_ = resp.Body.Close()
		t.Fatal("the request was not cancelled")
	}
	// The upstream answered after the client left; the mutation it applied
	// must still be recorded, and the next one not started.
	proxytest.WaitFor(t, "the applied mutation to be recorded", func() bool { return h.lmid(t, sc.pool, "c1") == 1 })
	proxytest.WaitFor(t, "the push handler to return", func() bool { return requestsAnswered(t, sc, "push") == 1 })
	if got := h.up.TodoIDs("alice"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("upstream todos = %v, want [a]: no new mutation after the client left", got)
	}
}

// TestPerMutatorOutcomes: a mutator's "outcomes" decide what a status
// means for it. A DELETE of a todo already gone (404) is applied, not a
// rejection; a create answered 409 is retried, not consumed; an API that
// answers 500 for a duplicate id has that mutation rejected (recorded with
// the status) instead of retried for ever. Metrics count the final outcome.
func TestPerMutatorOutcomes(t *testing.T) {
	t.Parallel()
	mapping := filepath.Join(t.TempDir(), "outcomes.json")
	err := os.WriteFile(mapping, []byte(`{"mutators": {
		"createTodo": {"method": "POST", "path": "/api/todos", "outcomes": {"409": "retry"}},
		"deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}", "outcomes": {"404": "applied"}},
		"importTodo": {"method": "POST", "path": "/api/import", "outcomes": {"5xx": "rejected", "503": "retry"}}
	}, "clientView": [{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}}]}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]string{"SIDECAR_MAPPING_FILE": mapping}) // default breaker: 5 failures open it
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/import" {
			return false
		}
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"message":"duplicate id"}`)
		return true
	})
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("c", 1, "a")); r.status != 200 || r.json["applied"] != 1.0 {
		t.Fatalf("create = %d %s", r.status, r.raw)
	}
	// 404 to a DELETE of something gone: applied, no rejection.
	r := sc.push(t, "alice", "g", mut{"c", 2, "deleteTodo", map[string]any{"id": "never-existed"}})
	if r.status != 200 || r.json["applied"] != 1.0 || r.json["rejected"] != 0.0 {
		t.Errorf("delete of a missing todo = %d %s; want applied", r.status, r.raw)
	}
	// 409 to a create: retried, not consumed.
	r = sc.push(t, "alice", "g", create("c", 3, "a"))
	if r.status != http.StatusServiceUnavailable || r.str("cause") != "upstream answered 409" {
		t.Errorf("duplicate create = %d %s; want 503 and the mutation kept", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c"); l != 2 {
		t.Errorf("lastMutationID = %d after a 409 marked retry, want 2", l)
	}
	// 500 for a duplicate: rejected and recorded with its status.
	r = sc.push(t, "alice", "g2", mut{"c2", 1, "importTodo", map[string]any{"id": "a"}})
	if r.status != 200 || r.json["rejected"] != 1.0 {
		t.Errorf("import answered 500 = %d %s; want rejected", r.status, r.raw)
	}
	// More 500s that the mapping calls rejections than the breaker's
	// threshold: answers, not evidence of a sick upstream.
	for id := int64(2); id <= 7; id++ {
		if r := sc.push(t, "alice", "g2", mut{"c2", id, "importTodo", map[string]any{"id": "a"}}); r.status != 200 {
			t.Fatalf("import %d = %d %s", id, r.status, r.raw)
		}
	}
	if v := breakerOpen(t, sc, "mutation"); v != 0 {
		t.Errorf("circuit_breaker_open{kind=mutation} = %v after 500s the mapping rejects, want 0", v)
	}
	if r := sc.push(t, "bob", "g3", create("c3", 1, "bobs")); r.status != 200 || r.json["applied"] != 1.0 {
		t.Errorf("another user's push = %d %s", r.status, r.raw)
	}
	var status int
	q := "SELECT status FROM " + pgx.Identifier{h.schema}.Sanitize() + ".mutation_rejections WHERE client_id = 'c2' AND mutation_id = 1"
	if err := sc.pool.QueryRow(context.Background(), q).Scan(&status); err != nil || status != 500 {
		t.Errorf("rejection record: status %d, %v; want 500", status, err)
	}
	for _, c := range []struct {
		mutator, outcome string
		want             float64
	}{
		{"deleteTodo", "applied", 1}, {"deleteTodo", "rejected", 0},
		{"createTodo", "transient", 1}, {"importTodo", "rejected", 7}, {"importTodo", "transient", 0},
	} {
		if got := testutil.ToFloat64(sc.sc.core.Metrics.Mutations.WithLabelValues(c.mutator, c.outcome)); got != c.want {
			t.Errorf("mutations_total{%s,%s} = %v, want %v", c.mutator, c.outcome, got, c.want)
		}
	}
}

// TestGiveUpValve: a mutation the API answers 500 every time is given up
// once it has been answered SIDECAR_GIVE_UP_ATTEMPTS times over at least
// SIDECAR_GIVE_UP_AFTER, counted across two replicas; it is then consumed
// as rejected with the reason, counted as abandoned, and the client's later
// mutations apply. Calls that got no answer never count.
func TestGiveUpValve(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{
		// The span is long enough for three pushes on a loaded machine (with
		// 300ms the third push came after it under -race with the whole suite).
		"SIDECAR_GIVE_UP_ATTEMPTS": "3", "SIDECAR_GIVE_UP_AFTER": "2s",
		"SIDECAR_BREAKER_FAILURES": "0", "SIDECAR_UPSTREAM_TIMEOUT": "200ms",
	})
	poison := func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.Header.Get("Idempotency-Key") != keyOf("alice", "g", "c", 2) {
			return false
		}
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"error":"duplicate id"}`)
		return true
	}
	h.up.SetHook(poison)
	a, b := h.start(), h.start() // two replicas share the count
	batch := []mut{create("c", 1, "one"), create("c", 2, "poison"), create("c", 3, "three")}
	attempts := func() int {
		var n int
		q := "SELECT coalesce(sum(attempts), 0) FROM " + pgx.Identifier{h.schema}.Sanitize() + ".mutation_attempts"
		if err := a.pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var start time.Time // once the first attempt is recorded: the valve's span starts there
	for i, inst := range []*instance{a, b, a} {
		r := inst.push(t, "alice", "g", batch...)
		if r.status != http.StatusServiceUnavailable || r.json["upstreamStatus"] != 500.0 {
			t.Fatalf("push %d = %d %s; want 503 while the valve holds", i, r.status, r.raw)
		}
		if i == 0 {
			start = time.Now()
		}
	}
	if n := attempts(); n != 3 {
		t.Fatalf("%d attempts recorded, want 3", n)
	}
	// Three answers, but not yet over 2s: still pending.
	if time.Since(start) < 2*time.Second {
		if r := b.push(t, "alice", "g", batch...); r.status != http.StatusServiceUnavailable {
			t.Fatalf("push before SIDECAR_GIVE_UP_AFTER = %d %s; want 503", r.status, r.raw)
		}
	}
	proxytest.WaitFor(t, "SIDECAR_GIVE_UP_AFTER to pass", func() bool { return time.Since(start) > 2050*time.Millisecond })
	r := b.push(t, "alice", "g", batch...)
	if r.status != 200 || r.json["rejected"] != 1.0 || r.json["applied"] != 1.0 {
		t.Fatalf("push after the valve's limits = %d %s; want the poison rejected and mutation 3 applied", r.status, r.raw)
	}
	if got := h.up.TodoIDs("alice"); !slices.Equal(got, []string{"one", "three"}) {
		t.Errorf("upstream todos = %v, want [one three]", got)
	}
	var reason string
	var status int
	q := "SELECT reason, status FROM " + pgx.Identifier{h.schema}.Sanitize() + ".mutation_rejections WHERE client_id = 'c' AND mutation_id = 2"
	if err := a.pool.QueryRow(context.Background(), q).Scan(&reason, &status); err != nil || !strings.HasPrefix(reason, "gave up after ") || status != 500 {
		t.Errorf("rejection = %q %d (%v); want \"gave up after N attempts over D\" and 500", reason, status, err)
	}
	if n := attempts(); n != 0 {
		t.Errorf("%d attempts left after the mutation was consumed, want 0", n)
	}
	abandoned := testutil.ToFloat64(a.sc.core.Metrics.Mutations.WithLabelValues("createTodo", "abandoned")) +
		testutil.ToFloat64(b.sc.core.Metrics.Mutations.WithLabelValues("createTodo", "abandoned"))
	if abandoned != 1 {
		t.Errorf("mutations_total{outcome=abandoned} = %v across replicas, want 1", abandoned)
	}
	if !strings.Contains(h.logs.String(), `"msg":"mutation abandoned"`) {
		t.Error("no warn line for the abandoned mutation")
	}

	t.Run("no answer never counts", func(t *testing.T) {
		// The API never answers mutation 1 of c2 (every call times out):
		// however long that lasts, nothing is recorded or given up.
		h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodPost {
				return false
			}
			<-r.Context().Done()
			return true
		})
		defer h.up.SetHook(nil)
		begin := time.Now()
		for time.Since(begin) < 500*time.Millisecond {
			if r := a.push(t, "alice", "g", create("c2", 1, "never")); r.status != http.StatusServiceUnavailable {
				t.Fatalf("push during the outage = %d %s", r.status, r.raw)
			}
		}
		if n := attempts(); n != 0 {
			t.Errorf("%d attempts recorded for calls that got no answer, want 0", n)
		}
		if l := h.lmid(t, a.pool, "c2"); l != 0 {
			t.Errorf("lastMutationID = %d after an outage, want 0: nothing given up", l)
		}
	})
}

// TestBadBytesNeverWedge: an API error body with a NUL byte and invalid
// UTF-8 is stored (made safe) as the rejection, instead of failing the
// transaction with 503 on every retry; ids and mutator names with control
// characters answer 400 naming the field before any call or write.
func TestBadBytesNeverWedge(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost {
			return false
		}
		w.WriteHeader(http.StatusUnprocessableEntity)
		_, _ = w.Write([]byte("bad\x00byte \xff\xfe here"))
		return true
	})
	sc := h.start()
	r := sc.push(t, "alice", "g", create("c", 1, "a"))
	if r.status != 200 || r.json["rejected"] != 1.0 {
		t.Fatalf("push answered by a body with NUL = %d %s; want the mutation rejected", r.status, r.raw)
	}
	var body string
	q := "SELECT body FROM " + pgx.Identifier{h.schema}.Sanitize() + ".mutation_rejections WHERE client_id = 'c'"
	if err := sc.pool.QueryRow(context.Background(), q).Scan(&body); err != nil || body != "bad\uFFFDbyte \uFFFD here" {
		t.Errorf("stored body %q (%v)", body, err)
	}
	calls := h.up.MutationCalls()
	for _, tc := range []struct{ body, field string }{
		{`{"pushVersion":1,"clientGroupID":"g\u0000x","mutations":[{"id":1,"clientID":"c2","name":"createTodo","args":{}}]}`, "clientGroupID"},
		{`{"pushVersion":1,"clientGroupID":"g2","mutations":[{"id":1,"clientID":"c\n2","name":"createTodo","args":{}}]}`, "mutations[0].clientID"},
		{`{"pushVersion":1,"clientGroupID":"g2","mutations":[{"id":1,"clientID":"c2","name":"create\u0001Todo","args":{}}]}`, "mutations[0].name"},
	} {
		r := sc.post(t, "/replicache/push", "Bearer alice", tc.body)
		if r.status != 400 || !strings.Contains(r.str("message"), tc.field) || !strings.Contains(r.str("message"), "control character") {
			t.Errorf("push %s = %d %s; want 400 naming %s", tc.body, r.status, r.raw, tc.field)
		}
	}
	if r := sc.post(t, "/replicache/pull", "Bearer alice", `{"pullVersion":1,"clientGroupID":"g\u0000","cookie":null}`); r.status != 400 {
		t.Errorf("pull with a NUL in the group = %d %s", r.status, r.raw)
	}
	if n := h.up.MutationCalls() - calls; n != 0 {
		t.Errorf("%d upstream calls for refused pushes", n)
	}
	var groups int
	if err := sc.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{h.schema}.Sanitize()+".client_groups").Scan(&groups); err != nil || groups != 1 {
		t.Errorf("%d client groups (%v), want only g: refused requests write nothing", groups, err)
	}
}

// TestTwoGroupsRaceForOneNewClient: two users' pushes from two groups name
// the same new client at the same moment, on two replicas. The client is
// claimed before any upstream call, so exactly one push reaches the API
// and is applied; the other gets 403 with nothing applied. Before, both
// called the API and the loser was refused after its call had been applied.
func TestTwoGroupsRaceForOneNewClient(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.up.SetDelay(200 * time.Millisecond) // both pushes are in flight together
	a, b := h.start(), h.start()
	for round := range 5 {
		client := fmt.Sprintf("shared-%d", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		results := make([]response, 2)
		for i, p := range []struct {
			inst        *instance
			user, group string
		}{{a, "alice", fmt.Sprintf("ga-%d", round)}, {b, "bob", fmt.Sprintf("gb-%d", round)}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i] = p.inst.push(t, p.user, p.group, create(client, 1, client+"-"+p.user))
			}()
		}
		close(start)
		wg.Wait()
		var ok, forbidden int
		for _, r := range results {
			switch {
			case r.status == 200 && r.json["applied"] == 1.0:
				ok++
			case r.status == 403:
				forbidden++
			default:
				t.Errorf("round %d: push = %d %s", round, r.status, r.raw)
			}
		}
		if ok != 1 || forbidden != 1 {
			t.Errorf("round %d: %d applied and %d refused, want exactly one of each", round, ok, forbidden)
		}
		calls := h.up.CallsFor(keyOf("alice", fmt.Sprintf("ga-%d", round), client, 1)) +
			h.up.CallsFor(keyOf("bob", fmt.Sprintf("gb-%d", round), client, 1))
		if n := calls; n != 1 {
			t.Errorf("round %d: the API got %d calls for %s:1, want exactly 1", round, n, client)
		}
	}
}

// TestExpiredCredentialsKeepEdits: an upstream 401 to a mutation stops the
// push there with HTTP 401 (so the Replicache client calls getAuth); that
// mutation and the later ones are not consumed, the earlier ones stay
// applied, and they all apply once the credentials are renewed. An API
// that answers an expired token with a business error (a guest may not
// create: 400) is caught by asking the auth endpoint again, once per push,
// before the rejection is consumed. A view answering 401 makes the pull
// answer 401.
func TestExpiredCredentialsKeepEdits(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, nil) // identity from /api/me
	sc := h.start()
	muts := func(client string, from, to int64) []mut {
		var ms []mut
		for i := from; i <= to; i++ {
			ms = append(ms, create(client, i, fmt.Sprint(client, "-", i)))
		}
		return ms
	}

	t.Run("401 to a mutation", func(t *testing.T) {
		var writes atomic.Int64 // the token expires after the second write
		h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodPost && writes.Add(1) > 2 {
				w.WriteHeader(http.StatusUnauthorized)
				return true
			}
			return false
		})
		r := sc.push(t, "alice", "g", muts("c", 1, 5)...)
		if r.status != http.StatusUnauthorized || r.str("error") != "Unauthorized" || r.json["mutationID"] != 3.0 {
			t.Fatalf("push with the token expiring = %d %s; want 401 at mutation 3", r.status, r.raw)
		}
		if l := h.lmid(t, sc.pool, "c"); l != 2 {
			t.Errorf("lastMutationID = %d, want 2: mutations 3-5 must not be consumed", l)
		}
		h.up.SetHook(nil) // a fresh token
		if r := sc.push(t, "alice", "g", muts("c", 1, 5)...); r.status != 200 || r.json["applied"] != 3.0 || r.json["duplicate"] != 2.0 {
			t.Fatalf("push with a fresh token = %d %s; want 3 applied", r.status, r.raw)
		}
	})

	t.Run("expired token answered as a guest's business error", func(t *testing.T) {
		var expired atomic.Bool
		h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
			switch {
			case r.URL.Path == "/api/me" && expired.Load():
				w.WriteHeader(http.StatusUnauthorized)
				return true
			case r.Method == http.MethodPost && r.Header.Get("Idempotency-Key") == keyOf("alice", "g2", "c2", 2):
				expired.Store(true) // the token runs out just now
				w.WriteHeader(http.StatusBadRequest)
				return true
			}
			return false
		})
		r := sc.push(t, "alice", "g2", muts("c2", 1, 3)...)
		if r.status != http.StatusUnauthorized || r.json["mutationID"] != 2.0 {
			t.Fatalf("push = %d %s; want 401 at mutation 2, not a consumed rejection", r.status, r.raw)
		}
		if l := h.lmid(t, sc.pool, "c2"); l != 1 {
			t.Errorf("lastMutationID = %d, want 1", l)
		}
		h.up.SetHook(nil)
		if r := sc.push(t, "alice", "g2", muts("c2", 1, 3)...); r.status != 200 || r.json["applied"] != 2.0 {
			t.Errorf("push with a fresh token = %d %s; want 2 applied", r.status, r.raw)
		}
	})

	t.Run("a real business error is consumed, with one re-check per push", func(t *testing.T) {
		var me atomic.Int64
		h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/api/me" {
				me.Add(1)
				return false
			}
			if r.Method == http.MethodPost {
				w.WriteHeader(http.StatusUnprocessableEntity)
				return true
			}
			return false
		})
		defer h.up.SetHook(nil)
		r := sc.push(t, "alice", "g3", muts("c3", 1, 3)...)
		if r.status != 200 || r.json["rejected"] != 3.0 {
			t.Fatalf("push = %d %s; want 3 rejected", r.status, r.raw)
		}
		if n := me.Load(); n != 2 {
			t.Errorf("/api/me called %d times, want 2 (identification and one re-check)", n)
		}
	})

	t.Run("a view answering 401", func(t *testing.T) {
		h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/api/todos" {
				w.WriteHeader(http.StatusUnauthorized)
				return true
			}
			return false
		})
		defer h.up.SetHook(nil)
		if r, _ := sc.pull(t, "alice", "g", nil); r.status != http.StatusUnauthorized || r.str("error") != "Unauthorized" {
			t.Errorf("pull = %d %s; want 401", r.status, r.raw)
		}
	})
}

// TestExpiredCredentialsWithTheIdentityHeader: with the trusted header and
// no auth call, a 401 to a mutation still stops the push with 401 and
// consumes nothing.
func TestExpiredCredentialsWithTheIdentityHeader(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_USER_ID_HEADER": "X-User", "SIDECAR_AUTH_PATH": ""})
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	sc := h.start()
	r := do(t, withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/push", mustJSON(t, pushBody("g", create("c", 1, "a"))),
		"X-User", "alice", "Authorization", "Bearer expired"))
	if r.status != http.StatusUnauthorized {
		t.Fatalf("push = %d %s; want 401", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c"); l != 0 {
		t.Errorf("lastMutationID = %d, want 0", l)
	}
}

// TestRedirectsAndTyposAreLoud: a redirect to a mutation (a trailing-slash
// 301, as Django answers) is a mapping error: the push's 503 says so and
// names method, path and Location, the mutation is kept and never counted
// toward giving up, the metric counts each, and the error is logged once
// a minute, not once a push. A 404 to a mutation stays a rejection by
// default, logged at warn as a likely mapping error. A redirected view
// fails the pull with 502 naming the source and the Location.
func TestRedirectsAndTyposAreLoud(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_GIVE_UP_ATTEMPTS": "1", "SIDECAR_GIVE_UP_AFTER": "0s"})
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodPost:
			http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
		case r.Method == http.MethodDelete:
			http.NotFound(w, r)
		default:
			return false
		}
		return true
	})
	sc := h.start()
	for range 3 {
		r := sc.push(t, "alice", "g", create("c", 1, "a"))
		if r.status != http.StatusServiceUnavailable || r.str("error") != "MappingError" ||
			!strings.Contains(r.str("message"), `mapping error: POST /api/todos answered 301 (Location: "/api/todos/")`) {
			t.Fatalf("push answered a redirect = %d %s", r.status, r.raw)
		}
	}
	if l := h.lmid(t, sc.pool, "c"); l != 0 {
		t.Errorf("lastMutationID = %d, want 0: a redirected mutation is kept (even with the valve at 1 attempt)", l)
	}
	r := sc.push(t, "alice", "g2", mut{"c2", 1, "deleteTodo", map[string]any{"id": "x"}})
	if r.status != 200 || r.json["rejected"] != 1.0 {
		t.Errorf("delete answered 404 = %d %s; want the default rejection", r.status, r.raw)
	}
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/api/todos" {
			http.Redirect(w, r, "/v2/todos", http.StatusFound)
			return true
		}
		return false
	})
	pr, _ := sc.pull(t, "alice", "g", nil)
	if pr.status != http.StatusBadGateway || pr.str("error") != "MappingError" || pr.str("source") != "/api/todos" ||
		!strings.Contains(pr.str("message"), `Location: "/v2/todos"`) {
		t.Errorf("pull of a redirected view = %d %s", pr.status, pr.raw)
	}
	for kind, want := range map[string]float64{"mutation": 4, "view": 1, "auth": 0} {
		if got := testutil.ToFloat64(sc.sc.core.Metrics.MappingErrors.WithLabelValues(kind)); got != want {
			t.Errorf("mapping_errors_total{kind=%s} = %v, want %v", kind, got, want)
		}
	}
	logs := h.logs.String()
	if n := strings.Count(logs, `"msg":"mapping error: redirects are never followed","kind":"mutation"`); n != 1 {
		t.Errorf("%d error lines for 3 redirected pushes, want 1 (once a minute)", n)
	}
	if !strings.Contains(logs, `"level":"WARN","msg":"likely mapping error","kind":"mutation","mapped":"deleteTodo","method":"DELETE"`) {
		t.Errorf("no warn line for the 404:\n%s", logs)
	}
}

// TestBookkeepingCaps: one user cannot blow up the sidecar's tables. A
// refused push (a gap) creates no client rows; a push of more distinct
// clients than SIDECAR_MAX_CLIENTS_PER_PUSH is refused before anything;
// a group at SIDECAR_MAX_CLIENTS_PER_GROUP makes room by pruning a client
// idle for over a day, and refuses a new client only when all are active;
// rejections stay within SIDECAR_MAX_REJECTIONS_PER_GROUP when a push ends.
func TestBookkeepingCaps(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{
		"SIDECAR_MAX_CLIENTS_PER_PUSH": "4", "SIDECAR_MAX_CLIENTS_PER_GROUP": "3", "SIDECAR_MAX_REJECTIONS_PER_GROUP": "5",
	})
	sc := h.start()
	count := func(table, where string) int {
		var n int
		q := "SELECT count(*) FROM " + pgx.Identifier{h.schema}.Sanitize() + "." + table + " WHERE " + where
		if err := sc.pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// A gap from several new clients: 400, and nothing registered.
	r := sc.push(t, "alice", "g", create("n1", 5, "x"), create("n2", 1, "y"))
	if r.status != 400 || r.str("error") != "MutationIDGap" {
		t.Fatalf("gap push = %d %s", r.status, r.raw)
	}
	if n := count("clients", "true"); n != 0 {
		t.Errorf("%d client rows after a refused push, want 0", n)
	}
	var five []mut
	for i := range 5 {
		five = append(five, create(fmt.Sprint("p", i), 1, fmt.Sprint("p", i)))
	}
	if r := sc.push(t, "alice", "g", five...); r.status != 400 || r.str("error") != "TooManyClients" ||
		!strings.Contains(r.str("message"), "SIDECAR_MAX_CLIENTS_PER_PUSH") {
		t.Errorf("push of 5 clients = %d %s; want 400 naming SIDECAR_MAX_CLIENTS_PER_PUSH", r.status, r.raw)
	}
	for _, c := range []string{"a", "b", "c"} {
		if r := sc.push(t, "alice", "g", create(c, 1, c)); r.status != 200 {
			t.Fatalf("push of client %s = %d %s", c, r.status, r.raw)
		}
	}
	calls := h.up.MutationCalls()
	r = sc.push(t, "alice", "g", create("d", 1, "d"))
	if r.status != 400 || r.str("error") != "TooManyClients" || !strings.Contains(r.str("message"), "SIDECAR_MAX_CLIENTS_PER_GROUP") {
		t.Errorf("a fourth active client = %d %s; want 400 naming SIDECAR_MAX_CLIENTS_PER_GROUP", r.status, r.raw)
	}
	if n := h.up.MutationCalls() - calls; n != 0 {
		t.Errorf("%d upstream calls for a refused client", n)
	}
	if _, err := sc.pool.Exec(context.Background(), "UPDATE "+pgx.Identifier{h.schema}.Sanitize()+".clients SET updated_at = now() - interval '2 days' WHERE id = 'b'"); err != nil {
		t.Fatal(err)
	}
	if r := sc.push(t, "alice", "g", create("d", 1, "d")); r.status != 200 {
		t.Errorf("a fourth client with an idle one to prune = %d %s", r.status, r.raw)
	}
	if n := count("clients", "id = 'b'"); n != 0 {
		t.Error("the idle client b was not pruned")
	}
	// b comes back (an old tab): it is told to start over, not wedged by a
	// mutation id gap for ever.
	if r := sc.push(t, "alice", "g", create("b", 2, "b2")); r.status != 200 || string(r.raw) != `{"error":"ClientStateNotFound"}` {
		t.Errorf("the pruned client's next push = %d %s; want 200 ClientStateNotFound", r.status, r.raw)
	}
	var unmapped []mut
	for i := int64(1); i <= 8; i++ {
		unmapped = append(unmapped, mut{"a", i + 1, "noSuchMutator", nil})
	}
	if r := sc.push(t, "alice", "g", unmapped...); r.status != 200 || r.json["rejected"] != 8.0 {
		t.Fatalf("push of 8 unmapped = %d %s", r.status, r.raw)
	}
	if n := count("mutation_rejections", "true"); n != 5 {
		t.Errorf("%d rejection rows, want the newest 5", n)
	}
	if n := count("mutation_rejections", "mutation_id >= 5"); n != 5 {
		t.Errorf("the kept rejections are not the newest")
	}
	for what, want := range map[string]float64{"clients": 1, "rejections": 3} {
		if got := testutil.ToFloat64(sc.sc.core.Metrics.Pruned.WithLabelValues(what)); got != want {
			t.Errorf("bookkeeping_pruned_total{what=%s} = %v, want %v", what, got, want)
		}
	}
}

// TestClaimOutlivesATimeout: a client's claim commits even when its first
// mutation's call times out (the API may apply it later), so another group
// cannot take the client over meanwhile and call the API with the same key.
func TestClaimOutlivesATimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_TIMEOUT": "200ms", "SIDECAR_BREAKER_FAILURES": "0"})
	slow := make(chan struct{})
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.Header.Get("Authorization") == "Bearer alice" {
			<-slow // longer than the sidecar waits
		}
		return false
	})
	sc := h.start()
	if r := sc.push(t, "alice", "ga", create("shared", 1, "a")); r.status != http.StatusServiceUnavailable {
		t.Fatalf("alice's push = %d %s; want 503 (timeout)", r.status, r.raw)
	}
	close(slow) // the API applies alice's call late
	aliceKey, bobKey := keyOf("alice", "ga", "shared", 1), keyOf("bob", "gb", "shared", 1)
	proxytest.WaitFor(t, "alice's late call to land", func() bool { return h.up.CallsFor(aliceKey) == 1 })
	if r := sc.push(t, "bob", "gb", create("shared", 1, "b")); r.status != http.StatusForbidden {
		t.Errorf("bob's push of alice's client = %d %s; want 403", r.status, r.raw)
	}
	if n := h.up.CallsFor(aliceKey) + h.up.CallsFor(bobKey); n != 1 {
		t.Errorf("the API got %d calls for shared:1, want 1", n)
	}
	if r := sc.push(t, "alice", "ga", create("shared", 1, "a")); r.status != 200 {
		t.Errorf("alice's retry = %d %s; want 200", r.status, r.raw)
	}
}

// TestIdempotencyKeys: a mutation's key is an HMAC under the sidecar's own
// secret (generated at the first migration, shared by replicas): stable
// across retries and replicas, different for another user, group or
// client, and not guessable, so another user sending the victim's old-style
// key through pass-through first changes nothing. A mutation a client may
// have sent before the upgrade keeps its old key.
func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_IDEMPOTENCY_SECRET": ""}) // the generated secret
	var mu sync.Mutex
	var keys []string
	var fail atomic.Bool
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.URL.Path != "/api/todos" || r.Header.Get("Authorization") != "Bearer alice" {
			return false
		}
		mu.Lock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		mu.Unlock()
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	a, b := h.start(), h.start()
	// Mallory sends the victim's old-style key first, through pass-through.
	forged := withHeaders(t, http.MethodPost, a.srv.URL+"/api/todos", `{"id":"forged","title":"x"}`,
		"Authorization", "Bearer mallory", "Idempotency-Key", "cv:1")
	if r := do(t, forged); r.status != 201 {
		t.Fatalf("mallory's call = %d", r.status)
	}
	fail.Store(true)
	if r := a.push(t, "alice", "g", create("cv", 1, "mine")); r.status != 503 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	fail.Store(false)
	if r := b.push(t, "alice", "g", create("cv", 1, "mine")); r.status != 200 || r.json["applied"] != 1.0 {
		t.Fatalf("retry on the other replica = %d %s", r.status, r.raw)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(keys) != 2 || keys[0] != keys[1] {
		t.Fatalf("keys %v: want the same key on the attempt and its retry, across replicas", keys)
	}
	if k := keys[0]; len(k) != 64 || strings.Contains(k, "cv") || k == keyOf("alice", "g", "cv", 1) {
		t.Errorf("key %q: want 64 hex characters under the generated secret, naming nobody", k)
	}
	if got := h.up.TodoIDs("alice"); !slices.Equal(got, []string{"mine"}) {
		t.Errorf("alice's todos = %v, want [mine]: the forged key must not shadow her mutation", got)
	}
	// A client known before the upgrade, whose next mutation may have gone
	// out with the old key, keeps it for that one.
	if _, err := a.pool.Exec(context.Background(), "INSERT INTO "+pgx.Identifier{h.schema}.Sanitize()+
		".clients (id, client_group_id, last_mutation_id, legacy_keys_through) VALUES ('pre', 'g', 4, 5)"); err != nil {
		t.Fatal(err)
	}
	keys = keys[:0]
	mu.Unlock()
	a.push(t, "alice", "g", create("pre", 5, "p5"), create("pre", 6, "p6"))
	mu.Lock()
	if len(keys) != 2 || keys[0] != "pre:5" || keys[1] == "pre:6" || len(keys[1]) != 64 {
		t.Errorf("keys after the upgrade = %v; want pre:5, then an HMAC", keys)
	}
}

// TestNothingLargeReadBeforeTheCallerIsKnown: an anonymous push with a
// huge body is refused (401) having read no more than its start: the
// answer arrives while the client has sent 1 KiB of a 32 MiB body. And
// one mutation's args beyond SIDECAR_MAX_ARGS_BYTES are rejected like a
// business error, never sent.
func TestNothingLargeReadBeforeTheCallerIsKnown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_ARGS_BYTES": "1024"})
	sc := h.start()
	conn, err := net.Dial("tcp", strings.TrimPrefix(sc.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_, _ = fmt.Fprintf(conn, "POST /replicache/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 32<<20)
	_, _ = conn.Write([]byte(`{"pushVersion":1,"clientGroupID":"g","mutations":[` + strings.Repeat(" ", 1000)))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(line, "401") {
		t.Errorf("anonymous push with 1 KiB of a 32 MiB body sent: %q, %v; want 401 at once", line, err)
	}

	calls := h.up.MutationCalls()
	big := map[string]any{"id": "big", "title": strings.Repeat("x", 2000)}
	r := sc.push(t, "alice", "g", mut{"c", 1, "createTodo", big})
	if r.status != 200 || r.json["rejected"] != 1.0 {
		t.Errorf("push with 2 KiB args over a 1 KiB limit = %d %s; want the mutation rejected", r.status, r.raw)
	}
	if n := h.up.MutationCalls() - calls; n != 0 {
		t.Errorf("%d calls for args over the limit", n)
	}
}

// TestPushBatchesLetPullsThrough: one client's mutations are applied several
// to a transaction, but a transaction closes after batchWindow, so a pull of
// the same group waiting for the lock gets it while a long push goes on;
// every mutation is applied once, in order.
func TestPushBatchesLetPullsThrough(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	const n = 120
	var calls atomic.Int64
	h.up.SetFault(func(r *http.Request) int {
		if r.Method == http.MethodPost {
			calls.Add(1)
			time.Sleep(3 * time.Millisecond) // n calls: well over batchWindow
		}
		return 0
	})
	muts := make([]mut, n)
	for i := range muts {
		muts[i] = create("c1", int64(i+1), fmt.Sprint("t", i+1))
	}
	pushed := make(chan response, 1)
	go func() { pushed <- sc.push(t, "alice", "g", muts...) }()
	proxytest.WaitFor(t, "the push to start calling the API", func() bool { return calls.Load() >= 3 })
	r, res := sc.pull(t, "alice", "g", nil)
	during := calls.Load()
	if r.status != http.StatusOK {
		t.Fatalf("pull during the push = %d %s", r.status, r.raw)
	}
	if during >= push.MaxBatch*2/3 {
		// Without the window, the pull would wait for a batch of push.MaxBatch.
		t.Errorf("the pull was answered after %d calls of the push; the push's transactions hold the lock too long", during)
	}
	// What the pull saw is a committed prefix: its last mutation id is
	// within the calls made, and the todos it lists match it.
	if l := res.LastMutationIDChanges["c1"]; l < 1 || l > during {
		t.Errorf("the pull's lastMutationID for c1 = %d; %d calls had been made", l, during)
	}
	if p := <-pushed; p.status != http.StatusOK || p.json["applied"] != float64(n) {
		t.Fatalf("push = %d %s; want 200 with %d applied", p.status, p.raw, n)
	}
	if l := h.lmid(t, sc.pool, "c1"); l != n {
		t.Errorf("lastMutationID = %d, want %d", l, n)
	}
	if ids := h.up.TodoIDs("alice"); len(ids) != n {
		t.Errorf("%d todos upstream, want %d", len(ids), n)
	}
	if dup := h.up.MultiplyApplied(); len(dup) > 0 {
		t.Errorf("applied more than once upstream: %v", dup)
	}
}

// TestConcurrentPushesOfOneClient: two pushes of one client reach Postgres
// at once (SIDECAR_MAX_CONNS_PER_GROUP is 2 by default; or two replicas).
// The second waits for the group's lock while the first commits two
// mutations in one transaction; it must then read the client's last
// mutation id as committed (a read joined to the locking statement would
// see it as of before the wait: mutation 5 sent again, and 5 written over
// 6).
func TestConcurrentPushesOfOneClient(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("c1", 1, "t1"), create("c1", 2, "t2"), create("c1", 3, "t3"), create("c1", 4, "t4")); r.status != http.StatusOK {
		t.Fatalf("setup push = %d %s", r.status, r.raw)
	}
	key5, key6 := keyOf("alice", "g", "c1", 5), keyOf("alice", "g", "c1", 6)
	var first atomic.Bool
	started := make(chan struct{})
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		// Mutation 6, the second of push A's batch, is slow: push B's
		// locking read arrives meanwhile and waits for A's commit of 5 and 6.
		if r.Method == http.MethodPost && r.Header.Get("Idempotency-Key") == key6 && first.CompareAndSwap(false, true) {
			close(started)
			time.Sleep(400 * time.Millisecond) // push A holds the group's lock meanwhile
		}
		return false
	})
	a := make(chan response, 1)
	go func() { a <- sc.push(t, "alice", "g", create("c1", 5, "t5"), create("c1", 6, "t6")) }()
	<-started
	b := make(chan response, 1)
	go func() { b <- sc.push(t, "alice", "g", create("c1", 5, "t5")) }() // the client's retry
	ra, rb := <-a, <-b
	t.Logf("push A = %d %s; push B = %d %s", ra.status, ra.raw, rb.status, rb.raw)
	if got := h.lmid(t, sc.pool, "c1"); got != 6 {
		t.Errorf("lastMutationID = %d after both pushes, want 6 (it went back)", got)
	}
	if n := h.up.CallsFor(key5); n != 1 {
		t.Errorf("mutation 5 sent upstream %d times, want 1", n)
	}
	if rb.json["applied"] != 0.0 {
		t.Errorf("push B reports %v applied; mutation 5 was a duplicate", rb.json["applied"])
	}
}
