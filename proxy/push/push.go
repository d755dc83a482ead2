package push

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Engine is the push engine: it serves pushes, applying each mutation
// through the upstream call its mapping names. It is safe for concurrent
// use.
type Engine struct {
	*engine.Core
}

// exchange is a push past Begin, with what the push engine notes of it.
type exchange struct {
	*engine.Exchange
	// credentialsRechecked: the auth endpoint was asked again during this
	// push (at most once, before consuming a rejection).
	credentialsRechecked bool
	// clients: the push's clients, never pruned to make room for a new one
	// of them (ClaimClient).
	clients []string
}

// New returns the push engine of c.
func New(c *engine.Core) *Engine { return &Engine{Core: c} }

// ServeHTTP serves a push: Begin (same-site JSON, serving, who is calling, the bounded
// body) → ownership of the group and of every client checked before
// anything is applied → the mutations in order, a client's consecutive
// ones in one transaction holding the group's lock (applyBatch), each one
// prepared, sent, judged and settled (mutation.go) → rejection records
// trimmed → the clients that may see the effects poked → the counts.
func (s *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req pushRequest
	c, ok := s.Begin(w, r, metrics.EndpointPush, &req, nil)
	if !ok {
		return
	}
	defer c.Mem.Release()
	ctx := r.Context()
	// Check ownership of the group and of every client before applying
	// anything, and learn the last mutation ids so retried mutations are
	// skipped without a transaction each. A push of one client (the common
	// case) needs no separate step: its first mutation's transaction checks
	// the same before calling the upstream.
	clientIDs := make([]string, 0, 1)
	seen := map[string]bool{}
	for _, m := range req.Mutations {
		if !seen[m.ClientID] {
			seen[m.ClientID] = true
			clientIDs = append(clientIDs, m.ClientID)
		}
	}
	if len(clientIDs) > s.Cfg.MaxClientsPerPush {
		s.Fail(w, c, problem.Errorf(http.StatusBadRequest, problem.TooManyClients,
			"a push may carry the mutations of at most %d clients (SIDECAR_MAX_CLIENTS_PER_PUSH); this one has %d",
			s.Cfg.MaxClientsPerPush, len(clientIDs)))
		return
	}
	known := map[string]int64{}
	if len(clientIDs) != 1 {
		pruned := 0
		err := s.Locked(ctx, req.ClientGroupID, c.User, "", func(g *store.GroupTx) error {
			var err error
			known, err = g.CheckClients(ctx, clientIDs, s.Cfg.MaxClientsPerGroup)
			pruned = g.PrunedClients
			return err
		})
		if err != nil {
			s.FailStore(w, c, err, req.ClientGroupID)
			return
		}
		s.countPruned(c, pruned) // committed
	}

	// While its calls go out the push holds its body's bytes: the budget may
	// pre-empt it for a caller holding less. The call in progress is never
	// cut (an answered call is always recorded); the push then starts
	// nothing new and answers an early exit.
	done := c.Mem.Interruptible(func() {})
	stats, err := s.applyAll(ctx, &exchange{Exchange: c, clients: clientIDs}, req, known)
	done()
	if stats.Rejected > 0 {
		s.trimRejections(ctx, c, req.ClientGroupID)
	}
	if stats.Applied+stats.Rejected > 0 {
		// Effects (or a rejection the clients should see): every client
		// that may see them pulls now, this one included.
		s.PokeFor(c.Log, metrics.PokeFromPush, c.Caller)
	}
	if err != nil {
		var gap *gapError
		var pend *pendingError
		switch {
		case errors.As(err, &pend):
			s.Fail(w, c, pend.p)
		case errors.As(err, &gap):
			s.Fail(w, c, &problem.Error{Status: http.StatusBadRequest, Code: problem.MutationIDGap, Message: gap.Error(),
				Detail: map[string]any{"clientID": gap.clientID, "expected": gap.expected, "received": gap.received}})
		default:
			s.FailStore(w, c, err, req.ClientGroupID)
		}
		return
	}
	c.Log.Info("push", "mutations", len(req.Mutations), "applied", stats.Applied, "rejected", stats.Rejected,
		"duplicate", stats.Duplicate, "pending", stats.Pending, "duration", time.Since(c.Start))
	problem.WriteJSON(w, http.StatusOK, stats)
}

// applyAll processes the push's mutations in order until one cannot be
// applied now (gap, a pending mutation's problem, database error:
// returned), the time budget runs out or the sidecar drains (early exit),
// or all are done. known holds the last mutation ids learnt so far, by
// client.
func (s *Engine) applyAll(ctx context.Context, c *exchange, req pushRequest, known map[string]int64) (pushStats, error) {
	mp := s.Mapping() // one mapping for the whole push, even across a reload
	var stats pushStats
	for i := 0; i < len(req.Mutations); {
		m := req.Mutations[i]
		if m.ID <= known[m.ClientID] {
			stats.Duplicate++
			s.countMutation(mp, m.Name, verdict.LabelDuplicate)
			i++
			continue
		}
		if time.Since(c.Start) >= s.Cfg.PushTimeBudget || s.Draining() || c.Mem.Err() != nil {
			// Early exit (time budget, shutting down, pre-empted): what is committed
			// stays committed; the client pushes the rest next time.
			stats.EarlyExit, stats.Pending = true, len(req.Mutations)-i
			return stats, nil
		}
		if err := ctx.Err(); err != nil {
			return stats, err // the client went away: start nothing new
		}
		// The run of this client's mutations from here, not yet processed,
		// in ascending order: prepared before the lock, applied in one
		// transaction (applyBatch may commit fewer).
		var batch []prepared
		for j := i; j < len(req.Mutations) && len(batch) < MaxBatch; j++ {
			mj := req.Mutations[j]
			if mj.ClientID != m.ClientID || mj.ID <= known[m.ClientID] || (j > i && mj.ID <= req.Mutations[j-1].ID) {
				break
			}
			batch = append(batch, s.prepare(mp, mutators.Mutation{
				ClientGroupID: req.ClientGroupID, ClientID: mj.ClientID, ID: mj.ID,
				Name: mj.Name, Args: mj.Args, UserID: c.User,
			}))
		}
		done, stop, err := s.applyBatch(ctx, c, mp, batch)
		for _, r := range done {
			known[m.ClientID] = r.lmid
			s.countMutation(mp, r.name, r.label)
			switch r.label {
			case verdict.LabelApplied:
				stats.Applied++
			case verdict.LabelRejected, verdict.LabelAbandoned: // given up on: consumed as rejected
				stats.Rejected++
			case verdict.LabelDuplicate:
				stats.Duplicate++
			}
		}
		i += len(done)
		if err == nil {
			err = stop
		}
		if err != nil {
			var pend *pendingError
			if errors.As(err, &pend) && pend.counted {
				// Kept for later (an outage, expired credentials, the
				// mapping to fix): counted as transient.
				s.countMutation(mp, req.Mutations[i].Name, verdict.LabelTransient)
			}
			return stats, err
		}
	}
	return stats, nil
}

