package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// calls records what a pool sends to Postgres: one entry per Exec, Query,
// QueryRow or SendBatch (one round trip once pgx has the statements
// prepared on the connection, which it does once per connection), listing
// the statements it carried.
type calls struct {
	mu    sync.Mutex
	calls []string
}

func (c *calls) add(sqls ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, len(sqls))
	for i, q := range sqls {
		names[i] = statementName(q)
	}
	c.calls = append(c.calls, strings.Join(names, ","))
}

// since returns the calls made after the first n.
func (c *calls) since(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls[n:])
}

func (c *calls) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

// statementName names the statements the tests look for.
func statementName(q string) string {
	switch {
	case strings.Contains(q, "client_forbidden()") && strings.Contains(q, "mutation_rejections"):
		return "consume+reject"
	case strings.Contains(q, "client_forbidden()"):
		return "consume"
	case strings.Contains(q, "uncounted"):
		return "attempt"
	case strings.Contains(q, "nextval("):
		return "nextval"
	}
	if f := strings.Fields(q); len(f) > 0 {
		return f[0]
	}
	return ""
}

func (c *calls) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.add(d.SQL)
	return ctx
}

func (c *calls) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *calls) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var sqls []string
	for _, q := range d.Batch.QueuedQueries {
		sqls = append(sqls, q.SQL)
	}
	c.add(sqls...)
	return ctx
}

func (c *calls) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *calls) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// newTracedStore is newStore on a pool whose calls to Postgres are recorded.
func newTracedStore(t *testing.T) (*Store, *calls) {
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
	s := New(pool, Options{Schema: proxytest.NewSchema(t), WaitTimeout: 10 * time.Second})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, c
}

// settled is what the bookkeeping tables hold after a test.
type settled struct {
	lmids      map[string]int64 // every client's last mutation id
	rejections []string         // "client/mutation status mutator reason body"
	attempts   []string         // "client/mutation counted uncounted last_status"
	touched    bool             // group g's last use noted within the minute
}

func readSettled(t *testing.T, s *Store) settled {
	t.Helper()
	ctx := context.Background()
	var out settled
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT id, last_mutation_id FROM {schema}.clients`))
	out.lmids = map[string]int64{}
	var id string
	var lmid int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &lmid}, func() error { out.lmids[id] = lmid; return nil }); err != nil {
		t.Fatal(err)
	}
	rows, _ = s.pool.Query(ctx, s.sql(`SELECT format('%s/%s %s %s %s %s', client_id, mutation_id, coalesce(status, 0), mutator, reason, body)
		FROM {schema}.mutation_rejections ORDER BY client_id, mutation_id`))
	var err error
	if out.rejections, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	rows, _ = s.pool.Query(ctx, s.sql(`SELECT format('%s/%s %s %s %s', client_id, mutation_id, attempts, uncounted, last_status)
		FROM {schema}.mutation_attempts ORDER BY client_id, mutation_id`))
	if out.attempts, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT last_used_at > now() - interval '1 minute' FROM {schema}.client_groups WHERE id = 'g'`)).Scan(&out.touched); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSettle settles mutations of group g's client c against the real
