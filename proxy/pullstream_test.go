package proxy

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// streamedPull is one pull's answer as it came over the wire, read to its
// end or to the error that broke it off.
type streamedPull struct {
	status  int
	header  http.Header
	body    []byte // decoded, when gzip-encoded
	readErr error
}

func pullOverWire(t *testing.T, inst *instance, user, group string, cookie any, acceptEncoding string) streamedPull {
	t.Helper()
	return pullOverWireThen(t, inst, user, group, cookie, acceptEncoding, nil)
}

// pullOverWireThen is pullOverWire, calling answered (when set) once the
// answer's status and headers came, before its body is read.
func pullOverWireThen(t *testing.T, inst *instance, user, group string, cookie any, acceptEncoding string, answered func()) streamedPull {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+"/replicache/pull", strings.NewReader(mustJSON(t, pullBody(group, cookie))))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+user)
	req.Header.Set("X-User-Id", user) // where the sidecar is told to trust it
	req.Header.Set("Accept-Encoding", acceptEncoding)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if answered != nil {
		answered()
	}
	var body io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return streamedPull{status: resp.StatusCode, header: resp.Header, readErr: err}
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	return streamedPull{status: resp.StatusCode, header: resp.Header, body: raw, readErr: err}
}

// puts decodes a whole answer into its put operations (key: value) and
// reports whether it was a reset.
func (p streamedPull) puts(t *testing.T) (map[string]string, pullResult) {
	t.Helper()
	if p.status != http.StatusOK || p.readErr != nil {
		t.Fatalf("pull = %d (read: %v) %.300s", p.status, p.readErr, p.body)
	}
	var pr pullResult
	if err := json.Unmarshal(p.body, &pr); err != nil {
		t.Fatalf("answer is not a PullResponse: %v\n%.300s", err, p.body)
	}
	out := map[string]string{}
	for _, op := range pr.Patch {
		if op.Op == "put" {
			out[op.Key] = string(op.Value)
		}
	}
	return out, pr
}

// TestStreamedResetAnswer: a reset answer written while its view is read
// (here from the first byte) is the answer written whole: the same puts
// and values, gzip-encoded too, with the cookie last; the group's record
// it commits is what the client got (the next pull with its cookie is an
// empty diff, then exactly the change); and every byte goes back to the
// budget.
func TestStreamedResetAnswer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	whole := h.start()
	h.streamAfter = 1
	sc := h.start()
	sc.push(t, "alice", "g-streamed", longTodos(10)...) // four pages

	streamed := pullOverWire(t, sc, "alice", "g-streamed", nil, "identity")
	got, _ := streamed.puts(t)
	raw := map[string]json.RawMessage{}
	_ = json.Unmarshal(streamed.body, &raw)
	if cl := streamed.header.Get("Content-Length"); cl != "" {
		t.Errorf("a streamed answer has Content-Length %s; it is written before its length is known", cl)
	}
	if !bytes.HasPrefix(streamed.body, []byte(`{"lastMutationIDChanges":{"c1":10},"patch":[{"op":"clear"}`)) ||
		!bytes.Contains(streamed.body, []byte(`],"cookie":{"order":1,`)) || !bytes.HasSuffix(streamed.body, []byte("}}")) {
		t.Errorf("streamed answer: want the head first and the cookie last: %.200s … %s", streamed.body, streamed.body[max(0, len(streamed.body)-120):])
	}
	w := pullOverWire(t, whole, "alice", "g-whole", nil, "identity")
	want, _ := w.puts(t)
	if len(got) != 11 || !maps.Equal(got, want) {
		t.Fatalf("streamed answer puts %d entries, the whole one %d; want the same 11 (10 todos and me)", len(got), len(want))
	}
	gz := pullOverWire(t, sc, "alice", "g-streamed-gzip", nil, "gzip")
	if zgot, _ := gz.puts(t); gz.header.Get("Content-Encoding") != "gzip" || !maps.Equal(zgot, want) {
		t.Errorf("gzip-encoded streamed answer (%q) differs from the whole one", gz.header.Get("Content-Encoding"))
	}

	// The record is what the client holds: nothing changed, nothing sent.
	next := pullOverWire(t, sc, "alice", "g-streamed", raw["cookie"], "identity")
	_, diff := next.puts(t)
	_ = json.Unmarshal(next.body, &raw)
	if len(diff.Patch) != 0 {
		t.Errorf("pull after a streamed reset, nothing changed: %d ops, want none: %s", len(diff.Patch), next.body)
	}
	sc.push(t, "alice", "g-streamed", create("c1", 11, "todo-11"))
	after := pullOverWire(t, sc, "alice", "g-streamed", raw["cookie"], "identity")
	if puts, d := after.puts(t); len(d.Patch) != 1 || puts["todo/todo-11"] == "" {
		t.Errorf("pull after one more todo = %s; want exactly its put", after.body)
	}
	if n := sc.sc.core.Budget.InUse(); n != 0 {
		t.Errorf("%d bytes still held after the pulls ended", n)
	}
}

