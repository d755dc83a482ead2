package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// newHistoryStore is a store keeping history events of each group, on a
// pool whose calls to Postgres are recorded.
func newHistoryStore(t *testing.T, history int) (*Store, *calls) {
	t.Helper()
	pc, err := PoolConfig(PoolOptions{URL: proxytest.DatabaseURL(t), StatementTimeout: 5 * time.Second, LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := &calls{}
	pc.ConnConfig.Tracer = c
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, Options{Schema: proxytest.NewSchema(t), WaitTimeout: 10 * time.Second, HistoryPerGroup: history})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, c
}

// describe is an event in a line, for comparing.
func describe(e Event) string {
	if e.Kind == EventPull {
		return fmt.Sprintf("pull %s order=%d v=%d since=%d +%d -%d", e.Outcome, e.CookieOrder, e.Version, e.Since, e.Puts, e.Dels)
	}
	return fmt.Sprintf("mutation %s/%d %s %s %d %q counted=%v", e.ClientID, e.MutationID, e.Mutator, e.Outcome, e.Status, e.Reason, e.Counted)
}

// historyScenario is what a push and a pull of group g do to the
// bookkeeping: an applied and a rejected mutation in one transaction, a
// pending answer then a give-up in another, then a pull transaction
// answering three pulls (a reset, a diff that changed nothing, a diff).
// It returns the calls to Postgres each transaction made after its lock.
func historyScenario(t *testing.T, s *Store, c *calls) [][]string {
	t.Helper()
	ctx := context.Background()
	var out [][]string
	step := func(client string, fn func(g *GroupTx) error) {
		t.Helper()
		var n int
		err := s.LockedClient(ctx, "g", "u", client, func(g *GroupTx) error {
			n = c.len()
			return fn(g)
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c.since(n))
	}
	step("c", func(g *GroupTx) error {
		if _, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 1, Outcome: Applied, Status: 201, Mutator: "createTodo"}); err != nil {
			return err
		}
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 2, Outcome: Rejected, Status: 422, Mutator: "updateTodo",
			Reason: "upstream answered 422", Body: `{"error":"title is required"}`})
		return err
	})
	step("c", func(g *GroupTx) error {
		if _, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 3, Outcome: Pending, Status: 503, Mutator: "createTodo", Counts: true}); err != nil {
			return err
		}
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 3, Outcome: Rejected, Status: 503, Mutator: "createTodo",
			Reason: "gave up after 3 attempts over 1m0s", GaveUp: true})
		return err
	})
	step("", func(g *GroupTx) error {
		g.NotePulls([]PullNote{{Outcome: PullReset, Puts: 3}, {Outcome: PullDiff, Since: 1}, {Outcome: PullDiff, Since: 1, Puts: 1, Dels: 2}})
		_, err := g.IssueCookies(ctx, []int64{0, 1, 1}, nil, nil)
		return err
	})
	return out
}

