package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestMappingReload rewrites the mapping file under a running sidecar, the
// way a ConfigMap update does (a new file swapped in): an invalid file keeps
// the old mapping and is counted; a valid one is used by the next push.
func TestMappingReload(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go sc.sc.watchMapping(ctx, 20*time.Millisecond)
	file := h.env["SIDECAR_MAPPING_FILE"]
	replace := func(content string) string {
		tmp := filepath.Join(filepath.Dir(file), "next.json")
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(content))
		return hex.EncodeToString(sum[:])
	}
	rename := mut{"c", 2, "renameTodo", map[string]any{"id": "a", "title": "renamed"}}
	if r := sc.push(t, "alice", "g", create("c", 1, "a")); r.status != 200 || r.json["applied"] != 1.0 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}

	// A broken file: counted, logged, and the old mapping stays.
	replace(`{"mutators":{"createTodo":{"method":"FETCH","path":"/api/todos"}}}`)
	proxytest.WaitFor(t, "the reload error to be counted", func() bool { return testutil.ToFloat64(sc.sc.core.Metrics.MappingReloadErrors) == 1 })
	if r := sc.push(t, "alice", "g", create("c", 2, "b")); r.status != 200 || r.json["applied"] != 1.0 {
		t.Fatalf("push with the old mapping after a bad reload = %d %s", r.status, r.raw)
	}
	if !strings.Contains(h.logs.String(), "new mapping is invalid") {
		t.Error("the bad mapping was not logged")
	}

	// A valid file with a new mutator: used by the next push.
	newMapping := strings.Replace(testMapping, `"mutators": {`, `"mutators": {
    "renameTodo": {"method": "PATCH", "path": "/api/todos/{args.id}", "body": {"title": "{args.title}"}},`, 1)
	hash := replace(newMapping)
	proxytest.WaitFor(t, "the new mapping", func() bool { return sc.sc.core.Mapping().Hash == hash })
	rename.id = 3
	if r := sc.push(t, "alice", "g", rename); r.status != 200 || r.json["applied"] != 1.0 {
		t.Fatalf("push of the new mutator = %d %s", r.status, r.raw)
	}
	if got := testutil.ToFloat64(sc.sc.core.Metrics.MappingInfo.WithLabelValues(hash)); got != 1 {
		t.Errorf("mapping_info{sha256=new} = %v", got)
	}
	if n := testutil.CollectAndCount(sc.sc.core.Metrics.MappingInfo); n != 1 {
		t.Errorf("mapping_info has %d series, want only the loaded one", n)
	}
	if n := testutil.ToFloat64(sc.sc.core.Metrics.MappingReloadErrors); n != 1 {
		t.Errorf("mapping_reload_errors_total = %v, want 1 (the bad file counted once)", n)
	}
	_, p := sc.pull(t, "alice", "g", nil)
	if string(p.Patch[1].Value) != `{"id":"a","title":"renamed"}` {
		t.Errorf("todo a = %s after renameTodo", p.Patch[1].Value)
	}
}
