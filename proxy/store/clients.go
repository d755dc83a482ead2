package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// CheckClients checks, before a push of several clients applies anything,
// that none of ids belongs to another group (ErrClientForbidden) and that
// the new ones fit under maxPerGroup clients (0: no limit), pruning the
// group's least recently active clients idle for over a day to make room
// (a *TooManyClientsError when that is not enough). It creates nothing:
// a client's row appears when one of its mutations is processed
// (ClaimClient). It returns the last mutation ids of the known clients.
func (g *GroupTx) CheckClients(ctx context.Context, ids []string, maxPerGroup int) (map[string]int64, error) {
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT id, client_group_id, last_mutation_id FROM {schema}.clients WHERE id = ANY($1)`), ids)
	if err != nil {
		return nil, fmt.Errorf("reading clients: %w", err)
	}
	lmids := make(map[string]int64, len(ids))
	var id, group string
	var lmid int64
	_, err = pgx.ForEachRow(rows, []any{&id, &group, &lmid}, func() error {
		if group != g.GroupID {
			return ErrClientForbidden
		}
		lmids[id] = lmid
		return nil
	})
	if err != nil {
		return nil, err
	}
	if fresh := len(ids) - len(lmids); fresh > 0 {
		// Never the push's own clients: one idle for a day may have
		// mutations in it, pushed by another client of its group.
		if err := g.makeRoom(ctx, fresh, maxPerGroup, "", ids); err != nil {
			return nil, err
		}
	}
	return lmids, nil
}

// TooManyClientsError: a new client would take the group past its limit,
// and none of its clients has been idle long enough to be pruned.
type TooManyClientsError struct{ Limit int }

func (e *TooManyClientsError) Error() string {
	return fmt.Sprintf("the client group already has %d clients, all active within a day", e.Limit)
}

// idleClientAge is how long a client must have been idle before it may be
// pruned to make room: the Replicache client forgets a client after a day.
const idleClientAge = "1 day"

// makeRoom makes room for fresh new clients under maxPerGroup (0: no
// limit), pruning the least recently active clients idle for over a day
// (never except, the new client counted in fresh, nor one of keep),
// counted in PrunedClients.
func (g *GroupTx) makeRoom(ctx context.Context, fresh, maxPerGroup int, except string, keep []string) error {
	if maxPerGroup <= 0 {
		return nil
	}
	var count int
	if err := g.tx.QueryRow(ctx, g.s.sql(`SELECT count(*) FROM {schema}.clients WHERE client_group_id = $1 AND id <> $2`),
		g.GroupID, except).Scan(&count); err != nil {
		return fmt.Errorf("counting clients: %w", err)
	}
	over := count + fresh - maxPerGroup
	if over <= 0 {
		return nil
	}
	if keep == nil {
		keep = []string{} // not NULL: ANY(NULL) would keep every client
	}
	tag, err := g.tx.Exec(ctx, g.s.sql(`DELETE FROM {schema}.clients WHERE id IN (
		SELECT id FROM {schema}.clients WHERE client_group_id = $1 AND id <> $2 AND NOT (id = ANY($4::text[]))
			AND updated_at < now() - interval '`+idleClientAge+`'
		ORDER BY updated_at LIMIT $3)`), g.GroupID, except, over, keep)
	if err != nil {
		return fmt.Errorf("pruning idle clients: %w", err)
	}
	g.PrunedClients += int(tag.RowsAffected())
	if tag.RowsAffected() > 0 {
		if _, err := g.tx.Exec(ctx, g.s.sql(`UPDATE {schema}.client_groups SET clients_pruned_at = now() WHERE id = $1`), g.GroupID); err != nil {
			return fmt.Errorf("noting pruned clients: %w", err)
		}
	}
	if int(tag.RowsAffected()) < over {
		return &TooManyClientsError{Limit: maxPerGroup}
	}
	return nil
}

// LastMutationID returns the client's last processed mutation id, 0 for a
// client the group does not know yet (it is created on the next
// SetLastMutationID), or ErrClientForbidden.
func (g *GroupTx) LastMutationID(ctx context.Context, clientID string) (int64, error) {
	if clientID != "" && clientID == g.prefetched {
		switch g.prefetchedGroup {
		case "":
			return 0, nil
		case g.GroupID:
			return g.prefetchedLastMutationID, nil
		default:
			return 0, ErrClientForbidden
		}
	}
	var group string
	var lmid int64
	err := g.tx.QueryRow(ctx, g.s.sql(`SELECT client_group_id, last_mutation_id FROM {schema}.clients WHERE id = $1`), clientID).Scan(&group, &lmid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("reading client: %w", err)
	case group != g.GroupID:
		return 0, ErrClientForbidden
	}
	return lmid, nil
}

// LastMutationIDs returns the last mutation id of every client of the group.
// IssueCookies notes them with the cookies it issues (a hash), so a later
// pull can tell whether any moved since.
func (g *GroupTx) LastMutationIDs(ctx context.Context) (map[string]int64, error) {
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT id, last_mutation_id FROM {schema}.clients WHERE client_group_id = $1`), g.GroupID)
	if err != nil {
		return nil, fmt.Errorf("reading clients: %w", err)
	}
	out := map[string]int64{}
	var id string
	var lmid int64
	_, err = pgx.ForEachRow(rows, []any{&id, &lmid}, func() error { out[id] = lmid; return nil })
	if err != nil {
		return nil, fmt.Errorf("reading clients: %w", err)
	}
	g.lmids, g.lmidsRead = hashLastMutationIDs(out), true
	return out, nil
}

