package proxy

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestHostileSharedReadBegunBeforeAWrite: a pull that arrives after a
// routed write under a shared source (which poked it) must not be
// answered from a read of that source that began before the write. The
// replica's copy of a shared source is read again once a write fell under
// its path (sharedViews.get), but a pull that finds a read of it already
// under way joins that read (sv.runs accepts every joiner), whenever it
// began: here the read began before the write, and the pull's client is
// answered the catalog as it was before it, with nothing left to poke it
// again.
func TestHostileSharedReadBegunBeforeAWrite(t *testing.T) {
	t.Parallel()
	f := filepath.Join(t.TempDir(), "mapping.json")
	mapping := strings.Replace(testMapping, `{"path": "/api/me", "key": "me"}`,
		`{"path": "/api/me", "key": "me"},
    {"path": "/api/catalog", "items": "items", "key": "item/{id}", "shared": true}`, 1)
	if err := os.WriteFile(f, []byte(mapping), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]string{"SIDECAR_MAPPING_FILE": f})
	sc := h.start()
	var version, gets atomic.Int64
	version.Store(1)
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unhold := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unhold)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/catalog" {
			return false
		}
		if r.Method != http.MethodGet {
			version.Add(1) // an admin's write of the catalog
			w.WriteHeader(http.StatusNoContent)
			return true
		}
		v := version.Load() // the catalog as it is when the read begins
		if gets.Add(1) == 1 {
			close(held)
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"items": [{"id": "c1", "name": "v%d"}]}`, v)
		return true
	})
	// u1's pull reads the shared source first: held, with the catalog at v1.
	first := newReplica()
	lead := make(chan struct{})
	go func() { defer close(lead); sc.pullInto(t, "u1", "g1", first) }()
	<-held
	// An admin writes the catalog through the pass-through (it marks the
	// path before the answer comes back, and pokes everyone).
	req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/api/catalog", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer admin")
	if r := do(t, req); r.status != http.StatusNoContent {
		t.Fatalf("catalog write = %d %s", r.status, r.raw)
	}
	// u2's pull comes after the write: it must see v2.
	second := newReplica()
	done := make(chan struct{})
	go func() { defer close(done); sc.pullInto(t, "u2", "g2", second) }()
	proxytest.WaitFor(t, "u2's pull to read the catalog, or to wait for the read under way", func() bool {
		return gets.Load() > 1 || waitsOnSharedRead()
	})
	unhold()
	<-lead
	<-done
	if got := second.state["item/c1"]; got != `{"id":"c1","name":"v2"}` {
		t.Errorf("a pull that came after the catalog's write was answered %s (from the read begun before the write); want v2", got)
	}
}

// waitsOnSharedRead reports whether a goroutine waits for another's read
// of a shared source (sharedViews.get, not its leader).
func waitsOnSharedRead() bool {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "(*sharedViews).get") && strings.Contains(g, "flight.(*Flight[") && strings.Contains(g, ").Wait(") {
			return true
		}
	}
	return false
}