// TestGroupHistory: every settlement of a mutation, and every pull that
// changed what its client holds, is an event of the group's history, read
// back newest first by Inspect; recording it adds no round trip to a push
// or a pull (the same steps make as many calls with the history off), and
// a push's transaction writes it in one statement, with its COMMIT; a
// diff that changed nothing is not recorded; no body is; and the history
// keeps only the newest HistoryPerGroup events, trimmed by the statement
// that adds them, even when one transaction adds more than that.
func TestGroupHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, c := newHistoryStore(t, 6)
	with := historyScenario(t, s, c)
	off, offCalls := newHistoryStore(t, 0)
	without := historyScenario(t, off, offCalls)
	for i := range with {
		if len(with[i]) != len(without[i]) {
			t.Errorf("transaction %d: %d round trips with the history (%q), %d without (%q)", i+1, len(with[i]), with[i], len(without[i]), without[i])
		}
	}
	// The history went with the statements there were anyway: a push's
	// with its COMMIT, one statement for the transaction; a pull's with
	// its cookies.
	if want := [][]string{{"consume,nextval,consume+reject,WITH,COMMIT"}, {"attempt", "consume+reject,nextval,WITH,COMMIT"}, {"UPDATE,WITH", "COMMIT"}}; !slices.EqualFunc(with, want, slices.Equal) {
		t.Errorf("calls = %q, want %q", with, want)
	}

	st, err := s.Inspect(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range st.History {
		got = append(got, describe(e))
	}
	want := []string{
		"pull diff order=3 v=0 since=1 +1 -2",
		"pull reset order=1 v=0 since=0 +3 -0",
		`mutation c/3 createTodo abandoned 503 "gave up after 3 attempts over 1m0s" counted=false`,
		`mutation c/3 createTodo pending 503 "" counted=true`,
		`mutation c/2 updateTodo rejected 422 "upstream answered 422" counted=false`,
		`mutation c/1 createTodo applied 201 "" counted=false`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("history =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st.User != "u" || st.CookieOrder != 3 || len(st.Clients) != 1 || st.Clients[0].ID != "c" || st.Clients[0].LastMutationID != 3 {
		t.Errorf("group = user %q, cookie order %d, clients %+v; want u, 3, c at 3", st.User, st.CookieOrder, st.Clients)
	}
	if len(st.Rejections) != 2 || st.Rejections[1].Body != `{"error":"title is required"}` {
		t.Errorf("rejections = %+v; want both, with the body the record holds", st.Rejections)
	}
	if off, err := off.Inspect(ctx, "g"); err != nil || len(off.History) != 0 {
		t.Errorf("with HistoryPerGroup 0: %d events (%v), want none", len(off.History), err)
	}

	// More than the cap in one transaction, then one more: the newest six.
	err = s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
		for id := int64(4); id <= 13; id++ {
			if _, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: id, Outcome: Applied, Status: 201, Mutator: "m"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 14, Outcome: Applied, Status: 200, Mutator: "m"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, err = s.Inspect(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, e := range st.History {
		ids = append(ids, e.MutationID)
	}
	var rows int
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT count(*) FROM {schema}.group_history`)).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []int64{14, 13, 12, 11, 10, 9}) || rows != 6 {
		t.Errorf("after 11 more events: history holds mutations %v (%d rows); want the newest 6, 14 down to 9", ids, rows)
	}

	if _, err := s.Inspect(ctx, "nobody"); !errors.Is(err, ErrNoGroup) {
		t.Errorf("Inspect of an unknown group: %v, want ErrNoGroup", err)
	}
}

// TestInspectRecord: Inspect reads a group's record (entries, removals,
// logical size, version), the state of each source of it, and the
// attempts of its pending mutations.
func TestInspectRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newHistoryStore(t, 50)
	read := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	for _, keys := range [][]string{{"a", "bb", "ccc"}, {"a", "bb"}} {
		err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
			change, err := g.CompareView(ctx, len(keys), func(i int) (string, uint64) { return keys[i], 7 }, nil, nil)
			if err != nil {
				return err
			}
			g.StageSources([]SourceState{{Source: "src1", Watermark: "2024-05-01", FullAt: read, ReadAt: read}})
			_, err = g.IssueCookies(ctx, []int64{0}, change, nil)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
		_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 1, Outcome: Pending, Status: 503})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Inspect(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	r := st.Record
	if r.ID == 0 || r.Version != 2 || r.Entries != 2 || r.Removed != 1 || r.Bytes != int64(len("a")+len("bb")+len("ccc"))+3*recordRowBytes {
		t.Errorf("record = %+v; want version 2, 2 entries, 1 removed, %d bytes", r, 6+3*recordRowBytes)
	}
	if len(st.Sources) != 1 || st.Sources[0].Watermark != "2024-05-01" || !st.Sources[0].ReadAt.Equal(read) {
		t.Errorf("sources = %+v; want src1 with its watermark, read at %v", st.Sources, read)
	}
	if len(st.Pending) != 1 || st.Pending[0].MutationID != 1 || st.Pending[0].Uncounted != 1 || st.Pending[0].LastStatus != 503 {
		t.Errorf("pending = %+v; want c/1 with one uncounted 503", st.Pending)
	}
}
