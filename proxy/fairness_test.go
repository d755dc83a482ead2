package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// attack runs hit from workers goroutines for d, while victim runs back to
// back on this goroutine; it returns how many of the victim's tries
// succeeded, of how many.
func attack(t *testing.T, workers int, d time.Duration, hit func(i int), victim func() bool) (ok, total int) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				hit(w*1_000_000 + i)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // the attack is under way first
	for end := time.Now().Add(d); time.Now().Before(end); {
		total++
		if victim() {
			ok++
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	return ok, total
}

// TestAnonymousGarbageCannotOpenTheAuthBreaker (security round 3, finding
// 2): anonymous pulls with a garbage bearer token, which the API's auth
// endpoint answers 500 (a token parser that throws), hammer the sidecar
// from 4 goroutines; another user's pulls keep succeeding and the auth
// breaker stays closed. Before: the auth call counted every 5xx, and 99% of
// the victim's pulls failed with 503 while the breaker was open.
func TestAnonymousGarbageCannotOpenTheAuthBreaker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil) // default breaker settings, auth at /api/me
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/api/me" && strings.HasPrefix(r.Header.Get("Authorization"), "Bearer garbage") {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	sc := h.start()
	var garbage atomic.Int64
	ok, total := attack(t, 4, time.Second,
		func(i int) {
			garbage.Add(1)
			sc.post(t, "/replicache/pull", fmt.Sprintf("Bearer garbage-%d", i), pullBody("ga", nil))
		},
		func() bool { r, _ := sc.pull(t, "alice", "g-alice", nil); return r.status == 200 })
	t.Logf("victim: %d of %d pulls answered 200 while %d pulls with garbage tokens were sent", ok, total, garbage.Load())
	if ok != total {
		t.Errorf("victim: %d of %d pulls answered 200; want all", ok, total)
	}
	if v := breakerOpen(t, sc, "auth"); v != 0 {
		t.Errorf("circuit_breaker_open{kind=auth} = %v after an anonymous flood of garbage tokens", v)
	}
}

// TestOneUsersViewCannotOpenTheViewBreaker (finding 2, views): a signed-in
// user whose own data makes a view GET answer 500 pulls over and over from
// 4 goroutines; another user's pulls keep succeeding. Before: every view
// 5xx counted, whoever it came from.
func TestOneUsersViewCannotOpenTheViewBreaker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" && r.Header.Get("Authorization") == "Bearer mallory" {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	sc := h.start()
	ok, total := attack(t, 4, time.Second,
		func(i int) { sc.pull(t, "mallory", fmt.Sprint("gm", i%3), nil) },
		func() bool { r, _ := sc.pull(t, "alice", "g-alice", nil); return r.status == 200 })
	t.Logf("victim: %d of %d pulls answered 200", ok, total)
	if ok != total {
		t.Errorf("victim: %d of %d pulls answered 200; want all", ok, total)
	}
	if v := breakerOpen(t, sc, "view"); v != 0 {
		t.Errorf("circuit_breaker_open{kind=view} = %v after one user's failing view", v)
	}
}

// TestOneUserManyGroupsCannotOpenTheMutationBreaker (finding 3): one user
// re-pushes a mutation the API answers 500, from 6 client groups in turn
// (at once), while other users push; their pushes keep succeeding. Before:
// failures from different client groups counted as different sources and
// 95-100% of the other users' pushes failed.
func TestOneUserManyGroupsCannotOpenTheMutationBreaker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.Header.Get("Authorization") == "Bearer mallory" {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	sc := h.start()
	var n atomic.Int64
	ok, total := attack(t, 6, time.Second,
		func(i int) {
			g := i / 1_000_000
			sc.push(t, "mallory", fmt.Sprint("gm", g), create(fmt.Sprint("m", g), 1, "poison"))
		},
		func() bool {
			k := n.Add(1) - 1 // three users take turns, each with its next mutation
			r := sc.push(t, fmt.Sprint("user", k%3), fmt.Sprint("gu", k%3), create(fmt.Sprint("u", k%3), k/3+1, fmt.Sprint("t", k)))
			return r.status == 200
		})
	t.Logf("victims: %d of %d pushes answered 200", ok, total)
	if ok != total {
		t.Errorf("victims: %d of %d pushes answered 200; want all", ok, total)
	}
	if v := breakerOpen(t, sc, "mutation"); v != 0 {
		t.Errorf("circuit_breaker_open{kind=mutation} = %v after one user's poison mutation from 6 groups", v)
	}
}
