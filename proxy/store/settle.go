package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Outcome is what one upstream answer made of a mutation.
type Outcome uint8

const (
	// Pending: the mutation stays pending, to be sent again. Its answered
	// attempt is recorded. The zero value: when in doubt, a mutation stays
	// pending rather than being consumed.
	Pending Outcome = iota
	// Applied: the mutation is consumed, with its effect.
	Applied
	// Rejected: the mutation is consumed without effect (a business error,
	// a mapping's refusal, or given up on), and a rejection is recorded.
	Rejected
)

func (o Outcome) String() string {
	switch o {
	case Pending:
		return "pending"
	case Applied:
		return "applied"
	case Rejected:
		return "rejected"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Settlement is what one upstream answer to a mutation came to, for Settle.
type Settlement struct {
	ClientID   string
	MutationID int64
	Outcome    Outcome
	// Status is the upstream's HTTP status: a Pending attempt's last
	// status (0: no answer), a Rejected mutation's (0: refused by the
	// mapping, not the upstream), or an Applied one's (for the group's
	// history only).
	Status int
	// Mutator, Reason and Body describe a Rejected mutation for its
	// rejection record (made storable and cut as RecordRejection does).
	// The mutator and reason are in the group's history too (any
	// outcome's mutator); the body is not.
	Mutator, Reason, Body string
	// GaveUp says a Rejected mutation was given up on (the give-up
	// valve), for the group's history. Unused otherwise.
	GaveUp bool
	// Counts says a Pending attempt counts toward giving up: the failure is
	// the mutation's own. False for one that is not (the API was down for
	// everyone, say): it is recorded for operators, its count unchanged.
	// Unused otherwise.
	Counts bool
	// KeySecret is the fingerprint of the idempotency secret the replica
	// keys new mutations with (mutators.SecretFingerprint), recorded in
	// the client's row with a consumed mutation for PreviousKeysThrough (0:
	// left as it is). Unused for Pending.
	KeySecret int64
	// ChangeFor is whose count of routed changes a consumed mutation
	// moves (see ChangeCounts): the user its push pokes, when it pokes
	// only that user's streams; "" (everyone's) otherwise. Unused for
	// Pending.
	ChangeFor string
}

// Settle records what one upstream answer to the client's mutation came
// to, in one store call:
//
//   - Applied: the client's last mutation id advances to MutationID (never
//     down), the attempts recorded for its mutations up to there are
//     forgotten, and the group's last use is noted (at most once per
//     Options.TouchInterval). A new client's row is created.
//   - Rejected: the same, and the rejection is recorded (once: a repeat
//     keeps the first record), in the same statement.
//   - Pending: the answered attempt is recorded, counted toward giving up
//     if Counts, and Settle returns the counted attempts so far and their
//     span (since the first counted one; both 0 when none counted yet).
//
// Applied and Rejected are deferred: their one statement goes to Postgres
// with the transaction's next statement or its COMMIT (no round trip of
// its own), and Settle returns zero Attempts and nil. If another group has
// registered the client (ClaimClient, before the upstream call, makes that
// impossible; this is the backstop), the statement aborts the transaction,
// which rolls back whole, and the statement or COMMIT that carried it, and
// so Locked, fails with ErrClientForbidden. Any other failure of it fails
// them too ("settling mutation: …"). A later Applied or SetLastMutationID
// of the same client in the same transaction replaces a deferred Applied
// (as SetLastMutationID's replace each other); a Rejected is never
// replaced. Pending runs at once: one round trip, which also carries any
// deferred statement. An Outcome Settle does not know is an error.
//
// Every settlement is also an event of the group's history (see
// Inspect), written with the COMMIT (one statement for all of them).
//
// Everything is durable once the transaction commits, shared by every
// replica, and gone if it rolls back.
func (g *GroupTx) Settle(ctx context.Context, s Settlement) (Attempts, error) {
	g.noteSettlement(s)
	switch s.Outcome {
	case Pending:
		return g.recordAttempt(ctx, s)
	case Applied, Rejected:
		g.consume(s)
		return Attempts{}, nil
	}
	return Attempts{}, fmt.Errorf("settling mutation %d: unknown outcome %v", s.MutationID, s.Outcome)
}

// The statement that consumes a mutation ($1 client, $2 group, $3
// mutation id) advances the client's last mutation id, never down, notes
// the secret the replica keys new mutations with ($4, NULL: left as it
// is), forgets the attempts of the mutations it consumes, and, when due,
// notes the group's use. If another group has registered the client, the
// write changes no row and client_forbidden() aborts the statement, and
// so the transaction: nothing of it commits.
//
// consumeInsertSQL is its first part for a client the transaction has not
// read: its row may be new. consumeUpdateSQL is the part for a client
// read with the lock or claimed (LockedClient, ClaimClient): its row is
// there, and a plain UPDATE writes it (an upsert would also lock the row
// first, one more WAL record).
const (
	consumeInsertSQL = `WITH upsert AS (
		INSERT INTO {schema}.clients (id, client_group_id, last_mutation_id, keys_secret) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET last_mutation_id = greatest({schema}.clients.last_mutation_id, excluded.last_mutation_id), updated_at = now(),
			keys_secret = coalesce(excluded.keys_secret, {schema}.clients.keys_secret)
		WHERE {schema}.clients.client_group_id = excluded.client_group_id
		RETURNING 1)`
	consumeUpdateSQL = `WITH upsert AS (
		UPDATE {schema}.clients SET last_mutation_id = greatest(last_mutation_id, $3), updated_at = now(),
			keys_secret = coalesce($4::bigint, keys_secret)
		WHERE id = $1 AND client_group_id = $2
		RETURNING 1)`
	consumeForgetSQL = `,
	forget AS (
		DELETE FROM {schema}.mutation_attempts WHERE client_id = $1 AND mutation_id <= $3)`
	// consumeTouchSQL notes the group's use, in a transaction that locked
	// the group when its last use was noted over Options.TouchInterval ago;
	// a second consume of the same transaction finds it noted.
	consumeTouchSQL = `,
	touch AS (
		UPDATE {schema}.client_groups SET last_used_at = now() WHERE id = $2 AND last_used_at < now())`
	// consumeRejectSQL records the rejection ($5 mutator, $6 status or
	// NULL, $7 reason, $8 body).
	consumeRejectSQL = `,
	reject AS (
		INSERT INTO {schema}.mutation_rejections (client_id, mutation_id, client_group_id, mutator, status, reason, body)
		VALUES ($1, $3, $2, $5, $6, $7, $8)
		ON CONFLICT (client_id, mutation_id) DO NOTHING)`
	consumeCheckSQL = `
	SELECT {schema}.client_forbidden() WHERE NOT EXISTS (SELECT 1 FROM upsert)`
)

// consume holds the statement that consumes s's mutation (Applied or
// Rejected) until the transaction's next statement or COMMIT.
func (g *GroupTx) consume(s Settlement) {
	defer g.noteChange(s.ChangeFor) // the API answered it; its push pokes after the COMMIT
	var keySecret *int64
	if s.KeySecret != 0 {
		keySecret = &s.KeySecret
	}
	q := consumeInsertSQL
	if s.ClientID == g.prefetched && g.prefetchedGroup == g.GroupID {
		q = consumeUpdateSQL
	}
	if s.ClientID == g.prefetched {
		// The client's next mutation in this transaction reads its last
		// mutation id (and the secret now recorded) from here.
		g.prefetchedGroup, g.prefetchedLastMutationID = g.GroupID, s.MutationID
		if keySecret != nil {
			g.prefetchedKeysSecret = s.KeySecret
		}
	}
	q += consumeForgetSQL
	if g.touchDue {
		// Every consume of the transaction carries it (a later one of the
		// client replaces the held statement); the first to run notes it.
		q += consumeTouchSQL
	}
	key := "lmid\x00" + s.ClientID
	args := []any{s.ClientID, g.GroupID, s.MutationID, keySecret}
	if s.Outcome == Rejected {
		// Its own key: a later settlement of the client must not replace
		// it, or the record would be lost.
		key = "reject\x00" + s.ClientID + "\x00" + strconv.FormatInt(s.MutationID, 10)
		q += consumeRejectSQL
		var status *int
		if s.Status != 0 {
			status = &s.Status
		}
		args = append(args, safeText(s.Mutator, 512), status, safeText(s.Reason, 1024), safeText(s.Body, 4096))
	}
	g.dtx.hold(key, g.s.sql(q+consumeCheckSQL), args, func(_ pgconn.CommandTag, err error) error {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == clientForbiddenCode {
			return ErrClientForbidden
		}
		if err != nil {
			return fmt.Errorf("settling mutation: %w", err)
		}
		return nil
	})
}

// attemptSQL records an answered attempt of a pending mutation ($1 client,
// $2 mutation id, $3 group, $4 status, $5 whether it counts) and returns
// the counted attempts and their span in seconds. A row begun by uncounted
// attempts notes when the first counted one came (counted_since): the span
// toward giving up starts there.
const attemptSQL = `INSERT INTO {schema}.mutation_attempts AS a
		(client_id, mutation_id, client_group_id, attempts, uncounted, last_status, last_at)
	VALUES ($1, $2, $3, CASE WHEN $5::boolean THEN 1 ELSE 0 END, CASE WHEN $5::boolean THEN 0 ELSE 1 END, $4, now())
	ON CONFLICT (client_id, mutation_id) DO UPDATE SET
		attempts = a.attempts + excluded.attempts,
		uncounted = a.uncounted + excluded.uncounted,
		counted_since = CASE WHEN a.attempts = 0 AND excluded.attempts > 0 THEN now() ELSE a.counted_since END,
		last_status = excluded.last_status,
		last_at = excluded.last_at
	RETURNING attempts, CASE WHEN attempts = 0 THEN 0 ELSE extract(epoch FROM now() - coalesce(counted_since, first_at)) END::float8`

// recordAttempt records s's answered attempt (Pending), sending any
// deferred statement in the same round trip.
func (g *GroupTx) recordAttempt(ctx context.Context, s Settlement) (Attempts, error) {
	br, err := g.dtx.run(ctx, &pgx.QueuedQuery{SQL: g.s.sql(attemptSQL),
		Arguments: []any{s.ClientID, s.MutationID, g.GroupID, s.Status, s.Counts}})
	if err != nil {
		return Attempts{}, err
	}
	var a Attempts
	var seconds float64
	err = br.QueryRow().Scan(&a.Count, &seconds)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Attempts{}, fmt.Errorf("recording attempt: %w", err)
	}
	a.Span = time.Duration(seconds * float64(time.Second))
	return a, nil
}
