package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBadInput throws hostile and broken input at one sidecar: each case
// gets a clear status and a JSON error naming the problem, the process stays
// healthy, and no mutation is lost or applied twice (checked at the end
// against the mutations that were legitimately sent along the way).
func TestBadInput(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{
		"SIDECAR_MAX_BODY_BYTES":          "4194304",
		"SIDECAR_MAX_UPSTREAM_BODY_BYTES": "65536",
		"SIDECAR_PUSH_TIME_BUDGET":        "1s",
		"SIDECAR_HTTP_READ_TIMEOUT":       "1s",
		"SIDECAR_BREAKER_FAILURES":        "0", // upstream failures below must not open it
	})
	sc := h.start()
	var redirectTargetHit atomic.Bool
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { redirectTargetHit.Store(true) }))
	defer elsewhere.Close()

	// c-legit's mutations go through between the bad cases; at the end
	// each must have taken effect exactly once.
	legit := int64(0)
	legitPush := func() {
		legit++
		if r := sc.push(t, "alice", "g-legit", create("c-legit", legit, fmt.Sprint("legit-", legit))); r.status != 200 || r.json["applied"] != 1.0 {
			t.Fatalf("legit push %d = %d %s", legit, r.status, r.raw)
		}
	}
	sc.push(t, "bob", "g-bob", create("c-bob", 1, "bob1"))
	sc.push(t, "alice", "g-alice", create("c-alice", 1, "al1"))

	pushJSON := func(mutations string) string {
		return `{"pushVersion":1,"clientGroupID":"g-alice","mutations":[` + mutations + `]}`
	}
	// Cases that push real mutations each use a client of their own, so
	// every case runs alone (go test -run) as well as in any order.
	m := func(client string, id int, name, args string) string {
		return fmt.Sprintf(`{"id":%d,"clientID":%q,"name":%q,"args":%s}`, id, client, name, args)
	}
	var huge strings.Builder
	for i := 2; i < 30002; i++ {
		if i > 2 {
			huge.WriteByte(',')
		}
		_, _ = fmt.Fprintf(&huge, `{"id":%d,"clientID":"c-huge","name":"unmapped","args":null}`, i-1)
	}
	type tc struct {
		name   string
		path   string // default push
		body   string
		status int
		code   string
		msg    string // part of the message
		setup  func()
		check  func(t *testing.T, r response)
		// client, when set, is the case's own client, whose last mutation
		// id must be lmid afterwards: each mutation consumed exactly once,
		// or not at all.
		client string
		lmid   int64
	}
	cases := []tc{
		{name: "malformed JSON", body: `{"pushVersion":1,"clientGroupID"`, status: 400, code: "BadRequest", msg: "JSON"},
		{name: "truncated JSON", body: `{"pushVersion":1,"clientGroupID":"g-alice","mutations":[{"id":1`, status: 400, code: "BadRequest", msg: "truncated"},
		{name: "trailing garbage", body: pushJSON(``) + `]]`, status: 400, code: "BadRequest", msg: "after the JSON value"},
		{name: "array instead of object", body: `[1,2,3]`, status: 400, code: "BadRequest", msg: "where"},
		{name: "version of the wrong type", body: `{"pushVersion":true}`, status: 400, code: "BadRequest", msg: "pushVersion"},
		{name: "mutations of the wrong type", body: `{"pushVersion":1,"clientGroupID":"g","mutations":{"id":1}}`, status: 400, code: "BadRequest", msg: "mutations"},
		{name: "id as a string", body: pushJSON(`{"id":"1","clientID":"c-alice","name":"createTodo"}`), status: 400, code: "BadRequest", msg: "mutations.id"},
		{name: "negative id", body: pushJSON(m("c-alice", -3, "createTodo", `{}`)), status: 400, code: "BadRequest", msg: "not a positive integer"},
		{name: "zero id", body: pushJSON(m("c-alice", 0, "createTodo", `{}`)), status: 400, code: "BadRequest", msg: "not a positive integer"},
		{name: "fractional id", body: pushJSON(`{"id":2.5,"clientID":"c-alice","name":"createTodo"}`), status: 400, code: "BadRequest", msg: "mutations.id"},
		{name: "overflowing id", body: pushJSON(`{"id":1e30,"clientID":"c-alice","name":"createTodo"}`), status: 400, code: "BadRequest", msg: "mutations.id"},
		{name: "empty body", body: ``, status: 400, code: "BadRequest", msg: "empty"},
		{name: "missing client group", body: `{"pushVersion":1,"mutations":[]}`, status: 400, code: "BadRequest", msg: "clientGroupID is required"},
		{name: "oversized client group id", body: `{"pushVersion":1,"clientGroupID":"` + strings.Repeat("g", 600) + `","mutations":[]}`, status: 400, code: "BadRequest", msg: "longer than"},
		{name: "huge body", body: `{"pushVersion":1,"clientGroupID":"g","pad":"` + strings.Repeat("x", 5<<20) + `"}`, status: 413, code: "PayloadTooLarge", msg: "SIDECAR_MAX_BODY_BYTES"},
		{name: "unknown push version", body: `{"pushVersion":7,"clientGroupID":"g","mutations":[]}`, status: 200, code: "VersionNotSupported"},
		{name: "mutation id gap", body: pushJSON(m("c-gap", 50, "createTodo", `{"id":"gap","title":"x"}`)), status: 400, code: "MutationIDGap", msg: "expected mutation 1, received 50",
			client: "c-gap", lmid: 0},
		{name: "foreign client group", body: `{"pushVersion":1,"clientGroupID":"g-bob","mutations":[]}`, status: 403, code: "Forbidden", msg: "belongs to someone else"},
		{name: "client of another group", body: pushJSON(`{"id":2,"clientID":"c-bob","name":"createTodo","args":{}}`), status: 403, code: "Forbidden", msg: "belongs to someone else"},
		{name: "unmapped mutator is consumed", body: pushJSON(m("c-unmapped", 1, "dropDatabase", `{}`)), status: 200, client: "c-unmapped", lmid: 1,
			check: func(t *testing.T, r response) { expectCount(t, r, "rejected", 1) }},
		{name: "path traversal through a placeholder", body: pushJSON(m("c-traversal", 1, "deleteTodo", `{"id":"../../admin/users"}`)), status: 200, client: "c-traversal", lmid: 1,
			check: func(t *testing.T, r response) { expectUpstreamCall(t, h, "DELETE /api/todos/..%2F..%2Fadmin%2Fusers") }},
		{name: "CRLF header injection through a placeholder", body: pushJSON(m("c-crlf", 1, "deleteTodo", `{"id":"x\r\nX-Admin: 1"}`)), status: 200, client: "c-crlf", lmid: 1,
			check: func(t *testing.T, r response) { expectUpstreamCall(t, h, "DELETE /api/todos/x%0D%0AX-Admin:%201") }},
		{name: "query injection through a placeholder", body: pushJSON(m("c-query", 1, "tagTodo", `{"id":"al1","tag":"a&admin=true#frag"}`)), status: 200, client: "c-query", lmid: 1,
			check: func(t *testing.T, r response) {
				expectUpstreamCall(t, h, "POST /api/todos/al1/tags?tag=a%26admin%3Dtrue%23frag")
			}},
		{name: "absolute URL through a placeholder", body: pushJSON(m("c-absolute", 1, "deleteTodo", `{"id":"http://evil.example/x"}`)), status: 200, client: "c-absolute", lmid: 1,
			check: func(t *testing.T, r response) {
				expectUpstreamCall(t, h, "DELETE /api/todos/http:%2F%2Fevil.example%2Fx")
			}},
		{name: "object where a path segment goes", body: pushJSON(m("c-object", 1, "deleteTodo", `{"id":{"$ne":null}}`)), status: 200, client: "c-object", lmid: 1,
			check: func(t *testing.T, r response) { expectCount(t, r, "rejected", 1) }},
		{name: "huge mutation count stops at the time budget", body: `{"pushVersion":1,"clientGroupID":"g-huge","mutations":[` + huge.String() + `]}`, status: 200,
			check: func(t *testing.T, r response) {
				if r.json["earlyExit"] != true || r.json["pending"].(float64) == 0 {
					t.Errorf("30,000 mutations: %s; want an early exit with pending work", r.raw)
				}
			}},
		{name: "unknown pull version", path: "/replicache/pull", body: `{"pullVersion":0,"clientID":"x"}`, status: 200, code: "VersionNotSupported"},
		{name: "malformed pull", path: "/replicache/pull", body: `{"pullVersion":1,"clientGroupID":`, status: 400, code: "BadRequest"},
		{name: "garbage cookie", path: "/replicache/pull", body: `{"pullVersion":1,"clientGroupID":"g-alice","cookie":{"order":[1]}}`, status: 400, code: "BadRequest", msg: "cookie"},
		{name: "non-JSON view from the upstream", path: "/replicache/pull", body: `{"pullVersion":1,"clientGroupID":"g-alice","cookie":null}`, status: 502, code: "BadGateway", msg: "not JSON",
			setup: func() {
				h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
					if r.URL.Path != "/api/todos" {
						return false
					}
					_, _ = io.WriteString(w, "<html>maintenance</html>")
					return true
				})
			}},
		{name: "enormous view from the upstream", path: "/replicache/pull", body: `{"pullVersion":1,"clientGroupID":"g-alice","cookie":null}`, status: 502, code: "BadGateway", msg: "larger than 65536",
			setup: func() {
				h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
					if r.URL.Path != "/api/todos" {
						return false
					}
					_, _ = io.WriteString(w, `{"todos":[`+strings.Repeat(`{"id":"x"},`, 100000)+`{"id":"y"}]}`)
					return true
				})
			}},
		{name: "view redirected to another host", path: "/replicache/pull", body: `{"pullVersion":1,"clientGroupID":"g-alice","cookie":null}`, status: 502, code: "MappingError", msg: "302",
			setup: func() {
				h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
					if r.URL.Path != "/api/todos" {
						return false
					}
					http.Redirect(w, r, elsewhere.URL+"/steal", http.StatusFound)
					return true
				})
			}},
		{name: "mutation redirected to another host is not followed", body: pushJSON(m("c-redirect", 1, "createTodo", `{"id":"redir","title":"x"}`)), status: 503, code: "MappingError", msg: "307",
			client: "c-redirect", lmid: 0,
			setup: func() {
				h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
					if r.Method != http.MethodPost {
						return false
					}
					http.Redirect(w, r, elsewhere.URL+"/steal", http.StatusTemporaryRedirect)
					return true
				})
			}},
		{name: "enormous upstream error body", body: pushJSON(m("c-bigerror", 1, "createTodo", `{"id":"big-error","title":"x"}`)), status: 200, client: "c-bigerror", lmid: 1,
			setup: func() {
				h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
					if r.Method != http.MethodPost {
						return false
					}
					w.WriteHeader(http.StatusUnprocessableEntity)
					_, _ = io.WriteString(w, strings.Repeat("e", 10<<20))
					return true
				})
			},
			check: func(t *testing.T, r response) { expectCount(t, r, "rejected", 1) }},
		{name: "GET on the push endpoint", body: "", status: 405, code: "MethodNotAllowed"},
	}
	if len(cases) < 25 {
		t.Fatalf("only %d cases", len(cases))
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.up.SetHook(nil)
			if c.setup != nil {
				c.setup()
			}
			defer h.up.SetHook(nil)
			path := c.path
			if path == "" {
				path = "/replicache/push"
			}
			var r response
			if c.code == "MethodNotAllowed" {
				r = do(t, mustRequest(t, http.MethodGet, sc.srv.URL+path))
			} else {
				r = sc.post(t, path, "Bearer alice", c.body)
			}
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %.300s", r.status, c.status, r.raw)
			}
			if r.json == nil {
				t.Fatalf("answer is not a JSON object: %.300s", r.raw)
			}
			if c.code != "" && r.str("error") != c.code {
				t.Errorf("error = %q, want %q (%s)", r.str("error"), c.code, r.raw)
			}
			if c.status >= 400 && (r.str("message") == "" || !strings.Contains(r.str("message"), c.msg)) {
				t.Errorf("message %q does not name the problem (want %q)", r.str("message"), c.msg)
			}
			if c.check != nil {
				c.check(t, r)
			}
			if c.client != "" {
				if l := h.lmid(t, sc.pool, c.client); l != c.lmid {
					t.Errorf("%s lastMutationID = %d, want %d", c.client, l, c.lmid)
				}
			}
		})
		if i%5 == 4 {
			legitPush()
		}
	}

	t.Run("slow-drip request body", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(sc.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close() }()
		_, _ = fmt.Fprintf(conn, "POST /replicache/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer alice\r\nContent-Length: 500\r\n\r\n{\"pushVersion\":1,")
		start := time.Now()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			// One byte every 300ms: the whole body would take 2.5 minutes.
			if _, err := conn.Write([]byte(" ")); err != nil {
				break
			}
			_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, _ := conn.Read(buf)
			if n > 0 {
				answer := string(buf[:n])
				if !strings.Contains(answer, "408") || !strings.Contains(answer, "RequestTimeout") {
					t.Errorf("slow body answered %q, want 408 RequestTimeout", answer)
				}
				break
			}
			if time.Since(start) > 8*time.Second {
				t.Fatal("the slow-drip body was never cut off")
			}
		}
	})

	legitPush()
	// The sidecar is still healthy and consistent.
	if r := sc.push(t, "alice", "g-legit", create("c-legit", legit+1, "final")); r.status != 200 {
		t.Fatalf("a normal push after all that = %d %s", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c-legit"); l != legit+1 {
		t.Errorf("c-legit lastMutationID = %d, want %d", l, legit+1)
	}
	if dup := h.up.MultiplyApplied(); len(dup) > 0 {
		t.Errorf("applied more than once: %v", dup)
	}
	ids := h.up.TodoIDs("alice")
	for i := int64(1); i <= legit; i++ {
		if !slices.Contains(ids, fmt.Sprint("legit-", i)) {
			t.Errorf("legit-%d was lost", i)
		}
	}
	if redirectTargetHit.Load() {
		t.Error("a redirect to another host was followed")
	}
}

func expectCount(t *testing.T, r response, field string, want float64) {
	t.Helper()
	if r.json[field] != want {
		t.Errorf("%s = %v, want %v (%s)", field, r.json[field], want, r.raw)
	}
}

func expectUpstreamCall(t *testing.T, h *harness, want string) {
	t.Helper()
	calls := h.up.Calls()
	if !slices.Contains(calls, want) {
		t.Errorf("no upstream call %q; calls: %v", want, calls)
	}
}