// longTodos are n creates of todos with titles of 2 KB: a page of them
// goes out as soon as it is read.
func longTodos(n int) []mut {
	var muts []mut
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("todo-%02d", i)
		muts = append(muts, mut{"c1", int64(i), "createTodo", map[string]any{"id": id, "title": strings.Repeat(id+" ", 256)}})
	}
	return muts
}

// TestStreamedAnswerBrokenOff: a page that fails after the answer started
// breaks the answer off before its JSON completes (no cookie, not JSON),
// and the pull commits nothing: the group's next cookie is the one it
// would have had anyway. The failure is logged as such, and the budget
// gets every byte back.
func TestStreamedAnswerBrokenOff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.streamAfter = 1
	sc := h.start()
	sc.push(t, "alice", "g", longTodos(10)...)
	if _, p := sc.pull(t, "alice", "g", nil); p.Cookie.Order != 1 {
		t.Fatalf("first pull's cookie order %d, want 1", p.Cookie.Order)
	}

	// Page 3 fails once the answer has gone out to the client. Its head
	// and first pages are written by the answer's own goroutine while the
	// view is read on (answerWriter): page 3 can be asked for before
	// anything was written, and then the answer is cut with nothing sent
	// (the client reads EOF, no status). That is the answer broken off too,
	// but not the one this test is about.
	answered := make(chan struct{})
	h.up.SetFault(func(r *http.Request) int {
		if r.URL.Path == "/api/todos" && r.URL.Query().Get("page") == "3" {
			select {
			case <-answered:
			case <-time.After(10 * time.Second): // the status check below says why
			}
			return http.StatusServiceUnavailable
		}
		return 0
	})
	broken := pullOverWireThen(t, sc, "alice", "g", nil, "identity", func() { close(answered) })
	h.up.SetFault(nil)
	if broken.status != http.StatusOK {
		t.Fatalf("status %d; want 200, sent before page 3 was answered", broken.status)
	}
	if broken.readErr == nil || json.Valid(broken.body) || bytes.Contains(broken.body, []byte(`"cookie"`)) {
		t.Fatalf("answer broken off by a failed page: read error %v, %d bytes, valid JSON %v; want a read error, no cookie, no JSON: %s",
			broken.readErr, len(broken.body), json.Valid(broken.body), broken.body)
	}
	if !bytes.Contains(broken.body, []byte(`"todo/todo-01"`)) {
		t.Errorf("the answer had not started before it was broken off: %s", broken.body)
	}
	proxytest.WaitFor(t, "the broken pull to be logged", func() bool {
		return strings.Contains(h.logs.String(), "pull answer broken off")
	})
	if _, p := sc.pull(t, "alice", "g", nil); p.Cookie.Order != 2 || len(p.keys(t)) != 11 {
		t.Errorf("pull after the broken one: cookie order %d, %d keys; want order 2 (nothing committed) and all 11", p.Cookie.Order, len(p.keys(t)))
	}
	if n := sc.sc.core.Budget.InUse(); n != 0 {
		t.Errorf("%d bytes still held after the pulls ended", n)
	}
}

