package store

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ServerIDs returns, of tempIDs, those the group has recorded a server id
// for (RecordServerID), each with the id as recorded. It reads what the
// transaction sees: records committed before the group's lock was taken,
// and its own. One round trip, keyed by the group.
func (g *GroupTx) ServerIDs(ctx context.Context, tempIDs []string) (map[string]string, error) {
	out := map[string]string{}
	if len(tempIDs) == 0 {
		return out, nil
	}
	keys := make([][]byte, len(tempIDs))
	for i, id := range tempIDs {
		keys[i] = []byte(id)
	}
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT temp_id, server_id FROM {schema}.server_ids
		WHERE client_group_id = $1 AND temp_id = ANY($2::bytea[])`), g.GroupID, keys)
	if err != nil {
		return nil, fmt.Errorf("reading server ids: %w", err)
	}
	var temp, server []byte
	_, err = pgx.ForEachRow(rows, []any{&temp, &server}, func() error {
		out[string(temp)] = string(server)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading server ids: %w", err)
	}
	return out, nil
}

// RecordServerID records that the API chose serverID for what the group
// created under tempID, in mutation mutationID of clientID. The first
// record of a temporary id stands: a later one (a create repeated, or a
// temporary id used twice) changes nothing. Deferred like Settle's
// Applied: the write goes with the transaction's next statement or its
// COMMIT, so it is durable exactly when the create's settlement is.
func (g *GroupTx) RecordServerID(tempID, serverID, clientID string, mutationID int64) {
	// Keyed by the mutation: two records in one transaction both go, in
	// order, and the first stands.
	g.dtx.hold("server_id\x00"+clientID+"\x00"+strconv.FormatInt(mutationID, 10), g.s.sql(`INSERT INTO {schema}.server_ids
		(client_group_id, temp_id, server_id, client_id, mutation_id) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (client_group_id, temp_id) DO NOTHING`),
		[]any{g.GroupID, []byte(tempID), []byte(serverID), clientID, mutationID},
		func(_ pgconn.CommandTag, err error) error {
			if err != nil {
				return fmt.Errorf("recording server id: %w", err)
			}
			return nil
		})
}
