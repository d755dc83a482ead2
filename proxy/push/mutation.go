package push

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// pushRequest is a Replicache PushRequest (v1). Version 0 bodies decode into
// it too, so their version can be refused with the protocol's own error.
type pushRequest struct {
	PushVersion   *int           `json:"pushVersion"`
	ProfileID     string         `json:"profileID"`
	ClientGroupID string         `json:"clientGroupID"`
	SchemaVersion string         `json:"schemaVersion"`
	Mutations     []pushMutation `json:"mutations"`
}

type pushMutation struct {
	ID        int64           `json:"id"`
	ClientID  string          `json:"clientID"`
	Name      string          `json:"name"`
	Args      json.RawMessage `json:"args"`
	Timestamp float64         `json:"timestamp"` // performance.now() on the client: not a clock
}

func (p *pushRequest) Version() *int   { return p.PushVersion }
func (p *pushRequest) GroupID() string { return p.ClientGroupID }

func (p *pushRequest) Validate() *problem.Error {
	if err := engine.ValidID("clientGroupID", p.ClientGroupID); err != nil {
		return err
	}
	for i, m := range p.Mutations {
		if m.ID < 1 {
			return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "mutations[%d].id: %d is not a positive integer", i, m.ID)
		}
		if err := engine.ValidID(fmt.Sprintf("mutations[%d].clientID", i), m.ClientID); err != nil {
			return err
		}
		if err := engine.ValidID(fmt.Sprintf("mutations[%d].name", i), m.Name); err != nil {
			return err
		}
	}
	return nil
}

// pushStats summarizes what one push did; it is the 200 answer's body.
type pushStats struct {
	Applied   int  `json:"applied"`
	Rejected  int  `json:"rejected"`
	Duplicate int  `json:"duplicate"`
	Pending   int  `json:"pending"` // left for the client's next push (time budget)
	EarlyExit bool `json:"earlyExit,omitempty"`
}

// MaxBatch and batchWindow bound the mutations of one client that one
// transaction applies: a push of many mutations commits every MaxBatch
// mutations, or once its transaction has been open batchWindow (a pull of
// the group waits for its lock no longer than that and one API call).
const (
	MaxBatch    = 64
	batchWindow = 20 * time.Millisecond
)

// One mutation goes through four steps:
//
//   - prepare, before the group's lock: bound its args, render its call,
//     compute its idempotency key;
//   - send, under the lock: the call, admitted by the mutation breaker;
//   - judge: verdict.Mutation says what the answer means;
//   - settle: one store call records it (consumed or an attempt).

// prepared is a mutation rendered before the lock is taken.
type prepared struct {
	mu  mutators.Mutation
	req *mutators.Request // nil when it cannot be sent (renderErr)
	// renderErr is the mapping's refusal: a business error, consumed
	// without a call.
	renderErr error
}

// prepare renders mu's call with its idempotency key. Rendering decodes the
// args: what one mutation may cost is bounded first.
func (s *Engine) prepare(mp *mapping.Mapping, mu mutators.Mutation) prepared {
	if int64(len(mu.Args)) > s.Cfg.MaxArgsBytes {
		return prepared{mu: mu, renderErr: fmt.Errorf("args are %d bytes, more than %d (SIDECAR_MAX_ARGS_BYTES)", len(mu.Args), s.Cfg.MaxArgsBytes)}
	}
	mu.IdempotencyKey = mutators.IdempotencyKey(s.Keys().Current, mu)
	req, err := mp.Mutators.Render(mu)
	return prepared{mu: mu, req: req, renderErr: err}
}

// gapError: a mutation arrived before the one the client owes us next.
type gapError struct {
	clientID           string
	expected, received int64
}

func (e *gapError) Error() string {
	return fmt.Sprintf("client %s: expected mutation %d, received %d", e.clientID, e.expected, e.received)
}

// settled is what one mutation of a batch came to.
type settled struct {
	name  string
	label string // verdict.Label*: applied, rejected, abandoned or duplicate
	lmid  int64  // the client's last mutation id afterwards
	// pending: kept for later (an outage, expired credentials, the mapping
	// to fix); the batch ends with it.
	pending *pendingError
}