// applyBatch processes muts, consecutive mutations of one client, in one
// transaction holding the group's lock, in order: skip one already
// processed, refuse one that comes early, otherwise send, judge and settle
// it (applyOne). It stops at the first mutation that must wait (returned
// as stop, after the commit of those before it), after batchWindow, or
// when the push's time budget runs out; the caller passes at most
// MaxBatch. done lists what was committed.
//
// The upstream calls happen inside the transaction and have effects outside
// it: if the commit is lost (a crash, a failed COMMIT, a database error
// later in the batch) the calls are repeated on the client's retry with the
// same idempotency keys, so the upstream sees each at least once and, when
// it honours the key, applies it exactly once; the last mutation id never
// goes back. From the upstream call on, the work is detached from the
// client's cancellation so an answered call is always recorded.
func (s *Engine) applyBatch(ctx context.Context, c *exchange, mp *mapping.Mapping, muts []prepared) (done []settled, stop, err error) {
	first := muts[0].mu
	pruned := 0
	err = s.Locked(ctx, first.ClientGroupID, first.UserID, first.ClientID, func(g *store.GroupTx) error {
		opened := time.Now()
		done, stop = done[:0], nil
		ids, err := loadServerIDs(ctx, mp, g, muts)
		if err != nil {
			return err
		}
		for i, p := range muts {
			if i > 0 && (time.Since(opened) >= batchWindow || time.Since(c.Start) >= s.Cfg.PushTimeBudget ||
				s.Draining() || ctx.Err() != nil || c.Mem.Err() != nil) {
				return nil // the rest goes in the next transaction, if any
			}
			r, err := s.applyOne(ctx, c, mp, g, p, ids)
			if err != nil {
				// A mutation that comes early, or a client that is not
				// (or no longer) the group's, is found before anything of
				// it is written: those before it are committed.
				var gap *gapError
				if i > 0 && (errors.As(err, &gap) || errors.Is(err, store.ErrClientPruned) || errors.Is(err, store.ErrClientForbidden)) {
					stop = err
					return nil
				}
				return err
			}
			pruned = g.PrunedClients
			if r.pending != nil {
				stop = r.pending // committed: the client's claim, an attempt's count
				return nil
			}
			done = append(done, r)
			if r.label == verdict.LabelRejected || r.label == verdict.LabelAbandoned {
				// Committed at once: a rolled-back batch repeats its calls,
				// and an API that does not replay an error answer could
				// then accept what it refused, after what followed it.
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	s.countPruned(c.Exchange, pruned) // committed
	return done, stop, nil
}

// countPruned reports the idle clients a transaction pruned to make room
// under SIDECAR_MAX_CLIENTS_PER_GROUP.
func (s *Engine) countPruned(c *engine.Exchange, pruned int) {
	if pruned > 0 {
		s.Metrics.Pruned.WithLabelValues(metrics.PrunedClients).Add(float64(pruned))
		c.Log.Info("pruned idle clients to stay under SIDECAR_MAX_CLIENTS_PER_GROUP", "pruned", pruned)
	}
}

// trimRejections keeps the group's rejection records within
// SIDECAR_MAX_REJECTIONS_PER_GROUP and SIDECAR_REJECTION_TTL once a push
// that recorded some ends. A failure is logged, never the push's answer.
func (s *Engine) trimRejections(ctx context.Context, c *engine.Exchange, groupID string) {
	var deleted int64
	dctx := context.WithoutCancel(ctx)
	err := s.Locked(dctx, groupID, c.User, "", func(g *store.GroupTx) error {
		var err error
		deleted, err = g.TrimRejections(dctx, s.Cfg.MaxRejectionsPerGroup, s.Cfg.RejectionTTL)
		return err
	})
	switch {
	case err != nil:
		c.Log.Warn("trimming rejection records failed", "error", err)
	case deleted > 0:
		s.Metrics.Pruned.WithLabelValues(metrics.PrunedRejections).Add(float64(deleted))
		c.Log.Info("trimmed rejection records to SIDECAR_MAX_REJECTIONS_PER_GROUP and SIDECAR_REJECTION_TTL", "deleted", deleted)
	}
}

func (s *Engine) countMutation(mp *mapping.Mapping, name, label string) {
	if !mp.Mutators.Has(name) {
		name = metrics.UnmappedMutator
	}
	s.Metrics.Mutations.WithLabelValues(name, label).Inc()
}
