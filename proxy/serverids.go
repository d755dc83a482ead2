package proxy

import (
	"context"

	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// Ids the API chooses (a mutator's serverID). A batch's calls are rendered
// before the group's lock, with the temporary ids the client sent. Holding
// the lock, the batch reads which of the temporary ids its calls mention
// the group has recorded (one round trip, only when the mapping declares a
// serverID); a call that refers to one is rendered again with the
// server's id before it is sent. An applied create's server id is
// recorded in the batch's transaction, with its settlement, and added to
// the batch's map, so the mutations after it in the same batch see it;
// later batches and pushes, on any replica, read it from the store. Pushes
// of one group take turns, so the map cannot change under a batch.

// loadServerIDs returns the server ids the group has recorded for the
// temporary ids batch mentions; nil when the mapping declares no serverID.
func loadServerIDs(ctx context.Context, mp *mapping.Mapping, g *store.GroupTx, batch []prepared) (mutators.ServerIDs, error) {
	if !mp.Mutators.HasServerIDs() {
		return nil, nil
	}
	var mentioned []string
	for _, p := range batch {
		if p.req != nil {
			mentioned = append(mentioned, p.req.Mentions()...)
		}
	}
	recorded, err := g.ServerIDs(ctx, mentioned)
	if err != nil {
		return nil, err
	}
	ids := make(mutators.ServerIDs, len(recorded))
	for temp, server := range recorded {
		ids[temp] = mutators.ServerID(server)
	}
	return ids, nil
}

// withServerIDs renders p's call again when it refers to a temporary id in
// ids, so it carries the server's id. The idempotency key stays: it names
// the mutation (client and mutation id), not its body, so a retry sends
// the same key whichever id it carries.
func withServerIDs(mp *mapping.Mapping, p prepared, ids mutators.ServerIDs) prepared {
	if p.req == nil || !p.req.Refers(ids) {
		return p
	}
	mu := p.mu
	mu.ServerIDs = ids
	req, err := mp.Mutators.Render(mu)
	return prepared{mu: p.mu, req: req, renderErr: err}
}

// recordServerID records, with the applied create's settlement, the id
// the API chose for its temporary id, and adds it to the batch's ids. The
// first record of a temporary id stands: an idempotent replay of the
// create answers the same id and records nothing more; a different id for
// a temporary id already recorded (the id used twice) is logged and kept
// out.
func recordServerID(c *exchange, g *store.GroupTx, p prepared, res mutators.Result, ids mutators.ServerIDs) {
	if ids == nil || p.req == nil || p.req.TempID == "" || res.ServerID == "" {
		return // no serverID, or none to record: the verdict reported why
	}
	temp := p.req.TempID
	switch prev, ok := ids[temp]; {
	case ok && prev != res.ServerID:
		c.log.Warn("temporary id already recorded for another server id; the first stands",
			"mutator", p.mu.Name, "mutation_id", p.mu.ID, "temp_id", temp, "server_id", string(prev), "answered", string(res.ServerID))
	case !ok:
		ids[temp] = res.ServerID
		g.RecordServerID(temp, string(res.ServerID), p.mu.ClientID, p.mu.ID)
	}
}