// pendingError stops a push at a mutation kept for later: p is the
// client's answer; counted says the mutation counts as transient in the
// metrics.
type pendingError struct {
	p       *problem.Error
	counted bool
}

func (e *pendingError) Error() string { return e.p.Error() }

// applyOne processes one prepared mutation inside a batch's transaction;
// ids are the server ids the batch knows (loadServerIDs), nil when the
// mapping declares none.
func (s *Engine) applyOne(ctx context.Context, c *exchange, mp *mapping.Mapping, g *store.GroupTx, p prepared, ids mutators.ServerIDs) (settled, error) {
	mu := p.mu
	r := settled{name: mu.Name}
	cur, err := g.LastMutationID(ctx, mu.ClientID)
	if err != nil {
		return r, err
	}
	switch {
	case mu.ID <= cur:
		r.label, r.lmid = verdict.LabelDuplicate, cur
		return r, nil
	case mu.ID > cur+1:
		if cur == 0 {
			// Unknown, yet past its first mutation: a client this group
			// pruned as idle has come back. It must start over.
			if pruned, err := g.WasPruned(ctx, mu.ClientID); err != nil || pruned {
				return r, cmp.Or(err, store.ErrClientPruned)
			}
		}
		return r, &gapError{clientID: mu.ClientID, expected: cur + 1, received: mu.ID}
	}
	// The client is this group's before its mutation goes anywhere.
	if err := g.ClaimClient(ctx, mu.ClientID, s.Cfg.MaxClientsPerGroup, c.clients); err != nil {
		return r, err
	}
	p = withServerIDs(mp, p, ids)
	keys := s.Keys()
	if p.req != nil {
		if err := s.keepOldKey(ctx, g, keys, p.req, mu); err != nil {
			return r, err
		}
	}
	dctx := context.WithoutCancel(ctx)
	var res mutators.Result
	var v verdict.Verdict
	if p.req != nil {
		res, v = s.send(dctx, c, p.req, mu)
	} else {
		res = mutators.Result{Outcome: mutators.Rejected, Err: p.renderErr}
		v = verdict.Mutation(mu, res, c.Key(), 0, verdict.Others{})
	}
	s.Report.Report(tracing.IDOf(ctx), mp.Hash, v.Report)
	if v.Outcome == verdict.Pending && v.Cause != verdict.Unavailable {
		// Expired credentials, or the mapping to fix: the mutation waits,
		// untouched and not counted toward giving up.
		if v.Cause == verdict.Credentials {
			c.Log.Info("credentials no longer accepted; push stopped", "mutator", mu.Name, "mutation_id", mu.ID,
				"outcome", verdict.LabelTransient, "recheck", false)
		}
		r.pending = &pendingError{p: v.Problem, counted: true}
		return r, nil
	}
	if v.Recheck {
		if p := s.recheckCredentials(dctx, c, mu); p != nil {
			r.pending = p
			return r, nil
		}
	}
	if v.Outcome == verdict.Pending {
		attempts, giveUp, err := s.settleAttempt(dctx, g, mu, res, v)
		switch {
		case err != nil:
			return r, err
		case !giveUp:
			r.pending = &pendingError{p: v.Problem, counted: true}
			return r, nil
		}
		v = verdict.Abandoned(v)
		c.Log.Warn("mutation abandoned", "client", mu.ClientID, "mutation_id", mu.ID, "mutator", mu.Name,
			"outcome", verdict.LabelAbandoned, "status", res.Status, "attempts", attempts.Count, "over", attempts.Span)
		res = mutators.Result{Outcome: mutators.Rejected, Status: res.Status, Body: res.Body,
			Err: fmt.Errorf("gave up after %d attempts over %s", attempts.Count, roundSpan(attempts.Span))}
	}
	r.label, r.lmid = v.Label, mu.ID
	settle := store.Settlement{ClientID: mu.ClientID, MutationID: mu.ID, Outcome: store.Applied, KeySecret: keys.CurrentFP,
		Status: res.Status, Mutator: mu.Name, GaveUp: v.Label == verdict.LabelAbandoned,
		ChangeFor: s.ChangeFor(c.User)} // the push pokes as PokeFor(c) does
	switch v.Label {
	case verdict.LabelApplied:
		c.Log.Debug("mutation applied", "mutator", mu.Name, "mutation_id", mu.ID, "outcome", v.Label, "status", res.Status)
		recordServerID(c, g, p, res, ids)
	case verdict.LabelRejected:
		c.Log.Info("mutation rejected", "mutator", mu.Name, "mutation_id", mu.ID, "outcome", v.Label, "status", res.Status, "cause", res.Cause())
		fallthrough
	default: // rejected or abandoned: consumed, with its rejection record
		settle.Outcome, settle.Status, settle.Mutator, settle.Reason, settle.Body = store.Rejected, res.Status, mu.Name, res.Cause(), res.Body
	}
	_, err = g.Settle(dctx, settle) // consumed: goes with the next statement or the COMMIT
	return r, err
}

