package proxy

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
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

func (p *pushRequest) version() *int         { return p.PushVersion }
func (p *pushRequest) clientGroupID() string { return p.ClientGroupID }

func (p *pushRequest) validate() *httpError {
	if err := validID("clientGroupID", p.ClientGroupID); err != nil {
		return err
	}
	for i, m := range p.Mutations {
		if m.ID < 1 {
			return errorf(http.StatusBadRequest, "BadRequest", "mutations[%d].id: %d is not a positive integer", i, m.ID)
		}
		if err := validID(fmt.Sprintf("mutations[%d].clientID", i), m.ClientID); err != nil {
			return err
		}
		if err := validID(fmt.Sprintf("mutations[%d].name", i), m.Name); err != nil {
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

// gapError: a mutation arrived before the one the client owes us next.
type gapError struct {
	clientID           string
	expected, received int64
}

func (e *gapError) Error() string {
	return fmt.Sprintf("client %s: expected mutation %d, received %d", e.clientID, e.expected, e.received)
}

// mappingError: the upstream answered a mutation with a redirect, which
// means the mapping's path is not the API's (a trailing slash, an old
// route). The mutation is kept for the fixed mapping.
type mappingError struct {
	mutator      string
	id           int64
	client       string
	method, path string
	status       int
	location     string
}

func (e *mappingError) Error() string {
	return fmt.Sprintf("mapping error: %s %s answered %d (Location: %q) for mutation %d of client %s (%s); redirects are never followed: fix the mutator's path",
		e.method, e.path, e.status, e.location, e.id, e.client, e.mutator)
}

// unauthorizedError: the upstream no longer accepts the caller's
// credentials. The mutation is not consumed; the push answers 401 so the
// client refreshes its token and pushes it again.
type unauthorizedError struct {
	mutator string
	id      int64
	client  string
	status  int  // the mutation call's answer (401); 0 for a re-check
	recheck bool // the auth endpoint, asked again before a rejection, refused
}

func (e *unauthorizedError) Error() string {
	if e.recheck {
		return fmt.Sprintf("mutation %d of client %s (%s) was refused and the credentials are no longer accepted; it is kept until they are renewed",
			e.id, e.client, e.mutator)
	}
	return fmt.Sprintf("mutation %d of client %s (%s): the upstream did not accept the credentials (%d); it is kept until they are renewed",
		e.id, e.client, e.mutator, e.status)
}

// transientError: the upstream may not have applied the mutation; it stays
// pending and the client retries it with the same idempotency key.
type transientError struct {
	mutator string
	id      int64
	client  string
	result  mutators.Result
}

func (e *transientError) Error() string {
	return fmt.Sprintf("mutation %d of client %s (%s) not applied: %s", e.id, e.client, e.mutator, e.result.Cause())
}

func (s *Sidecar) handlePush(w http.ResponseWriter, r *http.Request) {
	var req pushRequest
	c, ok := s.begin(w, r, "push", &req, nil)
	if !ok {
		return
	}
	defer c.mem.Release()
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
	if len(clientIDs) > s.cfg.MaxClientsPerPush {
		s.fail(w, c.log, errorf(http.StatusBadRequest, "TooManyClients",
			"a push may carry the mutations of at most %d clients (SIDECAR_MAX_CLIENTS_PER_PUSH); this one has %d",
			s.cfg.MaxClientsPerPush, len(clientIDs)))
		return
	}
	known := map[string]int64{}
	if len(clientIDs) != 1 {
		pruned := 0
		err := s.locked(ctx, req.ClientGroupID, c.userID, "", func(g *store.GroupTx) error {
			var err error
			known, err = g.CheckClients(ctx, clientIDs, s.cfg.MaxClientsPerGroup)
			pruned = g.PrunedClients
			return err
		})
		if err != nil {
			s.failStore(w, c.log, err, req.ClientGroupID)
			return
		}
		s.countPruned(c, pruned) // committed
	}

	stats, err := s.applyAll(ctx, c, req, known)
	if stats.Rejected > 0 {
		s.trimRejections(ctx, c, req.ClientGroupID)
	}
	if stats.Applied+stats.Rejected > 0 {
		// Effects (or a rejection the clients should see): every client
		// that may see them pulls now, this one included.
		if users, ok := s.pokeUsers(c.userID); ok {
			s.notify(c.log, "push", users)
		}
	}
	if err != nil {
		s.failPush(w, c.log, err, req.ClientGroupID)
		return
	}
	c.log.Info("push", "mutations", len(req.Mutations), "applied", stats.Applied, "rejected", stats.Rejected,
		"duplicate", stats.Duplicate, "pending", stats.Pending, "duration", time.Since(c.start))
	writeJSON(w, http.StatusOK, stats)
}

// applyAll processes the push's mutations in order until one cannot be
// applied now (gap, transient failure, database error: returned), the time
// budget runs out or the sidecar drains (early exit), or all are done.
// known holds the last mutation ids learnt so far, by client.
func (s *Sidecar) applyAll(ctx context.Context, c *call, req pushRequest, known map[string]int64) (pushStats, error) {
	mapping := s.mapping() // one mapping for the whole push, even across a reload
	var stats pushStats
	for i := 0; i < len(req.Mutations); {
		m := req.Mutations[i]
		if m.ID <= known[m.ClientID] {
			stats.Duplicate++
			s.countMutation(mapping, m.Name, "duplicate")
			i++
			continue
		}
		if time.Since(c.start) >= s.cfg.PushTimeBudget || s.draining.Load() {
			// Early exit (time budget, or shutting down): what is committed
			// stays committed; the client pushes the rest next time.
			stats.EarlyExit, stats.Pending = true, len(req.Mutations)-i
			return stats, nil
		}
		if err := ctx.Err(); err != nil {
			return stats, err // the client went away: start nothing new
		}
		// The run of this client's mutations from here, not yet processed,
		// in ascending order: one transaction (applyBatch may commit fewer).
		var batch []mutators.Mutation
		for j := i; j < len(req.Mutations) && len(batch) < maxBatch; j++ {
			mj := req.Mutations[j]
			if mj.ClientID != m.ClientID || mj.ID <= known[m.ClientID] || (j > i && mj.ID <= req.Mutations[j-1].ID) {
				break
			}
			batch = append(batch, mutators.Mutation{
				ClientGroupID: req.ClientGroupID, ClientID: mj.ClientID, ID: mj.ID,
				Name: mj.Name, Args: mj.Args, UserID: c.userID,
			})
		}
		done, stop, err := s.applyBatch(ctx, c, mapping, batch)
		for _, r := range done {
			known[m.ClientID] = r.lmid
			s.countMutation(mapping, r.name, r.outcome)
			switch r.outcome {
			case "applied":
				stats.Applied++
			case "rejected", "abandoned": // given up on: consumed as rejected
				stats.Rejected++
			case "duplicate":
				stats.Duplicate++
			}
		}
		i += len(done)
		if err == nil {
			err = stop
		}
		if err != nil {
			var tr *transientError
			var unauth *unauthorizedError
			name := req.Mutations[i].Name // the mutation that stopped the push
			switch {
			case errors.As(err, &tr):
				s.countMutation(mapping, name, "transient")
				c.log.Warn("mutation not applied; push stopped", "mutator", tr.mutator, "mutation_id", tr.id,
					"outcome", "transient", "cause", tr.result.Cause(), "detail", errDetail(tr.result.Err))
			case errors.As(err, &unauth):
				s.countMutation(mapping, name, "transient") // kept for the renewed credentials
				c.log.Info("credentials no longer accepted; push stopped", "mutator", unauth.mutator, "mutation_id", unauth.id,
					"outcome", "transient", "recheck", unauth.recheck)
			case errors.As(err, new(*mappingError)):
				s.countMutation(mapping, name, "transient") // kept for the fixed mapping
			}
			return stats, err
		}
	}
	return stats, nil
}

// failPush answers a push that stopped at a mutation it could not apply now.
func (s *Sidecar) failPush(w http.ResponseWriter, log *slog.Logger, err error, groupID string) {
	var gap *gapError
	var tr *transientError
	var unauth *unauthorizedError
	var herr *httpError
	var me *mappingError
	switch {
	case errors.As(err, &me):
		s.fail(w, log, &httpError{Status: http.StatusServiceUnavailable, Code: "MappingError", Message: me.Error(), RetryAfter: 30,
			Detail: map[string]any{"mutator": me.mutator, "clientID": me.client, "mutationID": me.id, "upstreamStatus": me.status}})
	case errors.As(err, &unauth):
		s.fail(w, log, &httpError{Status: http.StatusUnauthorized, Code: "Unauthorized", Message: unauth.Error(),
			Detail: map[string]any{"mutator": unauth.mutator, "clientID": unauth.client, "mutationID": unauth.id}})
	case errors.As(err, &herr):
		s.fail(w, log, herr)
	case errors.As(err, &gap):
		s.fail(w, log, &httpError{Status: http.StatusBadRequest, Code: "MutationIDGap", Message: gap.Error(),
			Detail: map[string]any{"clientID": gap.clientID, "expected": gap.expected, "received": gap.received}})
	case errors.As(err, &tr):
		retryAfter := 1
		if errors.Is(tr.result.Err, upstream.ErrCircuitOpen) {
			retryAfter = s.upstream.RetryAfter()
		}
		s.fail(w, log, &httpError{Status: http.StatusServiceUnavailable, Code: "UpstreamUnavailable",
			Message: tr.Error() + "; retry later", RetryAfter: retryAfter,
			Detail: map[string]any{"mutator": tr.mutator, "cause": tr.result.Cause(), "clientID": tr.client,
				"mutationID": tr.id, "upstreamStatus": tr.result.Status}})
	default:
		s.failStore(w, log, err, groupID)
	}
}

// maxBatch and batchWindow bound the mutations of one client that one
// transaction applies: a push of many mutations commits every maxBatch
// mutations, or once its transaction has been open batchWindow (a pull of
// the group waits for its lock no longer than that and one API call).
const (
	maxBatch    = 64
	batchWindow = 20 * time.Millisecond
)

// applied is what one mutation of a batch came to.
type applied struct {
	name    string
	outcome string // applied, rejected, abandoned or duplicate
	lmid    int64  // the client's last mutation id afterwards
	pending error  // kept for later (transient, unauthorized, mapping error): the batch ends with it
}

// applyBatch processes muts, consecutive mutations of one client, in one
// transaction holding the group's lock, in order: skip one already
// processed, refuse one that comes early, otherwise call the upstream and
// record the outcome. It stops at the first mutation that must wait
// (returned as stop, after the commit of those before it), after
// batchWindow, or when the push's time budget runs out; the caller passes
// at most maxBatch.
// done lists what was committed.
//
// The upstream calls happen inside the transaction and have effects outside
// it: if the commit is lost (a crash, a failed COMMIT, a database error
// later in the batch) the calls are repeated on the client's retry with the
// same idempotency keys, so the upstream sees each at least once and, when
// it honours the key, applies it exactly once; the last mutation id never
// goes back. From the upstream call on, the work is detached from the
// client's cancellation so an answered call is always recorded.
func (s *Sidecar) applyBatch(ctx context.Context, c *call, mapping *Mapping, muts []mutators.Mutation) (done []applied, stop, err error) {
	first := muts[0]
	pruned := 0
	err = s.locked(ctx, first.ClientGroupID, first.UserID, first.ClientID, func(g *store.GroupTx) error {
		opened := time.Now()
		done, stop = done[:0], nil
		for i, mu := range muts {
			if i > 0 && (time.Since(opened) >= batchWindow || time.Since(c.start) >= s.cfg.PushTimeBudget ||
				s.draining.Load() || ctx.Err() != nil) {
				return nil // the rest goes in the next transaction, if any
			}
			r, err := s.applyOne(ctx, c, mapping, g, mu)
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
			if r.outcome == "rejected" || r.outcome == "abandoned" {
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
	s.countPruned(c, pruned) // committed
	return done, stop, nil
}

// applyOne processes one mutation inside a batch's transaction.
func (s *Sidecar) applyOne(ctx context.Context, c *call, mapping *Mapping, g *store.GroupTx, mu mutators.Mutation) (applied, error) {
	r := applied{name: mu.Name}
	err := s.applyOneIn(ctx, c, mapping, g, mu, &r)
	return r, err
}

func (s *Sidecar) applyOneIn(ctx context.Context, c *call, mapping *Mapping, g *store.GroupTx, mu mutators.Mutation, r *applied) error {
	cur, err := g.LastMutationID(ctx, mu.ClientID)
	if err != nil {
		return err
	}
	switch {
	case mu.ID <= cur:
		r.outcome, r.lmid = "duplicate", cur
		return nil
	case mu.ID > cur+1:
		if cur == 0 {
			// Unknown, yet past its first mutation: a client this group
			// pruned as idle has come back. It must start over.
			if pruned, err := g.WasPruned(ctx, mu.ClientID); err != nil || pruned {
				return cmp.Or(err, store.ErrClientPruned)
			}
		}
		return &gapError{clientID: mu.ClientID, expected: cur + 1, received: mu.ID}
	}
	// The client is this group's before its mutation goes anywhere.
	if err := g.ClaimClient(ctx, mu.ClientID, s.cfg.MaxClientsPerGroup); err != nil {
		return err
	}
	keep := func(err error) error { r.pending = err; return nil }
	legacyThrough, err := g.LegacyKeysThrough(ctx, mu.ClientID)
	if err != nil {
		return err
	}
	if mu.ID > legacyThrough {
		mu.IdempotencyKey = s.idempotencyKey(mu)
	} // else: it may have been sent before the upgrade, with the old key
	dctx := context.WithoutCancel(ctx)
	var res mutators.Result
	var req *mutators.Request
	var rerr error
	if int64(len(mu.Args)) > s.cfg.MaxArgsBytes {
		// Rendering decodes the args: bound what one mutation may cost.
		rerr = fmt.Errorf("args are %d bytes, more than %d (SIDECAR_MAX_ARGS_BYTES)", len(mu.Args), s.cfg.MaxArgsBytes)
	} else {
		req, rerr = mapping.Mutators.Render(mu)
	}
	if rerr != nil {
		res = mutators.Result{Outcome: mutators.Rejected, Err: rerr}
	} else {
		res = s.send(dctx, c, req, mu)
	}
	if res.Status >= 300 && res.Status < 400 && res.Outcome == mutators.Transient {
		// A redirect: the mapping's path is not the API's. The mutation
		// waits, untouched and not counted toward giving up, for the
		// mapping to be fixed.
		s.mapErrs.report(traceIDOf(ctx), slog.LevelError, mapping.Hash, "mutation", mu.Name, res.Method, res.Path, res.Status, res.Location)
		return keep(&mappingError{mutator: mu.Name, id: mu.ID, client: mu.ClientID, method: res.Method, path: res.Path,
			status: res.Status, location: res.Location})
	}
	switch res.Status {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusUnsupportedMediaType:
		s.mapErrs.report(traceIDOf(ctx), slog.LevelWarn, mapping.Hash, "mutation", mu.Name, res.Method, res.Path, res.Status, "")
	}
	if res.Outcome == mutators.Unauthorized {
		// Expired or revoked credentials: the mutation waits, untouched,
		// for the client's fresh token (a 401 makes it call getAuth).
		return keep(&unauthorizedError{mutator: mu.Name, id: mu.ID, client: mu.ClientID, status: res.Status})
	}
	if res.Outcome == mutators.Rejected && res.Status != 0 {
		// Some APIs answer an expired token with a business error (a
		// guest may not create: 400). Before consuming a rejection, make
		// sure the credentials still stand.
		if err := s.recheckCredentials(dctx, c, mu); err != nil {
			return keep(err)
		}
	}
	abandoned := false
	if res.Outcome == mutators.Transient {
		tr := &transientError{mutator: mu.Name, id: mu.ID, client: mu.ClientID, result: res}
		attempts, giveUp, err := s.countAttempt(dctx, g, mu, res)
		switch {
		case err != nil:
			return err
		case !giveUp:
			return keep(tr)
		}
		abandoned = true
		c.log.Warn("mutation abandoned", "client", mu.ClientID, "mutation_id", mu.ID, "mutator", mu.Name,
			"outcome", "abandoned", "status", res.Status, "attempts", attempts.Count, "over", attempts.Span)
		res = mutators.Result{Outcome: mutators.Rejected, Status: res.Status, Body: res.Body,
			Err: fmt.Errorf("gave up after %d attempts over %s", attempts.Count, roundSpan(attempts.Span))}
	}
	if err := g.SetLastMutationID(dctx, mu.ClientID, mu.ID); err != nil {
		return err
	}
	r.outcome, r.lmid = "applied", mu.ID
	if res.Outcome == mutators.Applied {
		c.log.Debug("mutation applied", "mutator", mu.Name, "mutation_id", mu.ID, "outcome", "applied", "status", res.Status)
	}
	if res.Outcome == mutators.Rejected {
		r.outcome = "rejected"
		if abandoned {
			r.outcome = "abandoned"
		} else {
			c.log.Info("mutation rejected", "mutator", mu.Name, "mutation_id", mu.ID, "outcome", "rejected", "status", res.Status, "cause", res.Cause())
		}
		return g.RecordRejection(dctx, store.Rejection{ClientID: mu.ClientID, MutationID: mu.ID, Mutator: mu.Name,
			Status: res.Status, Reason: res.Cause(), Body: res.Body})
	}
	return nil
}

// send makes one mutation's call, in a span of its own when tracing.
func (s *Sidecar) send(ctx context.Context, c *call, req *mutators.Request, mu mutators.Mutation) mutators.Result {
	if s.tracer == nil {
		return s.sender.Do(ctx, req, c.fwd)
	}
	ctx, span := s.tracer.Start(ctx, "mutation "+mu.Name, trace.WithAttributes(
		attribute.String("replicache.client_group", mu.ClientGroupID), attribute.String("replicache.mutator", mu.Name),
		attribute.String("replicache.client", mu.ClientID), attribute.Int64("replicache.mutation_id", mu.ID)))
	defer span.End()
	res := s.sender.Do(ctx, req, c.fwd)
	span.SetAttributes(attribute.String("replicache.outcome", res.Outcome.String()))
	if res.Status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", res.Status))
	}
	if res.Outcome == mutators.Transient {
		span.SetStatus(codes.Error, res.Cause())
	}
	return res
}

// recheckCredentials asks the auth endpoint again, at most once per push,
// whether the caller's credentials still stand. It returns an
// *unauthorizedError when they no longer do (or now name someone else), the
// auth endpoint's own failure when it cannot tell, and nil when they stand
// or when identity does not come from the auth endpoint.
func (s *Sidecar) recheckCredentials(ctx context.Context, c *call, mu mutators.Mutation) error {
	if s.cfg.AuthPath == "" || c.viaHeader || c.credentialsRechecked {
		return nil
	}
	c.credentialsRechecked = true
	user, herr := s.auth.ask(ctx, c.fwd)
	switch {
	case herr != nil && herr.Status == http.StatusUnauthorized:
		return &unauthorizedError{mutator: mu.Name, id: mu.ID, client: mu.ClientID, recheck: true}
	case herr != nil:
		return herr
	case user != c.userID:
		return &unauthorizedError{mutator: mu.Name, id: mu.ID, client: mu.ClientID, recheck: true}
	}
	return nil
}

// idempotencyKey is a mutation's key: an HMAC-SHA256 of who sent it (the
// verified user, the client group, the client) and its id, under the
// sidecar's secret. Stable across retries, replicas and restarts, and
// nobody can send another user's key to the API first: client ids travel
// in the clear, the secret does not.
func (s *Sidecar) idempotencyKey(mu mutators.Mutation) string {
	return idempotencyKey(*s.secret.Load(), mu)
}

// idempotencyKey is the key a mutation's calls carry: an HMAC of who sent
// it and where it stands, under the deployment's secret.
func idempotencyKey(secret []byte, mu mutators.Mutation) string {
	mac := hmac.New(sha256.New, secret)
	for _, part := range []string{mu.UserID, mu.ClientGroupID, mu.ClientID, strconv.FormatInt(mu.ID, 10)} {
		mac.Write([]byte(part))
		mac.Write([]byte{0})
	}
	return hex.EncodeToString(mac.Sum(nil))
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

// countPruned reports the idle clients a transaction pruned to make room
// under SIDECAR_MAX_CLIENTS_PER_GROUP.
func (s *Sidecar) countPruned(c *call, pruned int) {
	if pruned > 0 {
		s.metrics.pruned.WithLabelValues("clients").Add(float64(pruned))
		c.log.Info("pruned idle clients to stay under SIDECAR_MAX_CLIENTS_PER_GROUP", "pruned", pruned)
	}
}

// trimRejections keeps the group's rejection records within
// SIDECAR_MAX_REJECTIONS_PER_GROUP and SIDECAR_REJECTION_TTL once a push
// that recorded some ends. A failure is logged, never the push's answer.
func (s *Sidecar) trimRejections(ctx context.Context, c *call, groupID string) {
	var deleted int64
	dctx := context.WithoutCancel(ctx)
	err := s.locked(dctx, groupID, c.userID, "", func(g *store.GroupTx) error {
		var err error
		deleted, err = g.TrimRejections(dctx, s.cfg.MaxRejectionsPerGroup, s.cfg.RejectionTTL)
		return err
	})
	switch {
	case err != nil:
		c.log.Warn("trimming rejection records failed", "error", err)
	case deleted > 0:
		s.metrics.pruned.WithLabelValues("rejections").Add(float64(deleted))
		c.log.Info("trimmed rejection records to SIDECAR_MAX_REJECTIONS_PER_GROUP and SIDECAR_REJECTION_TTL", "deleted", deleted)
	}
}

// countAttempt records an answered, retryable attempt of mu and says
// whether to give up on it: after SIDECAR_GIVE_UP_ATTEMPTS such answers
// spanning at least SIDECAR_GIVE_UP_AFTER. A call that got no answer
// (connection error, timeout, open breaker: no status) is never counted,
// so an outage never makes the sidecar give up, however long it lasts.
// Attempts.Count is 0 when nothing was recorded.
func (s *Sidecar) countAttempt(ctx context.Context, g *store.GroupTx, mu mutators.Mutation, res mutators.Result) (store.Attempts, bool, error) {
	if res.Status < 400 || s.cfg.GiveUpAttempts <= 0 {
		return store.Attempts{}, false, nil // no answer, or a redirect (a mapping error)
	}
	a, err := g.RecordAttempt(ctx, mu.ClientID, mu.ID, res.Status)
	if err != nil {
		return store.Attempts{}, false, err
	}
	return a, a.Count >= s.cfg.GiveUpAttempts && a.Span >= s.cfg.GiveUpAfter, nil
}

// roundSpan shortens a duration for a rejection's reason.
func roundSpan(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

func (s *Sidecar) countMutation(mapping *Mapping, name, outcome string) {
	if !mapping.Mutators.Has(name) {
		name = "unmapped"
	}
	s.metrics.mutations.WithLabelValues(name, outcome).Inc()
}
