package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/cmd/internal/pgcluster"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestPostgresOutage stops the sidecar's Postgres in the middle of a load
// and starts it again: meanwhile pushes answer 503 and readiness fails, the
// process stays up, and afterwards everything syncs with nothing lost or
// applied twice.
func TestPostgresOutage(t *testing.T) {
	pg, err := pgcluster.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	api := proxytest.NewIdempotentAPI(t)
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}},"clientView":[{"path":"/items","key":"i/{id}"}]}`), 0o600)
	sc := startSidecar(t, map[string]string{
		"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_DATABASE_URL": pg.URL(), "SIDECAR_MAPPING_FILE": mapping,
		"SIDECAR_LOG_LEVEL": "warn",
	})
	const total = 60
	acked := 0
	push := func() int {
		status := pushOnce(sc.public, "g", "c", acked+1, min(acked+10, total))
		if lmids, s := lastMutationIDs(sc.public, "g"); s == 200 {
			acked = lmids["c"]
		}
		return status
	}
	for acked < 20 {
		if s := push(); s != 200 {
			t.Fatalf("push before the outage = %d", s)
		}
	}

	pg.Stop()
	var outage []int
	for i := 0; i < 5; i++ {
		outage = append(outage, push())
	}
	for _, s := range outage {
		if s != http.StatusServiceUnavailable {
			t.Errorf("push during the outage = %d, want 503", s)
		}
	}
	body := pushBody(t, sc.public)
	if !strings.Contains(body, `"error":"DatabaseUnavailable"`) {
		t.Errorf("push body during the outage = %s, want DatabaseUnavailable", body)
	}
	// Readiness stays: the pass-through serves the legacy API without the
	// sidecar's database, and every replica shares that database
	// (reliability, defect 3). The metric says it is away.
	if code := get(t, sc.admin+"/readyz"); code != 200 {
		t.Errorf("/readyz during the outage = %d, want 200 (the pass-through still serves)", code)
	}
	if code := get(t, sc.public+"/legacy/anything"); code == 0 || code >= 500 {
		t.Errorf("pass-through during the outage = %d, want the API's own answer", code)
	}
	waitMetric(t, sc.admin, "replicache_sidecar_database_up 0")
	if code := get(t, sc.admin+"/healthz"); code != 200 || !sc.alive() {
		t.Fatalf("the process did not stay up (healthz %d)", code)
	}

	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for acked < total && time.Now().Before(deadline) {
		if push() != 200 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if acked != total {
		t.Fatalf("after recovery, lastMutationID = %d, want %d", acked, total)
	}
	if code := get(t, sc.admin+"/readyz"); code != 200 {
		t.Errorf("/readyz after recovery = %d", code)
	}
	waitMetric(t, sc.admin, "replicache_sidecar_database_up 1")
	repeats, lost := api.Check(t, []string{"c"}, total)
	t.Logf("postgres outage: %d pushes answered 503 meanwhile; after restart all %d mutations applied, %d lost, %d repeated calls", len(outage), total, lost, repeats)
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func pushBody(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Post(base+"/replicache/push", "application/json",
		strings.NewReader(`{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":21,"clientID":"c","name":"m","args":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestStartsBeforeItsDatabase: a sidecar whose Postgres is not up yet stays
// alive (healthz 200) and ready (its pass-through serves), answers pushes
// with 503, and serves them by itself once the database appears.
func TestStartsBeforeItsDatabase(t *testing.T) {
	pg, err := pgcluster.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	pg.Stop()
	api := proxytest.NewIdempotentAPI(t)
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}},"clientView":[{"path":"/items","key":"i/{id}"}]}`), 0o600)
	p := spawnSidecar(t, map[string]string{
		"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_DATABASE_URL": pg.URL(), "SIDECAR_MAPPING_FILE": mapping,
	})

	deadline := time.Now().Add(10 * time.Second)
	for get(t, p.admin+"/healthz") != 200 {
		if time.Now().After(deadline) || !p.alive() {
			t.Fatalf("the sidecar did not come up without its database:\n%s", tail(p.stderr.String(), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := get(t, p.admin+"/readyz"); code != 200 {
		t.Errorf("/readyz without a database = %d, want 200 (the pass-through serves)", code)
	}
	if s := pushOnce(p.public, "g", "c", 1, 1); s != 503 {
		t.Errorf("push without a database = %d, want 503", s)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	p.waitReady()
	if s := pushOnce(p.public, "g", "c", 1, 1); s != 200 {
		t.Errorf("push once the database is up = %d, want 200", s)
	}
}

// waitMetric waits until the admin listener's exposition has a line
// starting with want.
func waitMetric(t *testing.T, admin, want string) {
	t.Helper()
	proxytest.WaitFor(t, want, func() bool {
		resp, err := http.Get(admin + "/metrics")
		if err != nil {
			return false
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, want) {
				return true
			}
		}
		return false
	})
}
