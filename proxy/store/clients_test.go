package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestGroupOwnership: a group belongs to the user who first used it, a
// client to the group it first appeared in, and a deleted group says so.
func TestGroupOwnership(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	noop := func(*GroupTx) error { return nil }
	if err := s.Locked(ctx, "g1", "alice", func(g *GroupTx) error {
		return errors.Join(g.ClaimClient(ctx, "c1", 0, nil), g.ClaimClient(ctx, "c2", 0, nil))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Locked(ctx, "g1", "bob", noop); !errors.Is(err, ErrGroupForbidden) {
		t.Errorf("bob locking alice's group: %v, want ErrGroupForbidden", err)
	}
	err := s.Locked(ctx, "g2", "alice", func(g *GroupTx) error {
		_, err := g.CheckClients(ctx, []string{"c3", "c1"}, 0)
		return err
	})
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("claiming g1's client for g2: %v, want ErrClientForbidden", err)
	}
	// The failed transaction rolled back: c3 was not registered with g2.
	err = s.Locked(ctx, "g3", "alice", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c3", 1) })
	if err != nil {
		t.Errorf("c3 should be free after the rollback: %v", err)
	}
	err = s.LockedClient(ctx, "g2", "alice", "c1", func(g *GroupTx) error {
		_, err := g.LastMutationID(ctx, "c1")
		return err
	})
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("LastMutationID of g1's client in g2: %v, want ErrClientForbidden", err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.client_groups SET deleted_at = now() WHERE id = 'g1'`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Locked(ctx, "g1", "alice", noop); !errors.Is(err, ErrGroupDeleted) {
		t.Errorf("locking a deleted group: %v, want ErrGroupDeleted", err)
	}
}

// TestMutationBookkeeping: last mutation ids and rejections are recorded
// only when the callback succeeds, and read back per group.
func TestMutationBookkeeping(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.LockedClient(ctx, "g", "u", "c1", func(g *GroupTx) error {
		if lmid, err := g.LastMutationID(ctx, "c1"); err != nil || lmid != 0 {
			t.Errorf("new client: lmid %d, %v", lmid, err)
		}
		if err := g.SetLastMutationID(ctx, "c1", 1); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Locked returned %v, want the callback's error", err)
	}
	err = s.LockedClient(ctx, "g", "u", "c1", func(g *GroupTx) error {
		if lmid, err := g.LastMutationID(ctx, "c1"); err != nil || lmid != 0 {
			t.Errorf("after a rolled-back step: lmid %d, %v; want 0", lmid, err)
		}
		if err := g.SetLastMutationID(ctx, "c1", 2); err != nil {
			return err
		}
		return g.RecordRejection(ctx, Rejection{ClientID: "c1", MutationID: 2, Mutator: "m", Status: 422, Reason: "no", Body: "{}"})
	})
	if err != nil {
		t.Fatal(err)
	}
	// A retried rejection is recorded once.
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		return g.RecordRejection(ctx, Rejection{ClientID: "c1", MutationID: 2, Mutator: "m", Reason: "again"})
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var reason string
	if err := s.pool.QueryRow(ctx, s.sql(`SELECT count(*), min(reason) FROM {schema}.mutation_rejections`)).Scan(&n, &reason); err != nil || n != 1 || reason != "no" {
		t.Errorf("rejections: %d (%q), %v; want the first one only", n, reason, err)
	}
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		if err := g.SetLastMutationID(ctx, "c2", 5); err != nil {
			return err
		}
		lmids, err := g.LastMutationIDs(ctx)
		if err != nil {
			return err
		}
		if len(lmids) != 2 || lmids["c1"] != 2 || lmids["c2"] != 5 {
			t.Errorf("LastMutationIDs = %v", lmids)
		}
		known, err := g.CheckClients(ctx, []string{"c1", "c3"}, 0)
		if err != nil {
			return err
		}
		if len(known) != 1 || known["c1"] != 2 {
			t.Errorf("CheckClients = %v, want only the known c1 (it creates nothing)", known)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestClientCaps: a new client fits under the group's limit by pruning the
// least recently active client idle for over a day, never one the claim
// spares; when no client may go, the claim fails and creates nothing.
func TestClientCaps(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	claim := func(id string) error {
		return s.Locked(ctx, "g", "u", func(g *GroupTx) error { return g.ClaimClient(ctx, id, 3, nil) })
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := claim(id); err != nil {
			t.Fatal(err)
		}
	}
	var tooMany *TooManyClientsError
	if err := claim("d"); !errors.As(err, &tooMany) || tooMany.Limit != 3 {
		t.Fatalf("a fourth active client: %v, want TooManyClientsError", err)
	}
	err := s.Locked(ctx, "g", "u", func(g *GroupTx) error {
		_, err := g.CheckClients(ctx, []string{"a", "d"}, 3)
		return err
	})
	if !errors.As(err, &tooMany) {
		t.Errorf("CheckClients with a new client over the limit: %v", err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.clients SET updated_at = now() - interval '2 days' WHERE id IN ('b', 'c')`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, s.sql(`UPDATE {schema}.clients SET updated_at = now() - interval '3 days' WHERE id = 'c'`)); err != nil {
		t.Fatal(err)
	}
	if err := claim("d"); err != nil {
		t.Fatalf("a fourth client with idle ones to prune: %v", err)
	}
	rows, _ := s.pool.Query(ctx, s.sql(`SELECT id FROM {schema}.clients ORDER BY id`))
	ids, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	if strings.Join(ids, ",") != "a,b,d" {
		t.Errorf("clients = %v, want c (the least recently active) pruned", ids)
	}
	// The claim of a push that carries b's mutations too spares b, the
	// only idle client left.
	err = s.Locked(ctx, "g", "u", func(g *GroupTx) error { return g.ClaimClient(ctx, "e", 3, []string{"b", "e"}) })
	if !errors.As(err, &tooMany) {
		t.Errorf("a new client whose push spares the only idle one: %v, want TooManyClientsError", err)
	}
	rows, _ = s.pool.Query(ctx, s.sql(`SELECT id FROM {schema}.clients ORDER BY id`))
	ids, _ = pgx.CollectRows(rows, pgx.RowTo[string])
	if strings.Join(ids, ",") != "a,b,d" {
		t.Errorf("clients = %v after a claim that spares b, want a,b,d", ids)
	}
}

// TestDeferredLastMutationID: the last mutation id is written with the
// transaction's next statement or its COMMIT; a failure there (the client
// belongs to another group) fails the transaction with ErrClientForbidden
// and changes nothing.
func TestDeferredLastMutationID(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	if err := s.Locked(ctx, "g1", "alice", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c1", 3) }); err != nil {
		t.Fatal(err)
	}
	err := s.Locked(ctx, "g2", "alice", func(g *GroupTx) error { return g.SetLastMutationID(ctx, "c1", 9) })
	if !errors.Is(err, ErrClientForbidden) {
		t.Errorf("writing g1's client from g2 = %v; want ErrClientForbidden at commit", err)
	}
	err = s.Locked(ctx, "g1", "alice", func(g *GroupTx) error {
		lmids, err := g.LastMutationIDs(ctx)
		if err == nil && lmids["c1"] != 3 {
			err = fmt.Errorf("c1 at %d after the failed write, want 3", lmids["c1"])
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}
