package proxy

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// roundTrips records what a sidecar sends to Postgres: one entry per Exec,
// Query, QueryRow or SendBatch, each one round trip once pgx has the
// statements prepared on the connection (it prepares each once per
// connection), naming the statements it carried.
type roundTrips struct {
	mu    sync.Mutex
	calls []string
}

func (r *roundTrips) add(sqls ...string) {
	names := make([]string, len(sqls))
	for i, q := range sqls {
		names[i] = statementKind(q)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, strings.Join(names, ","))
}

// since returns the calls made after the first n.
func (r *roundTrips) since(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls[n:])
}

func (r *roundTrips) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// statementKind names a statement by its first word, the group's history
// (store.historySQL) as such, and the statement that consumes a mutation
// by how it writes the client's row (a plain update of a known client, or
// an upsert) and whether it notes the group's use.
func statementKind(q string) string {
	if strings.Contains(q, "client_forbidden()") {
		kind := "consume update"
		if strings.Contains(q, "clients (id, client_group_id, last_mutation_id") {
			kind = "consume upsert"
		}
		if strings.Contains(q, "touch AS") {
			kind += "+touch"
		}
		return kind
	}
	if strings.Contains(q, "group_history") {
		return "history"
	}
	if f := strings.Fields(q); len(f) > 0 {
		return f[0]
	}
	return ""
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.add(d.SQL)
	return ctx
}

func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	sqls := make([]string, 0, len(d.Batch.QueuedQueries))
	for _, q := range d.Batch.QueuedQueries {
		sqls = append(sqls, q.SQL)
	}
	r.add(sqls...)
	return ctx
}

func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// TestPushRoundTrips counts the round trips to Postgres of a push, the
// sidecar's part of a push's cost besides the API call: a known client's
// mutation takes two (BEGIN with the group's lock and the client's row;
// the consuming write, a plain UPDATE of its row, with the count of routed
// changes (nextval: SELECT), the group's history and COMMIT), however
// many of its mutations one transaction applies; a new client two more, a
// new group three more again. The group's last use is noted only when due
// (Options.TouchInterval), in the same statement.
func TestPushRoundTrips(t *testing.T) {
	t.Parallel()
	rt := &roundTrips{}
	h := newHarness(t, nil)
	h.pgTracer = rt
	sc := h.start()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		before func() // in the database
		muts   []mut
		want   []string
	}{
		{
			// A group's first push: the group is created (the locking read
			// finds no row; the INSERT, the locking read again, and the
			// client's read), then its client is claimed (INSERT) and the
			// group's clients counted for SIDECAR_MAX_CLIENTS_PER_GROUP.
			name: "a new group's first client",
			muts: []mut{create("c1", 1, "a")},
			want: []string{"BEGIN,SELECT,SELECT", "INSERT", "SELECT", "SELECT", "INSERT", "SELECT", "consume update,SELECT,history,COMMIT"},
		},
		{
			// The common case: two round trips.
			name: "one mutation of a known client",
			muts: []mut{create("c1", 2, "b")},
			want: []string{"BEGIN,SELECT,SELECT", "consume update,SELECT,history,COMMIT"},
		},
		{
			// A batch of mutations of one client: still two (the last
			// consuming write replaces the earlier ones).
			name: "three mutations of a known client",
			muts: []mut{create("c1", 3, "c"), create("c1", 4, "d"), create("c1", 5, "e")},
			want: []string{"BEGIN,SELECT,SELECT", "consume update,SELECT,history,COMMIT"},
		},
		{
			// A new client of a known group: claimed and counted, two
			// round trips more.
			name: "a new client",
			muts: []mut{create("c2", 1, "g")},
			want: []string{"BEGIN,SELECT,SELECT", "INSERT", "SELECT", "consume update,SELECT,history,COMMIT"},
		},
		{
			// The group's last use, noted over the touch interval ago:
			// noted by the consuming write, no round trip more.
			name: "last use due",
			before: func() {
				if _, err := sc.pool.Exec(ctx, `UPDATE `+pgx.Identifier{h.schema, "client_groups"}.Sanitize()+
					` SET last_used_at = now() - interval '2 hours' WHERE id = 'g'`); err != nil {
					t.Fatal(err)
				}
			},
			muts: []mut{create("c1", 6, "f")},
			want: []string{"BEGIN,SELECT,SELECT", "consume update+touch,SELECT,history,COMMIT"},
		},
	} {
		if tc.before != nil {
			tc.before()
		}
		n := rt.len()
		if r := sc.push(t, "alice", "g", tc.muts...); r.status != http.StatusOK || r.json["applied"] != float64(len(tc.muts)) {
			t.Fatalf("%s: push = %d %s", tc.name, r.status, r.raw)
		}
		if got := rt.since(n); !slices.Equal(got, tc.want) {
			t.Errorf("%s: round trips %q; want %q", tc.name, got, tc.want)
		}
	}
	var noted bool
	if err := sc.pool.QueryRow(ctx, `SELECT last_used_at > now() - interval '1 minute' FROM `+
		pgx.Identifier{h.schema, "client_groups"}.Sanitize()+` WHERE id = 'g'`).Scan(&noted); err != nil || !noted {
		t.Errorf("the group's last use noted: %v (%v); want true", noted, err)
	}
}
