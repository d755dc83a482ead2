package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentPushesAndPullsAcrossInstances runs pushes and pulls of one
// client group at the same time through two sidecars sharing a database,
// against a slow upstream, and checks the consistency rule on every pull:
// the patch holds the effects of exactly the mutations that
// lastMutationIDChanges reports — no more, no fewer.
func TestConcurrentPushesAndPullsAcrossInstances(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.up.SetDelay(3 * time.Millisecond) // widens every window a race could use
	a, b := h.start(), h.start()
	instances := []*instance{a, b}

	const (
		clients   = 3
		perClient = 25
		batch     = 5
	)
	var wg sync.WaitGroup
	errs := make(chan string, 1000)
	stop := make(chan struct{})

	// Each client pushes its mutations in overlapping batches, alternating
	// instances, and re-sends the previous batch's tail (as a client does
	// when an answer is lost), so duplicates race with new mutations.
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := fmt.Sprintf("c%d", c)
			for start := 1; start <= perClient; start += batch {
				var muts []mut
				for id := max(1, start-2); id < min(start+batch, perClient+1); id++ {
					muts = append(muts, create(client, int64(id), fmt.Sprintf("%s-%d", client, id)))
				}
				inst := instances[(start/batch+c)%2]
				for {
					r := inst.push(t, "alice", "g", muts...)
					if r.status == http.StatusOK {
						break
					}
					errs <- fmt.Sprintf("push %s: %d %s", client, r.status, r.raw)
					return
				}
			}
		}()
	}
	// Pullers check every answer while the pushes run.
	var pulls sync.WaitGroup
	var checked sync.Map
	for p := 0; p < 2; p++ {
		pulls.Add(1)
		go func() {
			defer pulls.Done()
			n := 0
			for {
				select {
				case <-stop:
					checked.Store(p, n)
					return
				default:
				}
				r, pr := instances[p].pull(t, "alice", "g", nil)
				if r.status != http.StatusOK {
					errs <- fmt.Sprintf("pull: %d %s", r.status, r.raw)
					return
				}
				if msg := inconsistency(pr); msg != "" {
					errs <- msg
					return
				}
				n++
			}
		}()
	}
	wg.Wait()
	close(stop)
	pulls.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	total := 0
	checked.Range(func(_, v any) bool { total += v.(int); return true })
	if total < 4 {
		t.Errorf("only %d pulls ran during the pushes; the test proves little", total)
	}
	t.Logf("%d pulls checked during %d concurrent pushes", total, clients*perClient/batch)

	// Afterwards: everything applied exactly once, in order, LMIDs exact.
	_, final := a.pull(t, "alice", "g", nil)
	if msg := inconsistency(final); msg != "" {
		t.Error(msg)
	}
	for c := 0; c < clients; c++ {
		if got := final.LastMutationIDChanges[fmt.Sprintf("c%d", c)]; got != perClient {
			t.Errorf("c%d lastMutationID = %d, want %d", c, got, perClient)
		}
	}
	if dup := h.up.MultiplyApplied(); len(dup) > 0 {
		t.Errorf("applied more than once: %v", dup)
	}
	ids := h.up.TodoIDs("alice")
	if len(ids) != clients*perClient {
		t.Errorf("upstream has %d todos, want %d", len(ids), clients*perClient)
	}
	// Per client, creation order upstream is mutation order.
	last := map[string]int{}
	for _, id := range ids {
		client, n, _ := strings.Cut(id, "-")
		k, _ := strconv.Atoi(n)
		if k != last[client]+1 {
			t.Fatalf("upstream saw %s after %s-%d: out of order", id, client, last[client])
		}
		last[client] = k
	}
}

// inconsistency checks that for every client c, the view holds todos
// c-1…c-L exactly, where L is c's reported lastMutationID.
func inconsistency(p pullResult) string {
	seen := map[string]map[int]bool{}
	for _, op := range p.Patch[1:] {
		id, ok := strings.CutPrefix(op.Key, "todo/")
		if !ok {
			continue
		}
		client, n, _ := strings.Cut(id, "-")
		k, _ := strconv.Atoi(n)
		if seen[client] == nil {
			seen[client] = map[int]bool{}
		}
		seen[client][k] = true
	}
	for client, lmid := range p.LastMutationIDChanges {
		if len(seen[client]) != int(lmid) {
			return fmt.Sprintf("pull (cookie %d): %s reports lastMutationID %d but the view holds %d of its todos",
				p.Cookie.Order, client, lmid, len(seen[client]))
		}
		for k := 1; k <= int(lmid); k++ {
			if !seen[client][k] {
				return fmt.Sprintf("pull: %s-%d missing though lastMutationID is %d", client, k, lmid)
			}
		}
	}
	for client := range seen {
		if _, ok := p.LastMutationIDChanges[client]; !ok {
			return fmt.Sprintf("pull: view holds todos of %s, which lastMutationIDChanges does not report", client)
		}
	}
	return ""
}