// keepOldKey gives req the key mu's call may have carried already, when
// that is not the current secret's: the key of the sidecar's first
// releases for a client's mutation that may have been sent before the
// upgrade to HMAC keys, or, while the secret is rotated
// (SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS), the previous secret's for one
// that may have been sent in a batch whose commit was lost. A retry must
// carry the key of the call that went out, or the API applies it twice.
func (s *Engine) keepOldKey(ctx context.Context, g *store.GroupTx, keys *engine.KeySecrets, req *mutators.Request, mu mutators.Mutation) error {
	legacyThrough, err := g.LegacyKeysThrough(ctx, mu.ClientID)
	if err != nil {
		return err
	}
	if mu.ID <= legacyThrough {
		// It may have been sent before the upgrade, with the old key.
		mu.IdempotencyKey = ""
		req.IdempotencyKey = mutators.LegacyIdempotencyKey(mu)
		return nil
	}
	if keys.Previous == nil {
		return nil
	}
	// At most MaxBatch mutations of a client go out in one transaction
	// before its commit.
	previousThrough, err := g.PreviousKeysThrough(ctx, mu.ClientID, keys.CurrentFP, MaxBatch)
	if err != nil {
		return err
	}
	if mu.ID <= previousThrough {
		req.IdempotencyKey = mutators.IdempotencyKey(keys.Previous, mu)
	}
	return nil
}

// send makes one mutation's call, admitted by the mutation breaker, in a
// span of its own when tracing, and judges the answer: the breaker counts
// the verdict's evidence.
func (s *Engine) send(ctx context.Context, c *exchange, req *mutators.Request, mu mutators.Mutation) (mutators.Result, verdict.Verdict) {
	ticket, err := s.Parts.Upstream.Mutation.Admit()
	if err != nil {
		res := mutators.Result{Outcome: mutators.Transient, Err: err}
		return res, verdict.Mutation(mu, res, c.Key(), s.Parts.Upstream.RetryAfter(), verdict.Others{})
	}
	var span trace.Span
	if s.Tracer != nil {
		ctx, span = s.Tracer.Start(ctx, "mutation "+mu.Name, trace.WithAttributes(
			attribute.String("replicache.client_group", mu.ClientGroupID), attribute.String("replicache.mutator", mu.Name),
			attribute.String("replicache.client", mu.ClientID), attribute.Int64("replicache.mutation_id", mu.ID)))
		defer span.End()
	}
	res := s.Parts.Sender.Do(upstream.WithTicket(ctx, ticket), req, c.Forward)
	// Marked once answered, so after the API applied it: a pull whose read
	// started before then reads the source again (see package plan).
	s.MarkWrite(req.Method, req.PathQuery)
	healthy, same := s.Parts.Upstream.Witness.Others(res.Status, c.Key())
	v := verdict.Mutation(mu, res, c.Key(), s.Parts.Upstream.RetryAfter(), verdict.Others{Healthy: healthy, SameStatus: same})
	ticket.Done(v.Evidence)
	if span != nil {
		span.SetAttributes(attribute.String("replicache.outcome", res.Outcome.String()))
		if res.Status != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", res.Status))
		}
		if res.Outcome == mutators.Transient {
			span.SetStatus(codes.Error, res.Cause())
		}
	}
	if res.Outcome == mutators.Transient {
		c.Log.Warn("mutation not applied; push stopped", "mutator", mu.Name, "mutation_id", mu.ID,
			"outcome", verdict.LabelTransient, "cause", res.Cause(), "detail", errDetail(res.Err))
	}
	return res, v
}

