package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// newStore returns a migrated Store on a fresh schema, with a pool whose
// lock_timeout is lockTimeout.
func newStore(t *testing.T, lockTimeout time.Duration) *Store {
	t.Helper()
	pool, err := NewPool(context.Background(), PoolOptions{URL: proxytest.DatabaseURL(t),
		StatementTimeout: 5 * time.Second, LockTimeout: lockTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, Options{Schema: proxytest.NewSchema(t), WaitTimeout: 10 * time.Second})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestGroupLockSerializes: a second transaction on the same group waits for
// the first (and gives up with IsLockTimeout past lock_timeout), while
// another group is not held up at all.
func TestGroupLockSerializes(t *testing.T) {
	s := newStore(t, 300*time.Millisecond)
	ctx := context.Background()
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Locked(ctx, "busy", "u", func(*GroupTx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	err := s.Locked(ctx, "busy", "u", func(*GroupTx) error { return nil })
	if !IsLockTimeout(err) {
		t.Errorf("second lock of a held group: %v, want a lock timeout", err)
	}
	// While "busy" is still held: a wait here would end in a lock timeout.
	if err := s.Locked(ctx, "other", "u", func(*GroupTx) error { return nil }); err != nil {
		t.Errorf("another group: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCommitSurvivesCancellation: once the callback has run, its work is
// committed even if the caller's context ended meanwhile (the upstream
// call inside it cannot be taken back).
func TestCommitSurvivesCancellation(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	err := s.LockedClient(ctx, "g", "u", "c", func(g *GroupTx) error {
		dctx := context.WithoutCancel(ctx)
		cancel() // the client goes away mid-step
		return g.SetLastMutationID(dctx, "c", 1)
	})
	if err != nil {
		t.Fatalf("Locked: %v", err)
	}
	var lmid int64
	if err := s.pool.QueryRow(context.Background(), s.sql(`SELECT last_mutation_id FROM {schema}.clients WHERE id = 'c'`)).Scan(&lmid); err != nil || lmid != 1 {
		t.Errorf("last mutation id = %d, %v; want 1 committed", lmid, err)
	}
}

// TestLockedReportsARolledBackCommit: a transaction that failed inside the
// callback, even if the callback ignored the failure, is reported, not
// taken for committed (Postgres answers COMMIT with ROLLBACK then); and the
// connection goes back to the pool usable.
func TestLockedReportsARolledBackCommit(t *testing.T) {
	s := newStore(t, 5*time.Second)
	ctx := context.Background()
	err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error {
		_, _ = g.tx.Exec(ctx, "SELECT 1/0") // fails; ignored on purpose
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("Locked after a failed statement = %v; want a rolled-back commit", err)
	}
	for range 5 { // every pooled connection is usable again
		if err := s.Locked(ctx, "g", "alice", func(g *GroupTx) error { return nil }); err != nil {
			t.Fatalf("Locked afterwards: %v", err)
		}
	}
}
