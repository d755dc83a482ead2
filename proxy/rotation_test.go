package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
)

// keyWith is the idempotency key of mutation id of client in group, sent by
// user, under secret.
func keyWith(secret, user, group, client string, id int64) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(user + "\x00" + group + "\x00" + client + "\x00" + strconv.FormatInt(id, 10) + "\x00"))
	return hex.EncodeToString(mac.Sum(nil))
}

// TestRotatingTheIdempotencySecret (security round 3, low): a batch goes
// out keyed with the old secret, the API answers every call, and the
// transaction's commit is lost (its connection dies). The secret is then
// rotated, SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS naming the old one: the
// client's retry carries the keys the calls went out with, so the API
// replays them instead of applying them again, as does every mutation that
// may have gone out in such a batch (up to 64 past the last acknowledged
// one); later mutations carry the new secret's keys. Once the previous
// secret is removed, new keys only. Before: the retry carried the new
// secret's keys, and the API applied the three mutations a second time.
func TestRotatingTheIdempotencySecret(t *testing.T) {
	t.Parallel()
	const newSecret = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	h := newHarness(t, nil) // SIDECAR_IDEMPOTENCY_SECRET=testSecret
	a := h.start()
	var mu sync.Mutex
	lose := "" // the key of the call during which the transaction is killed
	h.up.SetHook(func(_ http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		kill := lose != "" && r.Header.Get("Idempotency-Key") == lose
		if kill {
			lose = "" // once
		}
		mu.Unlock()
		if kill {
			// The API answers this call (and has answered the batch's
			// others); the transaction that sent them dies before its
			// commit.
			var n int
			err := a.pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE state = 'idle in transaction' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()`, h.schema).Scan(&n)
			if err != nil || n != 1 {
				t.Errorf("terminated %d transactions (%v), want 1", n, err)
			}
		}
		return false
	})
	muts := func(from, to int64) []mut {
		var out []mut
		for id := from; id <= to; id++ {
			out = append(out, create("c", id, fmt.Sprint("x", id)))
		}
		return out
	}
	mu.Lock()
	lose = keyWith(testSecret, "alice", "g", "c", 3)
	mu.Unlock()
	if r := a.push(t, "alice", "g", muts(1, 3)...); r.status == 200 && r.str("error") == "" {
		t.Fatalf("the push whose commit was lost answered %d %s", r.status, r.raw)
	}
	// The batch's transaction may have committed before mutation 3 (a
	// batch also ends after 20 ms); mutation 3 and those sent with it
	// after the last commit are lost.
	acked := h.lmid(t, a.pool, "c")
	if acked >= 3 {
		t.Fatalf("lastMutationID %d after the lost commit, want below 3", acked)
	}

	// Rotated: a replica with the new secret and the old one as previous.
	h.env["SIDECAR_IDEMPOTENCY_SECRET"] = newSecret
	h.env["SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS"] = testSecret
	b := h.start()
	if r := b.push(t, "alice", "g", muts(1, 66)...); r.status != 200 || h.lmid(t, b.pool, "c") != 66 {
		t.Fatalf("the retry and more: %d %s, lastMutationID %d", r.status, r.raw, h.lmid(t, b.pool, "c"))
	}
	// The previous secret removed.
	delete(h.env, "SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS")
	c := h.start()
	if r := c.push(t, "alice", "g", muts(67, 67)...); r.status != 200 {
		t.Fatalf("push after the rotation: %d %s", r.status, r.raw)
	}

	for id := int64(1); id <= 67; id++ {
		want, other := keyWith(testSecret, "alice", "g", "c", id), keyWith(newSecret, "alice", "g", "c", id)
		if id > acked+64 { // past what may have gone out in the lost batch, or one like it
			want, other = other, want
		}
		if h.up.CallsFor(want) == 0 || h.up.CallsFor(other) != 0 {
			t.Errorf("mutation %d went out %d times keyed with the secret it should be, %d with the other", id, h.up.CallsFor(want), h.up.CallsFor(other))
		}
	}
	for id := int64(1); id <= 3; id++ {
		want := 2 // sent, lost, sent again
		if id <= acked {
			want = 1 // committed before the loss
		}
		if n := h.up.CallsFor(keyWith(testSecret, "alice", "g", "c", id)); n != want {
			t.Errorf("mutation %d was called %d times with its key, want %d", id, n, want)
		}
	}
	if twice := h.up.MultiplyApplied(); len(twice) > 0 {
		t.Errorf("calls applied more than once: %v", twice)
	}
	if ids := h.up.TodoIDs("alice"); len(ids) != 67 {
		t.Errorf("the API holds %d todos, want 67", len(ids))
	}
}
