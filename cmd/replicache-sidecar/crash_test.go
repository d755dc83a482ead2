package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestCrashRecovery pushes 1,000 mutations of several client groups through
// two sidecar replicas sharing one database, each group's pushes split
// between them, while the replicas are SIGKILLed at random moments and
// restarted. The API honours idempotency keys. Afterwards every mutation
// took effect exactly once, in order per client, and every lastMutationID is
// exact. It reports the calls that were repeated with their key.
func TestCrashRecovery(t *testing.T) {
	const (
		groups    = 4
		perGroup  = 2 // clients
		perClient = 125
		batch     = 25
	)
	dbURL := proxytest.DatabaseURL(t)
	api := proxytest.NewIdempotentAPI(t)
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}},"clientView":[{"path":"/items","key":"i/{id}"}]}`), 0o600)
	schema := fmt.Sprintf("crash_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	env := map[string]string{
		"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping,
		"SIDECAR_DB_SCHEMA": schema, "SIDECAR_LOG_LEVEL": "warn",
	}
	replicas := []*sidecarProc{startSidecar(t, env), startSidecar(t, env)}
	var mu sync.Mutex // guards replicas' processes while the killer restarts them
	base := func() string {
		mu.Lock()
		defer mu.Unlock()
		return replicas[rand.IntN(len(replicas))].public
	}

	var kills atomic.Int32
	stopKiller := make(chan struct{})
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for {
			select {
			case <-stopKiller:
				return
			case <-time.After(time.Duration(30+rand.IntN(200)) * time.Millisecond):
			}
			mu.Lock()
			r := replicas[rand.IntN(len(replicas))]
			r.signal(syscall.SIGKILL)
			kills.Add(1)
			r.start()
			mu.Unlock()
		}
	}()

	var clients []string
	var wg sync.WaitGroup
	var pushes, failedPushes atomic.Int32
	for g := 0; g < groups; g++ {
		group := fmt.Sprintf("g%d", g)
		for c := 0; c < perGroup; c++ {
			client := fmt.Sprintf("%s-c%d", group, c)
			clients = append(clients, client)
			wg.Add(1)
			go func() {
				defer wg.Done()
				acked := 0
				deadline := time.Now().Add(90 * time.Second)
				for acked < perClient && time.Now().Before(deadline) {
					// Like the real client: resend everything not yet
					// acknowledged, oldest first.
					pushes.Add(1)
					if status := pushOnce(base(), group, client, acked+1, min(acked+batch, perClient)); status != 200 {
						failedPushes.Add(1)
						time.Sleep(10 * time.Millisecond)
					}
					if lmids, status := lastMutationIDs(base(), group); status == 200 {
						if lmids[client] < acked {
							t.Errorf("client %s: lastMutationID went back from %d to %d", client, acked, lmids[client])
						}
						acked = lmids[client]
					}
				}
			}()
		}
	}
	wg.Wait()
	close(stopKiller)
	<-killerDone

	repeats, lost := api.Check(t, clients, perClient)
	for g := 0; g < groups; g++ {
		lmids, status := lastMutationIDs(replicas[0].public, fmt.Sprintf("g%d", g))
		for c := 0; c < perGroup; c++ {
			client := fmt.Sprintf("g%d-c%d", g, c)
			if status != 200 || lmids[client] != perClient {
				t.Errorf("%s: lastMutationID %d (pull status %d), want %d", client, lmids[client], status, perClient)
			}
		}
	}
	if kills.Load() < 3 {
		t.Errorf("only %d kills happened; the test proves little", kills.Load())
	}
	// The API dedups by key, so a repeat never becomes a second effect;
	// repeats count the at-least-once calls that needed it.
	t.Logf("crash test: %d mutations, %d SIGKILLs, %d pushes (%d failed or cut off), %d upstream calls repeated with their key, %d lost",
		groups*perGroup*perClient, kills.Load(), pushes.Load(), failedPushes.Load(), repeats, lost)
}
