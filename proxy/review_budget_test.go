package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestReviewConfirmingReadIsInterruptible: the second read that confirms
// a deletion (a source whose pages cannot prove they fit together) waits
// on the upstream like the first one, so the budget may pre-empt it too.
// One user's two pulls hold most of the budget while the API sends their
// confirming reads slowly; another user's pull, whose view needs more
// than is left, pre-empts one of them and answers 200. Before the fix the
// confirming read was not interruptible: nothing could be pre-empted, and
// the other user's pull answered 503 for as long as the API took.
func TestReviewConfirmingReadIsInterruptible(t *testing.T) {
	t.Parallel()
	view := func(prefix string, n int, extra bool) string {
		var b strings.Builder
		b.WriteString(`{"todos":[`)
		if extra {
			b.WriteString(`{"id":"x","title":"to be deleted"},`)
		}
		for i := 0; b.Len() < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"id":"%s%d","title":"%s"}`, prefix, i, strings.Repeat("x", 200))
		}
		b.WriteString(`]}`)
		return b.String()
	}
	var withX, slow atomic.Bool
	withX.Store(true)
	var mallorys atomic.Int64 // mallory's reads once slow: every second one is a confirming read
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/me":
			_, _ = fmt.Fprintf(w, `{"id":%q}`, user)
		case r.URL.Path == "/api/todos" && user == "mallory":
			body := view("m", 220<<10, withX.Load())
			if !slow.Load() || mallorys.Add(1)%2 == 1 {
				_, _ = w.Write([]byte(body))
				return
			}
			_, _ = w.Write([]byte(body[:len(body)-2])) // most of it, then it waits
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write([]byte(body[len(body)-2:]))
		case r.URL.Path == "/api/todos":
			_, _ = w.Write([]byte(view("v", 200<<10, false)))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(api.Close)
	t.Cleanup(unblock) // before the API closes
	sc := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAX_INFLIGHT_VIEW_BYTES": "1048576",
		"SIDECAR_MAPPING_FILE": writeFile(t, `{"clientView": [
			{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}}]}`)}).start()
	groups := []string{"gm0", "gm1"}
	for _, g := range groups {
		if r, _ := sc.pull(t, "mallory", g, nil); r.status != http.StatusOK {
			t.Fatalf("mallory's first pull of %s = %d %s", g, r.status, r.raw)
		}
	}
	// x is gone: each group's next pull reads the view, would delete x,
	// and reads it again to confirm, slowly.
	withX.Store(false)
	slow.Store(true)
	answers := make(chan response, len(groups))
	held := func() int64 { return sc.sc.core.Budget.HeldBy("user:mallory") }
	for i, g := range groups {
		go func() { r, _ := sc.pull(t, "mallory", g, nil); answers <- r }()
		proxytest.WaitFor(t, "mallory's confirming read to be held", func() bool { return held() >= int64(i+1)*440<<10 })
	}
	// victor's view (200 KiB) needs more than is left.
	if r, _ := sc.pull(t, "victor", "g-victor", nil); r.status != http.StatusOK {
		t.Errorf("victor's pull = %d %s, want 200", r.status, r.raw)
	}
	unblock()
	for range groups {
		<-answers
	}
	proxytest.WaitFor(t, "every byte to come back", func() bool { return sc.sc.core.Budget.InUse() == 0 })
}

// TestReviewLongPushIsInterruptible: a push holds its body's bytes while
// it makes its mutations' calls, one after another, up to
// SIDECAR_PUSH_TIME_BUDGET. One user's pushes of many mutations hold most
// of the budget; another user's pull, whose view needs more than is left,
// pre-empts one of them, which stops after the call it is making (that
// call's answer is recorded, the rest is left for the client's next
// push: 200 with earlyExit), and the pull answers 200. Before the fix a
// push's calls were not interruptible: nothing could be pre-empted, and
// the pull answered 503 for as long as the pushes ran.
func TestReviewLongPushIsInterruptible(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_INFLIGHT_VIEW_BYTES": "1048576"})
	sc := h.start()
	tokens := make(chan struct{}, 1000) // one per mallory's call answered
	var calls atomic.Int64
	stop := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(stop) }) }
	t.Cleanup(unblock)
	victimView := bigTodos("v", 200<<10)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodPost && r.Header.Get("Authorization") == "Bearer mallory":
			calls.Add(1)
			select {
			case <-tokens:
			case <-stop:
			}
			return false // answered as usual
		case r.Method == http.MethodGet && r.URL.Path == "/api/todos" && r.Header.Get("Authorization") == "Bearer victor":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(victimView))
			return true
		}
		return false
	})
	held := func() int64 { return sc.sc.core.Budget.HeldBy("user:mallory") }
	title := strings.Repeat("x", 1000)
	answers := make(chan response, 2)
	for i := range 2 {
		var muts []mut
		for j := range 370 { // about 400 KiB
			muts = append(muts, mut{fmt.Sprint("cm", i), int64(j + 1), "createTodo", map[string]any{"id": fmt.Sprint("m", i, "-", j), "title": title}})
		}
		go func() { answers <- sc.push(t, "mallory", fmt.Sprint("gm", i), muts...) }()
		proxytest.WaitFor(t, "mallory's push to be held, making its first call", func() bool {
			return held() >= int64(i+1)*380<<10 && calls.Load() == int64(i+1)
		})
	}
	victim := make(chan response, 1)
	go func() { r, _ := sc.pull(t, "victor", "g-victor", nil); victim <- r }()
	var r response
	proxytest.WaitFor(t, "a push to be pre-empted, or the pull to answer", func() bool {
		select {
		case r = <-victim:
			return true
		default:
			return sc.sc.core.Budget.Preempted() > 0
		}
	})
	if r.status == 0 {
		for range 2 {
			tokens <- struct{}{} // each push's call is answered: the pre-empted one stops there
		}
		r = <-victim
	}
	if r.status != http.StatusOK {
		t.Errorf("victor's pull = %d %s, want 200", r.status, r.raw)
	}
	unblock()
	for range 2 {
		if a := <-answers; a.status != http.StatusOK {
			t.Errorf("mallory's push = %d %s, want 200", a.status, a.raw)
		}
	}
	proxytest.WaitFor(t, "every byte to come back", func() bool { return sc.sc.core.Budget.InUse() == 0 })
}
