package proxy

import (
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestReviewRoutedDeleteReachesAPullElsewhere: a client whose poke stream
// is on replica A (where a delete was routed) pulls through replica B
// (a load balancer without sticky sessions) as soon as it is poked. That
// one pull must bring the del: the client is not poked again. Replica B
// learns of the delete only from A's announcement on the database's
// NOTIFY channel, which may reach it after the client's pull (its
// listener behind, or reconnecting: here, not yet listening); B then
// reads the source by its changes, which never show a hard delete, and
// the client holds the deleted item until the group's next full read
// (fullEvery, 10 minutes by default) or another poke.
func TestReviewRoutedDeleteReachesAPullElsewhere(t *testing.T) {
	t.Skip("BUG: a routed delete's mark travels only on the NOTIFY bus; a pull through another replica that has not heard it yet reads by changes and misses the delete, and the poke that caused the pull is not repeated (needs marks in the database, or pokes held until every replica has the mark)")
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	seed(api, "alice", 10)
	h := deltaHarness(t, api, "10m", nil)
	a, b := h.start(), h.start()
	runPokes(t, a) // B has not heard A's announcements yet
	writer, reader := newReplica(), newReplica()
	a.pullInto(t, "alice", "ga", writer)
	b.pullInto(t, "alice", "gb", reader)
	s := openStream(t, a, "Bearer alice", nil) // the reader's stream, on A
	s.waitOpen(t)
	if r := a.push(t, "alice", "ga", mut{"ca", 1, "deleteTodo", map[string]any{"id": "t003"}}); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if e := s.next(5 * time.Second); e != "poke" {
		t.Fatalf("the reader's stream got %q, want a poke", e)
	}
	b.pullInto(t, "alice", "gb", reader) // the one pull the poke causes
	if _, has := reader.state["todo/t003"]; has {
		t.Error("the reader, poked after a delete routed through A, pulled through B and still holds todo/t003")
	}
}