// Postgres. Every case starts from the same committed state: c at last
// mutation id 1 with answered attempts of its pending mutations 2 (two)
// and 3 (one), g last used two hours ago; client "other" belongs to group
// g2 at last mutation id 1.
func TestSettle(t *testing.T) {
	t.Parallel()
	// What every case starts from.
	start := settled{
		lmids:    map[string]int64{"c": 1, "other": 1},
		attempts: []string{"c/2 2 0 503", "c/3 1 0 503"},
	}
	const unknownOutcome = "unknown outcome"
	long := "x" + strings.Repeat("é", 1000) // 2001 bytes
	for _, tc := range []struct {
		name   string
		before func(ctx context.Context, s *Store) error   // more committed state
		first  func(ctx context.Context, g *GroupTx) error // in the settling transaction, before Settle
		settle []Settlement                                // in one transaction of group g
		fail   bool                                        // the transaction then fails: rolled back
		err    error                                       // what Locked returns (errors.Is)
		errMsg string                                      // or what its error says
		count  int                                         // the last Pending's Attempts.Count
		span   time.Duration                               // and its Span, within a minute above this
		calls  []string                                    // what went to Postgres after the lock; nil: not checked
		want   func(s settled) settled                     // the end state, from the state before the transaction
	}{
		{
			// Consumed with effect: the last mutation id advances, the
			// consumed mutation's attempts go (not the next one's), the
			// group is touched; all in the COMMIT's round trip.
			name:   "applied",
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Applied}},
			calls:  []string{"consume,nextval,COMMIT"},
			want: func(s settled) settled {
				s.lmids["c"], s.attempts, s.touched = 2, []string{"c/3 1 0 503"}, true
				return s
			},
		},
		{
			// Consumed without effect: the same, and the record, in the
			// same statement (SetLastMutationID and RecordRejection take a
			// round trip more). The body is made storable.
			name: "rejected",
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Rejected, Status: 422,
				Mutator: "createTodo", Reason: "title is required", Body: "bad\x00\xff"}},
			calls: []string{"consume+reject,nextval,COMMIT"},
			want: func(s settled) settled {
				s.lmids["c"], s.attempts, s.touched = 2, []string{"c/3 1 0 503"}, true
				s.rejections = []string{"c/2 422 createTodo title is required bad\uFFFD\uFFFD"}
				return s
			},
		},
		{
			// Refused by the mapping (no status: stored NULL); a long
			// reason is cut on a rune boundary.
			name:   "rejected by the mapping",
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Rejected, Mutator: "m", Reason: long}},
			want: func(s settled) settled {
				s.lmids["c"], s.attempts, s.touched = 2, []string{"c/3 1 0 503"}, true
				s.rejections = []string{"c/2 0 m " + long[:1023] + " "}
				return s
			},
		},
		{
			// An answered attempt that counts: recorded in one round trip,
			// the count returned.
			name:   "pending, counted",
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Pending, Status: 500, Counts: true}},
			count:  3,
			calls:  []string{"attempt", "COMMIT"},
			want: func(s settled) settled {
				s.attempts = []string{"c/2 3 0 500", "c/3 1 0 503"}
				return s
			},
		},
		{
			// Not the mutation's own failure: its status is recorded, its
			// count toward giving up stays.
			name:   "pending, not counted",
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Pending, Status: 502}},
			count:  2,
			calls:  []string{"attempt", "COMMIT"},
			want: func(s settled) settled {
				s.attempts = []string{"c/2 2 1 502", "c/3 1 0 503"}
				return s
			},
		},
		{
			// A first attempt that does not count: a row for operators,
			// and nothing counted yet (count and span 0).
			name:   "pending, not counted, first attempt",
			settle: []Settlement{{ClientID: "c", MutationID: 4, Outcome: Pending, Status: 503}},
			want: func(s settled) settled {
				s.attempts = append(s.attempts, "c/4 0 1 503")
				return s
			},
		},
		{
			// The span toward giving up starts at the first counted
			// attempt, not at the uncounted ones before it (an hour ago).
			name: "pending, counted after uncounted ones",
			before: func(ctx context.Context, s *Store) error {
				if err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
					_, err := g.Settle(ctx, Settlement{ClientID: "c", MutationID: 4, Outcome: Pending, Status: 503})
					return err
				}); err != nil {
					return err
				}
				_, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.mutation_attempts SET first_at = now() - interval '1 hour' WHERE mutation_id = 4`))
				return err
			},
			settle: []Settlement{{ClientID: "c", MutationID: 4, Outcome: Pending, Status: 500, Counts: true}},
			count:  1,
			want: func(s settled) settled {
				s.attempts = []string{"c/2 2 0 503", "c/3 1 0 503", "c/4 1 1 500"}
				return s
			},
		},
		{
			// A row an older binary wrote (every attempt counted, no
			// counted_since): the span runs from its first attempt.
			name: "pending, counted, on an older binary's row",
			before: func(ctx context.Context, s *Store) error {
				_, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.mutation_attempts SET first_at = now() - interval '1 hour' WHERE mutation_id = 2`))
				return err
			},
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Pending, Status: 503, Counts: true}},
			count:  3,
			span:   time.Hour,
			want: func(s settled) settled {
				s.attempts = []string{"c/2 3 0 503", "c/3 1 0 503"}
				return s
			},
		},
		{
			// A deferred settlement goes with the next one's statement:
			// still one round trip each.
			name: "pending after applied",
			settle: []Settlement{
				{ClientID: "c", MutationID: 2, Outcome: Applied},
				{ClientID: "c", MutationID: 3, Outcome: Pending, Status: 503, Counts: true},
			},
			count: 2,
			calls: []string{"consume,nextval,attempt", "COMMIT"},
			want: func(s settled) settled {
				s.lmids["c"], s.attempts, s.touched = 2, []string{"c/3 2 0 503"}, true
				return s
			},
		},
		{
			// A later settlement of the same client does not replace a
			// held rejection: the record survives.
			name: "rejected, then applied",
			settle: []Settlement{
				{ClientID: "c", MutationID: 2, Outcome: Rejected, Status: 409, Mutator: "m", Reason: "conflict"},
				{ClientID: "c", MutationID: 3, Outcome: Applied},
			},
			calls: []string{"consume+reject,nextval,consume,COMMIT"},
			want: func(s settled) settled {
				s.lmids["c"], s.attempts, s.touched = 3, nil, true
				s.rejections = []string{"c/2 409 m conflict "}
				return s
			},
		},
		{
			// Applied below the last mutation id: it never goes back.
			name:   "applied, stale",
			settle: []Settlement{{ClientID: "c", MutationID: 1, Outcome: Applied}},
			want: func(s settled) settled {
				s.touched = true
				return s
			},
		},
		{
			// A client of another group: ErrClientForbidden at COMMIT, and
			// the whole transaction rolls back, the claim made before
			// Settle included.
			name:   "rejected, another group's client",
			first:  func(ctx context.Context, g *GroupTx) error { return g.ClaimClient(ctx, "new", 0, nil) },
			settle: []Settlement{{ClientID: "other", MutationID: 2, Outcome: Rejected, Status: 422, Reason: "no"}},
			err:    ErrClientForbidden,
			want:   func(s settled) settled { return s },
		},
		{
			// The same when a next statement carries it: that statement
			// fails, and nothing commits.
			name:  "applied, another group's client",
			first: func(ctx context.Context, g *GroupTx) error { return g.ClaimClient(ctx, "new", 0, nil) },
			settle: []Settlement{
				{ClientID: "other", MutationID: 2, Outcome: Applied},
				{ClientID: "c", MutationID: 2, Outcome: Pending, Status: 503, Counts: true},
			},
			err:  ErrClientForbidden,
			want: func(s settled) settled { return s },
		},
		{
			// A transaction that fails after settling (its consuming
			// statement already sent with the attempt) leaves nothing.
			name: "rolled back",
			settle: []Settlement{
				{ClientID: "c", MutationID: 2, Outcome: Rejected, Status: 422, Reason: "no"},
				{ClientID: "c", MutationID: 3, Outcome: Pending, Status: 503, Counts: true},
			},
			fail:  true,
			count: 2, // as the transaction saw it
			want:  func(s settled) settled { return s },
		},
		{
			// An outcome Settle does not know is an error, never a guess.
			name:   "unknown outcome",
			settle: []Settlement{{ClientID: "c", MutationID: 2, Outcome: Outcome(7)}},
			errMsg: unknownOutcome,
			want:   func(s settled) settled { return s },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, rec := newTracedStore(t)
			ctx := context.Background()
			setup := []func() error{
				func() error {
					return s.Locked(ctx, "g", "u", func(g *GroupTx) error {
						if err := g.ClaimClient(ctx, "c", 0, nil); err != nil {
							return err
						}
						if err := g.SetLastMutationID(ctx, "c", 1); err != nil {
							return err
						}
						for _, id := range []int64{2, 2, 3} {
							if _, err := g.RecordAttempt(ctx, "c", id, 503); err != nil {
								return err
							}
						}
						return nil
					})
				},
				func() error {
					return s.Locked(ctx, "g2", "u", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "other", 1) })
				},
				func() error {
					_, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET last_used_at = now() - interval '2 hours'`))
					return err
				},
			}
			for _, step := range setup {
				if err := step(); err != nil {
					t.Fatalf("setting up: %v", err)
				}
			}
			if got := readSettled(t, s); fmt.Sprint(got) != fmt.Sprint(start) {
				t.Fatalf("start = %+v, want %+v", got, start)
			}
			if tc.before != nil {
				if err := tc.before(ctx, s); err != nil {
					t.Fatalf("setting up: %v", err)
				}
			}
			before := readSettled(t, s)
			var mark int
			var last Attempts
			rolledBack := errors.New("rolled back")
			err := s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
				mark = rec.len()
				if tc.first != nil {
					if err := tc.first(ctx, g); err != nil {
						return err
					}
				}
				for _, st := range tc.settle {
					a, err := g.Settle(ctx, st)
					if err != nil {
						return err
					}
					if st.Outcome == Pending {
						last = a
					}
				}
				if tc.fail {
					return rolledBack
				}
				return nil
			})
			switch {
			case tc.fail && !errors.Is(err, rolledBack):
				t.Fatalf("Locked = %v, want the callback's error", err)
			case tc.errMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.errMsg)):
				t.Fatalf("Locked = %v, want an error saying %q", err, tc.errMsg)
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("Locked = %v, want %v", err, tc.err)
			case !tc.fail && tc.err == nil && tc.errMsg == "" && err != nil:
				t.Fatalf("Locked = %v", err)
			}
			if last.Count != tc.count || last.Span < tc.span || last.Span >= tc.span+time.Minute {
				t.Errorf("Attempts = %+v, want count %d and a span of %v (within a minute)", last, tc.count, tc.span)
			}
			if tc.calls != nil {
				if got := rec.since(mark); !slices.Equal(got, tc.calls) {
					t.Errorf("calls to Postgres after the lock = %q, want %q", got, tc.calls)
				}
			}
			want := tc.want(before)
			got := readSettled(t, s)
			if fmt.Sprint(got.lmids) != fmt.Sprint(want.lmids) {
				t.Errorf("last mutation ids = %v, want %v", got.lmids, want.lmids)
			}
			if !slices.Equal(got.rejections, want.rejections) {
				t.Errorf("rejections = %q, want %q", got.rejections, want.rejections)
			}
			if !slices.Equal(got.attempts, want.attempts) {
				t.Errorf("attempts = %q, want %q", got.attempts, want.attempts)
			}
			if got.touched != want.touched {
				t.Errorf("group touched = %v, want %v", got.touched, want.touched)
			}
		})
	}
}