// recheckCredentials asks the auth endpoint again, at most once per push,
// whether the caller's credentials still stand. It returns a pending
// 401 when they no longer do (or now name someone else), the auth
// endpoint's own failure when it cannot tell, and nil when they stand or
// when identity does not come from the auth endpoint.
func (s *Engine) recheckCredentials(ctx context.Context, c *exchange, mu mutators.Mutation) *pendingError {
	if !s.Parts.Identity.AsksAPI() || c.ViaHeader || c.credentialsRechecked {
		return nil
	}
	c.credentialsRechecked = true
	user, v := s.Parts.Identity.Ask(ctx, c.Forward, c.Key())
	switch {
	case v.Cause == verdict.Credentials, v.Problem == nil && user != c.User:
		c.Log.Info("credentials no longer accepted; push stopped", "mutator", mu.Name, "mutation_id", mu.ID,
			"outcome", verdict.LabelTransient, "recheck", true)
		return &pendingError{counted: true, p: &problem.Error{Status: http.StatusUnauthorized, Code: problem.Unauthorized,
			Detail: map[string]any{"mutator": mu.Name, "clientID": mu.ClientID, "mutationID": mu.ID},
			Message: fmt.Sprintf("mutation %d of client %s (%s) was refused and the credentials are no longer accepted; it is kept until they are renewed",
				mu.ID, mu.ClientID, mu.Name)}}
	case v.Problem != nil:
		return &pendingError{p: v.Problem}
	}
	return nil
}

// settleAttempt records an answered, retryable attempt of mu and says
// whether to give up on it: after SIDECAR_GIVE_UP_ATTEMPTS answers that
// count (the verdict says which: only a failure that is the mutation's
// own), spanning at least SIDECAR_GIVE_UP_AFTER. A call that got no answer
// (connection error, timeout, open breaker) records nothing; an answer
// that does not count is recorded for operators but never leads to giving
// up, so an outage never makes the sidecar give up, however long it lasts.
func (s *Engine) settleAttempt(ctx context.Context, g *store.GroupTx, mu mutators.Mutation, res mutators.Result, v verdict.Verdict) (store.Attempts, bool, error) {
	if res.Status == 0 || res.Status < 400 {
		return store.Attempts{}, false, nil // no answer, or a redirect (a mapping error)
	}
	counts := v.GiveUp && s.Cfg.GiveUpAttempts > 0
	a, err := g.Settle(ctx, store.Settlement{ClientID: mu.ClientID, MutationID: mu.ID, Outcome: store.Pending,
		Status: res.Status, Mutator: mu.Name, Counts: counts})
	if err != nil {
		return store.Attempts{}, false, err
	}
	return a, counts && a.Count >= s.Cfg.GiveUpAttempts && a.Span >= s.Cfg.GiveUpAfter, nil
}

// roundSpan shortens a duration for a rejection's reason.
func roundSpan(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

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
		c.Log.Warn("temporary id already recorded for another server id; the first stands",
			"mutator", p.mu.Name, "mutation_id", p.mu.ID, "temp_id", temp, "server_id", string(prev), "answered", string(res.ServerID))
	case !ok:
		ids[temp] = res.ServerID
		g.RecordServerID(temp, string(res.ServerID), p.mu.ClientID, p.mu.ID)
	}
}

// errDetail is an error's whole story for the log: an upstream call's
// Detail (which may name the upstream), or the error itself.
func errDetail(err error) string {
	var ce *upstream.CallError
	switch {
	case errors.As(err, &ce):
		return ce.Detail()
	case err != nil:
		return err.Error()
	}
	return ""
}
