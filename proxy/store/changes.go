package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// The routed changes count the writes the sidecar routed to the API, in
// the database every replica shares, so that a pull can tell whether a
// running fetch may have begun before a change it was poked for, whoever
// routed the change and whatever the replicas' notifications have
// delivered. The order that makes it work, for every write that pokes:
// the API answered the write, then the count moved (NoteChange, or with a
// settled mutation), then the poke went out, then the poked client pulled
// and read the count (ChangeCount). A fetch that read a count at least as
// large before it began therefore began after the API had the write.

// changeCountSQL reads the count: the sequence's last value, 0 before its
// first.
const changeCountSQL = `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.routed_changes`

// noteChangeSQL moves the count.
const noteChangeSQL = `SELECT nextval('{schema}.routed_changes')`

// ChangeCount reads the count of routed changes, on a pooled connection
// of its own (one round trip, no lock): for pulls that rode on another's
// fetch, in reads they share.
func (s *Store) ChangeCount(ctx context.Context) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, s.sql(changeCountSQL)).Scan(&n); err != nil {
		return 0, fmt.Errorf("reading the routed changes: %w", err)
	}
	return n, nil
}

// NoteChange moves the count of routed changes: for a write the API has
// answered, before the clients it concerns are poked (the pass-through's,
// the invalidate hook's; a settled mutation moves it with its transaction,
// see consume). Not transactional: it holds no lock.
func (s *Store) NoteChange(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, s.sql(noteChangeSQL)); err != nil {
		return fmt.Errorf("noting a routed change: %w", err)
	}
	return nil
}

// ChangeCount returns the count of routed changes as SourceStates read it
// in this transaction, or reads it now (one round trip): for the pull
// that leads a fetch, before the fetch begins.
func (g *GroupTx) ChangeCount(ctx context.Context) (int64, error) {
	if g.changesRead {
		return g.changes, nil
	}
	if err := g.tx.QueryRow(ctx, g.s.sql(changeCountSQL)).Scan(&g.changes); err != nil {
		return 0, fmt.Errorf("reading the routed changes: %w", err)
	}
	g.changesRead = true
	return g.changes, nil
}

// noteChange holds the statement that moves the count of routed changes
// until the transaction's next statement or COMMIT, which come after the
// API answered the mutation being settled and before its push pokes
// anyone. One is held at a time: a later settlement's replaces it, and
// runs after every call the transaction made. It moves the count even if
// the transaction then rolls back (a sequence is not transactional): a
// count moved for nothing only makes a pull fetch on its own.
func (g *GroupTx) noteChange() {
	g.dtx.hold("routed_changes", g.s.sql(noteChangeSQL), nil, func(_ pgconn.CommandTag, err error) error {
		if err != nil {
			return fmt.Errorf("noting a routed change: %w", err)
		}
		return nil
	})
}

// ChangeCountNow reads the count of routed changes now, in this
// transaction's connection (one round trip; a sequence is read as it is,
// not as the transaction's snapshot saw it): for the pull that leads a
// fetch, once it has sealed its flight.
func (g *GroupTx) ChangeCountNow(ctx context.Context) (int64, error) {
	var n int64
	if err := g.tx.QueryRow(ctx, g.s.sql(changeCountSQL)).Scan(&n); err != nil {
		return 0, fmt.Errorf("reading the routed changes: %w", err)
	}
	return n, nil
}
