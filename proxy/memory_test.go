package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// bigTodos is a todos page of about n bytes.
func bigTodos(prefix string, n int) string {
	var b strings.Builder
	b.WriteString(`{"todos":[`)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"%s%d","title":"%s"}`, prefix, i, strings.Repeat("x", 200))
	}
	b.WriteString(`]}`)
	return b.String()
}

// One budget holds the request and view bytes of every push and pull at
// once: while a pull holds most of it, a large push answers 503 with
// Retry-After (nothing sent upstream), a small pull still goes through, and
// the bytes all come back when the requests end. What needs more than the
// whole budget is refused as too large (413 for a body, 502 for a view),
// without counting against the upstream's breaker.
func TestInflightBudget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_INFLIGHT_VIEW_BYTES": "1048576"})
	sc := h.start()

	held := bigTodos("held", 700<<10)
	tooBig := bigTodos("big", 1200<<10)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != "/api/todos" {
			return false
		}
		switch r.Header.Get("Authorization") {
		case "Bearer alice": // sends most of its view, then waits
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(held[:len(held)-2]))
			w.(http.Flusher).Flush()
			<-release
			_, _ = w.Write([]byte(held[len(held)-2:]))
			return true
		case "Bearer carol":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(tooBig))
			return true
		}
		return false
	})

	done := make(chan response, 1)
	go func() { r, _ := sc.pull(t, "alice", "g-alice", nil); done <- r }()
	proxytest.WaitFor(t, "alice's pull to hold most of the budget", func() bool { return sc.sc.core.Budget.InUse() > 600<<10 })

	// bob's large push finds no room: 503 at once (after the short wait),
	// and nothing reaches the upstream.
	r := sc.push(t, "bob", "g-bob", mut{"c-bob", 1, "createTodo", map[string]any{"id": "b1", "title": strings.Repeat("y", 500<<10)}})
	if r.status != http.StatusServiceUnavailable || r.str("error") != "MemoryBudgetExhausted" || r.header.Get("Retry-After") != "1" {
		t.Fatalf("push while the budget is spent = %d %s (Retry-After %q), want 503 MemoryBudgetExhausted", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if n := h.up.MutationCalls(); n != 0 {
		t.Errorf("the refused push reached the upstream (%d calls)", n)
	}
	// A small pull still fits beside the held bytes.
	if r, _ := sc.pull(t, "bob", "g-bob", nil); r.status != http.StatusOK {
		t.Errorf("small pull beside the held budget = %d %s, want 200", r.status, r.raw)
	}

	unblock()
	if r := <-done; r.status != http.StatusOK {
		t.Fatalf("alice's pull = %d %s", r.status, r.raw)
	}
	// bob retries and it applies.
	if r := sc.push(t, "bob", "g-bob", mut{"c-bob", 1, "createTodo", map[string]any{"id": "b1", "title": strings.Repeat("y", 500<<10)}}); r.status != http.StatusOK || r.json["applied"] != 1.0 {
		t.Fatalf("push retried after the budget freed = %d %s", r.status, r.raw)
	}

	// More than the whole budget: a body is 413, a view is 502; neither is
	// evidence against the upstream.
	r = sc.post(t, "/replicache/push", "Bearer bob", pushBody("g-bob", mut{"c-bob", 2, "createTodo", map[string]any{"id": "b2", "blob": strings.Repeat("z", 1100<<10)}}))
	if r.status != http.StatusRequestEntityTooLarge || !strings.Contains(r.str("message"), "SIDECAR_MAX_INFLIGHT_VIEW_BYTES") {
		t.Errorf("push larger than the budget = %d %s, want 413 naming SIDECAR_MAX_INFLIGHT_VIEW_BYTES", r.status, r.raw)
	}
	for range 8 { // more than SIDECAR_BREAKER_FAILURES
		r, _ := sc.pull(t, "carol", "g-carol", nil)
		if r.status != http.StatusBadGateway || r.str("error") != "ViewTooLarge" {
			t.Fatalf("pull of a view larger than the budget = %d %s, want 502 ViewTooLarge", r.status, r.raw)
		}
	}
	if r, _ := sc.pull(t, "bob", "g-bob", nil); r.status != http.StatusOK {
		t.Errorf("pull after the too-large views = %d %s; they must not open the view breaker", r.status, r.raw)
	}

	if n := sc.sc.core.Budget.InUse(); n != 0 {
		t.Errorf("%d bytes still held after every request ended", n)
	}
	if n := testutil.ToFloat64(sc.sc.core.Metrics.BudgetRefusals.WithLabelValues("push")); n != 1 {
		t.Errorf("inflight_refusals_total{endpoint=push} = %v, want 1", n)
	}
	if n := seriesCount(t, sc, "replicache_sidecar_inflight_bytes"); n != 1 {
		t.Errorf("replicache_sidecar_inflight_bytes has %d series, want 1", n)
	}
}

// A body is charged as it arrives, not as declared: a client that declares
// most of the budget and sends slowly holds only what it has sent.
func TestSlowBodyHoldsOnlyWhatItSent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_INFLIGHT_VIEW_BYTES": "1048576"})
	sc := h.start()
	conn, err := net.Dial("tcp", strings.TrimPrefix(sc.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_, _ = fmt.Fprintf(conn, "POST /replicache/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 900<<10)
	_, _ = conn.Write([]byte(`{"pushVersion":1,"clientGroupID":"g","mutations":[` + strings.Repeat(" ", 10<<10)))
	proxytest.WaitFor(t, "the push to start reading its body", func() bool { return sc.sc.core.Budget.InUse() > 0 })
	if n := sc.sc.core.Budget.InUse(); n > 128<<10 {
		t.Errorf("a body that sent 10 KiB of a declared 900 KiB holds %d bytes of the budget", n)
	}
	// Meanwhile, another push of 500 KiB fits.
	r := sc.push(t, "bob", "g-bob", mut{"c-bob", 1, "createTodo", map[string]any{"id": "b1", "title": strings.Repeat("y", 500<<10)}})
	if r.status != http.StatusOK {
		t.Errorf("push beside the slow one = %d %s", r.status, r.raw)
	}
}
