package proxytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// IdempotentAPI is a legacy API that honours Idempotency-Key: a repeated
// key gets the first answer again and has no second effect. It records
// every call, so a test can count repeats and check order.
type IdempotentAPI struct {
	Server  *httptest.Server
	mu      sync.Mutex
	seen    map[string]bool
	calls   map[string]int
	effects []string // "<client>:<id>" of each effect, in the order they happened
}

// NewIdempotentAPI starts an IdempotentAPI, stopped when the test ends. Its
// GETs answer an empty list.
func NewIdempotentAPI(t testing.TB) *IdempotentAPI {
	t.Helper()
	a := &IdempotentAPI{seen: map[string]bool{}, calls: map[string]int{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // the request was cut off (a SIGKILL mid-call): no effect, as a real API
		}
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, `[]`)
			return
		}
		key := r.Header.Get("Idempotency-Key")
		// Which mutation this is: {"c": client, "n": id} in the body when
		// the test sends it (keys are opaque HMACs), else the key.
		var m struct {
			C string `json:"c"`
			N int    `json:"n"`
		}
		identity := key
		if json.Unmarshal(body, &m) == nil && m.C != "" {
			identity = fmt.Sprintf("%s:%d", m.C, m.N)
		}
		a.mu.Lock()
		a.calls[key]++
		if !a.seen[key] {
			a.seen[key] = true
			a.effects = append(a.effects, identity)
		}
		a.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(a.Server.Close)
	return a
}

// Check verifies every key of clients×n took effect, each client's in
// order, and returns how many calls were repeats (answered from the
// idempotency record) and how many mutations never took effect.
func (a *IdempotentAPI) Check(t testing.TB, clients []string, n int) (repeats, lost int) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	next := map[string]int{}
	for _, key := range a.effects {
		client, id, _ := strings.Cut(key, ":")
		var k int
		if _, err := fmt.Sscan(id, &k); err != nil {
			t.Errorf("effect key %q has no mutation id", key)
		}
		if k != next[client]+1 {
			t.Errorf("client %s: mutation %d took effect after %d (out of order or lost)", client, k, next[client])
		}
		next[client] = k
	}
	for _, c := range clients {
		if next[c] != n {
			t.Errorf("client %s: last effect %d, want %d", c, next[c], n)
		}
	}
	lost = len(clients)*n - len(a.effects)
	for key, c := range a.calls {
		repeats += c - 1
		if !a.seen[key] {
			t.Errorf("key %s called but never applied", key)
		}
	}
	return repeats, lost
}