// TestStreamedAnswerLetsRidersIn: a pull that joined another's fetch
// before its answer would start keeps both answers whole (a rider needs
// the values again): both are answered, from one fetch.
func TestStreamedAnswerLetsRidersIn(t *testing.T) {
	t.Parallel()
	// Callers named by a trusted header: no auth call (a GET) to hold up.
	h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_USER_ID_HEADER": "X-User-Id"})
	h.streamAfter = 1
	sc := h.start()
	for _, id := range []string{"a", "b", "c", "d"} { // straight to the API
		req, _ := http.NewRequest(http.MethodPost, h.up.Server.URL+"/api/todos", strings.NewReader(`{"id":"`+id+`","title":"x"}`))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Content-Type", "application/json")
		if r := do(t, req); r.status != http.StatusCreated {
			t.Fatalf("creating %s: %d %s", id, r.status, r.raw)
		}
	}
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	var gets atomic.Int64
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet {
			gets.Add(1)
			<-release // then served as usual
		}
		return false
	})
	answers := make(chan streamedPull, 2)
	go func() { answers <- pullOverWire(t, sc, "alice", "g", nil, "identity") }()
	proxytest.WaitFor(t, "the leader's fetch", func() bool { return gets.Load() > 0 })
	go func() { answers <- pullOverWire(t, sc, "alice", "g", nil, "identity") }()
	proxytest.WaitFor(t, "the rider to join", func() bool { return sc.sc.core.Turns.Waiting() == 1 })
	unblock()
	var views []map[string]string
	for range 2 {
		a := <-answers
		got, _ := a.puts(t)
		views = append(views, got)
	}
	if len(views[0]) != 5 || !maps.Equal(views[0], views[1]) {
		t.Errorf("leader and rider got %d and %d puts; want the same 5 (4 todos and me)", len(views[0]), len(views[1]))
	}
	if n := testutil.ToFloat64(sc.sc.core.Metrics.PullsMerged); n != 1 {
		t.Errorf("pulls merged = %v, want 1", n)
	}
}

// TestStreamedAnswerKeepsWhatItSent: a collection that shrinks while a
// streamed reset reads it (another writer deletes an item after page 1) is
// read again; the item the first read sent stays in the group's record,
// because the client holds it, so the next pull deletes it. Without that,
// the client would keep an item the record does not know of, for good.
func TestStreamedAnswerKeepsWhatItSent(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var items []string
	for i := range 12 {
		items = append(items, fmt.Sprint("t", i))
	}
	var served atomic.Int64
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		page = max(page, 1)
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for i := (page - 1) * 5; i < min(page*5, len(items)); i++ {
			out = append(out, fmt.Sprintf(`{"id":%q}`, items[i]))
		}
		next := "null"
		if page*5 < len(items) {
			next = fmt.Sprintf(`"/drf/?page=%d"`, page+1)
		}
		_, _ = fmt.Fprintf(w, `{"count":%d,"next":%s,"results":[%s]}`, len(items), next, strings.Join(out, ","))
		if served.Add(1) == 1 {
			items = slices.Delete(items, 1, 2) // another device deletes t1
		}
	}))
	t.Cleanup(api.Close)
	mapping := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(mapping, []byte(`{"clientView":[{"path":"/drf/","items":"results","key":"todo/{id}","pagination":{"type":"url"}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_AUTH_PATH": ""})
	h.streamAfter = 1
	sc := h.start()

	first := pullOverWire(t, sc, "alice", "g", nil, "identity")
	got, _ := first.puts(t)
	if len(got) != 12 || got["todo/t1"] == "" || served.Load() < 4 {
		t.Fatalf("streamed reset of a collection that shrank while read: %d puts after %d pages; want 12, t1 among them (sent before the second read)",
			len(got), served.Load())
	}
	raw := map[string]json.RawMessage{}
	_ = json.Unmarshal(first.body, &raw)
	next := pullOverWire(t, sc, "alice", "g", raw["cookie"], "identity")
	_, d := next.puts(t)
	if len(d.Patch) != 1 || d.Patch[0].Op != "del" || d.Patch[0].Key != "todo/t1" {
		t.Errorf("next pull = %s; want exactly del todo/t1", next.body)
	}
}
