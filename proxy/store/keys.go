package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PreviousKeysThrough returns, while the idempotency secret is being
// rotated, the client's last mutation id whose call may have gone out keyed
// with the previous secret (0: none), so that its retry carries the same
// key. current is the fingerprint of the secret this replica keys new
// mutations with; batch the most mutations of one client a transaction
// sends before it commits. Call it after ClaimClient.
//
// A consumed mutation records which secret the consuming replica keyed new
// mutations with (Settlement.KeySecret). If the client's record is not
// current (the previous secret's: a replica not yet given the new one;
// or none: nothing consumed since before the rotation, or a new client),
// the next batch after its last mutation id may have been sent keyed with
// the previous secret and its commit lost: every mutation up to the last
// mutation id + batch keeps the previous secret's key, and the mark rises
// to that, written with this transaction. Otherwise the mark stands as it
// was recorded. It depends only on what was committed, so a transaction
// that rolls back leaves its retry to work out the same mark.
func (g *GroupTx) PreviousKeysThrough(ctx context.Context, clientID string, current, batch int64) (int64, error) {
	var lmid, secret, mark int64
	if clientID == g.prefetched && g.prefetchedGroup == g.GroupID {
		lmid, secret, mark = g.prefetchedLastMutationID, g.prefetchedKeysSecret, g.prefetchedPreviousKeys
	} else {
		err := g.tx.QueryRow(ctx, g.s.sql(`SELECT last_mutation_id, coalesce(keys_secret, 0), coalesce(previous_keys_through, 0)
			FROM {schema}.clients WHERE id = $1 AND client_group_id = $2`), clientID, g.GroupID).Scan(&lmid, &secret, &mark)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, ErrClientForbidden // not claimed by this group
		}
		if err != nil {
			return 0, fmt.Errorf("reading client: %w", err)
		}
	}
	if secret == current || lmid+batch <= mark {
		return mark, nil
	}
	mark = lmid + batch
	if clientID == g.prefetched {
		g.prefetchedPreviousKeys = mark
	}
	g.dtx.hold("keys\x00"+clientID, g.s.sql(`UPDATE {schema}.clients
			SET previous_keys_through = greatest(coalesce(previous_keys_through, 0), $2) WHERE id = $1`),
		[]any{clientID, mark}, func(_ pgconn.CommandTag, err error) error {
			if err != nil {
				return fmt.Errorf("marking the previous secret's keys: %w", err)
			}
			return nil
		})
	return mark, nil
}