// hashLastMutationIDs hashes a group's last mutation ids, in the order of
// the client ids.
func hashLastMutationIDs(lmids map[string]int64) uint64 {
	ids := make([]string, 0, len(lmids))
	for id := range lmids {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	d := xxhash.New()
	var n [8]byte
	for _, id := range ids {
		_, _ = d.WriteString(id)
		binary.BigEndian.PutUint64(n[:], uint64(lmids[id]))
		_, _ = d.Write([]byte{0})
		_, _ = d.Write(n[:])
	}
	return d.Sum64()
}

// LegacyKeysThrough returns the last mutation id of clientID that uses the
// old idempotency key "<clientID>:<mutationID>" (0: none). Only clients
// known before the HMAC keys have any.
func (g *GroupTx) LegacyKeysThrough(ctx context.Context, clientID string) (int64, error) {
	if clientID == g.prefetched {
		return g.prefetchedLegacyKeys, nil
	}
	var through int64
	err := g.tx.QueryRow(ctx, g.s.sql(`SELECT coalesce(legacy_keys_through, 0) FROM {schema}.clients WHERE id = $1`), clientID).Scan(&through)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading client: %w", err)
	}
	return through, nil
}

// ErrClientPruned: a client the group pruned (idle for over a day, to stay
// under its client cap) came back. It must start over: its state is gone.
var ErrClientPruned = errors.New("client was pruned from its group")

// WasPruned reports whether clientID, unknown to the group, may be one it
// pruned: the group has pruned clients and has no row for this one. Only
// for a client whose mutation ids do not start at 1.
func (g *GroupTx) WasPruned(ctx context.Context, clientID string) (bool, error) {
	if !g.clientsPruned {
		return false, nil
	}
	if clientID == g.prefetched {
		return g.prefetchedGroup == "", nil
	}
	var exists bool
	if err := g.tx.QueryRow(ctx, g.s.sql(`SELECT EXISTS (SELECT 1 FROM {schema}.clients WHERE id = $1)`), clientID).Scan(&exists); err != nil {
		return false, fmt.Errorf("reading client: %w", err)
	}
	return !exists, nil
}

// ClaimClient binds clientID to this group before anything is done in its
// name, so that of two groups racing for one new client exactly one calls
// the upstream: the other waits on the claim (the clients row is unique)
// and, once the claim commits, gets ErrClientForbidden having done nothing.
// The claim lasts as long as the transaction, so a caller that has called
// the upstream commits it even when the mutation stays pending. A client
// already known to belong here costs nothing.
//
// A new client must fit under maxPerGroup clients (0: no limit): room is
// made as in CheckClients, never by pruning one of spare (the clients of
// the push making the claim: one idle for a day may have mutations in this
// push still to come), or the claim fails with *TooManyClientsError.
func (g *GroupTx) ClaimClient(ctx context.Context, clientID string, maxPerGroup int, spare []string) error {
	if clientID == g.prefetched && g.prefetchedGroup == g.GroupID {
		return nil
	}
	// A concurrent claim of the same new id makes the INSERT wait for that
	// transaction; the owner is then read by a new statement, which sees it.
	tag, err := g.tx.Exec(ctx, g.s.sql(`INSERT INTO {schema}.clients (id, client_group_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`),
		clientID, g.GroupID)
	if err != nil {
		return fmt.Errorf("claiming client: %w", err)
	}
	owner := g.GroupID
	if tag.RowsAffected() == 1 {
		if err := g.makeRoom(ctx, 1, maxPerGroup, clientID, spare); err != nil {
			return err
		}
	}
	if tag.RowsAffected() == 0 {
		if err := g.tx.QueryRow(ctx, g.s.sql(`SELECT client_group_id FROM {schema}.clients WHERE id = $1`), clientID).Scan(&owner); err != nil {
			return fmt.Errorf("reading client: %w", err)
		}
	}
	if owner != g.GroupID {
		return ErrClientForbidden
	}
	if clientID == g.prefetched {
		g.prefetchedGroup = g.GroupID
	}
	return nil
}

// SetLastMutationID records that the client's mutations up to id are
// processed. Settle with Applied or Rejected does this and more.
//
// The attempts recorded for those mutations are forgotten in the same
// statement (one round trip). If another group has registered the client,
// the statement or COMMIT that carries the write fails with
// ErrClientForbidden; at COMMIT, the transaction's other writes have been
// committed all the same (the COMMIT went in the same round trip).
func (g *GroupTx) SetLastMutationID(ctx context.Context, clientID string, id int64) error {
	// The group's last use is noted at most once per touchInterval: a push
	// of many mutations does not rewrite the group's row for each.
	//
	// The write goes with the transaction's next statement or its COMMIT
	// (one round trip fewer per mutation); its failure fails that, and so
	// the transaction.
	if clientID == g.prefetched {
		// The next mutation of this client in the same transaction reads
		// its last mutation id from here.
		g.prefetchedGroup, g.prefetchedLastMutationID = g.GroupID, id
	}
	g.dtx.hold("lmid\x00"+clientID, g.s.sql(`WITH forget AS (
			DELETE FROM {schema}.mutation_attempts WHERE client_id = $1 AND mutation_id <= $3),
		touch AS (
			UPDATE {schema}.client_groups SET last_used_at = now() WHERE id = $2 AND last_used_at < now() - $4::interval)
		INSERT INTO {schema}.clients (id, client_group_id, last_mutation_id) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET last_mutation_id = greatest({schema}.clients.last_mutation_id, excluded.last_mutation_id), updated_at = now()
		WHERE {schema}.clients.client_group_id = excluded.client_group_id`),
		[]any{clientID, g.GroupID, id, g.s.touchInterval},
		func(tag pgconn.CommandTag, err error) error {
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				// Another group registered this client since it was read.
				return ErrClientForbidden
			}
			return nil
		})
	return nil
}
