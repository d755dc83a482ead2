package proxy

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestOutageNeverAbandonsEdits (reliability, defect 2; security round 3,
// the 429 row): with the give-up valve set tight (3 answers over 300 ms),
// an API that answers every write with an outage's status for well past
// the valve's limits loses no edit: once it recovers, the queued edit is
// applied, and nothing was recorded as rejected. Before: the valve counted
// every answered retryable status and abandoned the edit. The same holds
// for a 500 that every user's writes get (the API's own database is down):
// seen across users, it is not the mutation's own failure.
func TestOutageNeverAbandonsEdits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		users  []string // who keeps pushing during the outage
	}{
		{"503 to every write (maintenance mode)", http.StatusServiceUnavailable, []string{"alice"}},
		{"429 to every write (a rate limit per address)", http.StatusTooManyRequests, []string{"alice"}},
		{"500 to every user's writes", http.StatusInternalServerError, []string{"alice", "bob"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, map[string]string{
				"SIDECAR_GIVE_UP_ATTEMPTS": "3", "SIDECAR_GIVE_UP_AFTER": "300ms",
				"SIDECAR_BREAKER_FAILURES": "0", // every answer reaches the valve
			})
			var outage atomic.Bool
			outage.Store(true)
			h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodPost && outage.Load() {
					w.WriteHeader(tc.status)
					return true
				}
				return false
			})
			sc := h.start()
			pushes := 0
			for end := time.Now().Add(time.Second); time.Now().Before(end); pushes++ {
				for _, u := range tc.users {
					if r := sc.push(t, u, "g-"+u, create("c-"+u, 1, "edit-"+u)); r.status != http.StatusServiceUnavailable {
						t.Fatalf("push during the outage = %d %s; want 503, the edit kept", r.status, r.raw)
					}
				}
				time.Sleep(50 * time.Millisecond)
			}
			outage.Store(false)
			for _, u := range tc.users {
				r := sc.push(t, u, "g-"+u, create("c-"+u, 1, "edit-"+u))
				if r.status != 200 || r.json["applied"] != 1.0 {
					t.Errorf("%s's push after the outage (%d tries over 1 s) = %d %s; want the edit applied", u, pushes, r.status, r.raw)
				}
			}
			var rejected int
			q := "SELECT count(*) FROM " + pgx.Identifier{h.schema}.Sanitize() + ".mutation_rejections"
			if err := sc.pool.QueryRow(context.Background(), q).Scan(&rejected); err != nil || rejected != 0 {
				t.Errorf("%d rejection records (%v); an outage must abandon nothing", rejected, err)
			}
		})
	}
}
