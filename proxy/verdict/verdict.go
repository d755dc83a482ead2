// Package verdict decides what one upstream answer means, once per kind of
// answer: a mutation's call (Mutation), a pull's view (View) and the
// identity call (Auth). Everything that reacts to an answer reads the
// verdict instead of judging the answer again: the push and pull engines
// (what the client is told, whether the mutation is consumed), the
// circuit breakers (whether the answer is evidence that the API is
// down), the give-up valve (whether it counts toward giving up), the
// metrics (outcome labels, mapping errors) and `replicache-sidecar check`.
//
// # Contract
//
//   - A verdict function is pure: it looks at the answer (and who it was
//     for) and returns a Verdict; it sends nothing, writes nothing, logs
//     nothing. The caller acts on the verdict: Reporter.Report for a
//     mapping error, Ticket.Done for the evidence, the store for the
//     outcome.
//   - Errors lose nothing (../shared/design-notes.md): a mutation is
//     Consumed only when the API said the mutation itself is done or wrong
//     (2xx, or a business 4xx). Credentials (401), mapping mistakes
//     (redirects), outages of any length and anything the sidecar could not
//     even send leave it Pending.
//   - Only the upstream's health is evidence for a breaker: no answer, a
//     timeout, or a 5xx that the mapping retries. An answer that says the
//     caller's own request is wrong is the caller's problem. Evidence names
//     its source, the caller's identity (identity.Caller.Key): strong
//     evidence (no answer, a timeout, 502, 503, 504) always counts; weak
//     evidence (a 500) counts once per source in a row, so one user's
//     failures weigh as one however many client groups they use; the auth
//     call's 500 (its input is the caller's credential) never counts.
//
// It is safe for concurrent use: verdicts are values, and Reporter locks.
package verdict

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// Outcome is what an answer did to the request it answers.
type Outcome uint8

const (
	// Done: the mutation was applied, the view read, the caller identified.
	Done Outcome = iota + 1
	// Consumed: the API refused the mutation for good (a business error):
	// it is consumed and recorded as rejected.
	Consumed
	// Pending: not done now; kept for a later try.
	Pending
)

// Cause says why an answer is not Done.
type Cause uint8

const (
	None Cause = iota
	// Business: the API (or the mapping's rendering) rejected the mutation.
	Business
	// Credentials: the API does not accept the caller's credentials.
	Credentials
	// Mapping: the answer shows the mapping (or an auth setting) does not
	// fit the API: a redirect, a missing route.
	Mapping
	// Unavailable: no answer, or an answer that says "not now".
	Unavailable
	// Unusable: the API answered, but nothing can be made of it (not JSON,
	// a missing key, a view over the size bound, pages that shift).
	Unusable
)

// Verdict is what one answer means.
type Verdict struct {
	Outcome Outcome
	Cause   Cause
	// Evidence is what the answer says of the upstream's health, for the
	// breaker of its kind (Ticket.Done).
	Evidence upstream.Evidence
	// GiveUp: the answer counts toward giving up on the mutation (the
	// give-up valve): only a failure that is the mutation's own does
	// (ownFailure).
	GiveUp bool
	// Recheck: before a business rejection is consumed, ask the auth
	// endpoint whether the credentials still stand (some APIs answer an
	// expired token with a 400).
	Recheck bool
	// Report is a mapping error to count and log (Reporter.Report), or nil.
	Report *Report
	// Problem is what the client is told when the request stops here; nil
	// when it does not.
	Problem *problem.Error
	// Label is the mutation's outcome as metrics and logs name it (Label*).
	Label string
	// BadResponse: the API answered 2xx with something that is not a
	// usable view (upstream_errors_total{reason="bad_response"}).
	BadResponse bool
}

// Outcome labels of replicache_sidecar_mutations_total and the logs.
const (
	LabelApplied   = "applied"
	LabelDuplicate = "duplicate"
	LabelRejected  = "rejected"
	LabelTransient = "transient"
	LabelAbandoned = "abandoned"
)

// MutationLabels lists the mutation outcome labels, for pre-created series.
var MutationLabels = []string{LabelApplied, LabelDuplicate, LabelRejected, LabelTransient, LabelAbandoned}

// Kinds of upstream call, as mapping_errors_total{kind} names them.
const (
	KindMutation = "mutation"
	KindView     = "view"
	KindAuth     = "auth"
)

// Others is what the upstream answered other callers lately, as a
// mutation's call was answered (upstream.Witness.Others).
type Others struct {
	// Healthy: some call got a normal answer meanwhile.
	Healthy bool
	// SameStatus: a mutation of another caller got the same answer.
	SameStatus bool
}

// Mutation judges the answer to mu's call. source names who the call was
// for (one source's sick answers in a row weigh as one); retryAfter is
// what a client refused by an open breaker is told to wait; others is what
// the API answered others meanwhile, which decides whether a failure is
// the mutation's own (see GiveUp).
func Mutation(mu mutators.Mutation, res mutators.Result, source string, retryAfter int, others Others) Verdict {
	v := Verdict{Evidence: upstream.Evidence{Health: upstream.Healthy, Source: source, Status: res.Status}}
	detail := map[string]any{"mutator": mu.Name, "clientID": mu.ClientID, "mutationID": mu.ID}
	switch res.Status {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusUnsupportedMediaType:
		// By default a business rejection, but loud: a path or method the
		// API does not have would consume every mutation.
		v.Report = &Report{Level: slog.LevelWarn, Kind: KindMutation, Mapped: mu.Name, Method: res.Method, Path: res.Path, Status: res.Status}
	}
	switch res.Outcome {
	case mutators.Applied:
		v.Outcome, v.Label = Done, LabelApplied
		if res.NoServerID != "" {
			// Applied all the same, but the id the API chose is unknown:
			// later mutations naming the temporary id go out with it.
			v.Report = &Report{Level: slog.LevelError, Kind: KindMutation, Mapped: mu.Name, Method: res.Method, Path: res.Path,
				Status: res.Status, Reason: res.NoServerID + "; later mutations naming its temporary id go out with it"}
		}
	case mutators.Rejected:
		v.Outcome, v.Cause, v.Label = Consumed, Business, LabelRejected
		v.Recheck = res.Status != 0 // an answer, not the mapping's refusal to render
		if res.Status == 0 {
			v.Evidence.Health = upstream.Unknown // nothing was sent
		}
	case mutators.Unauthorized:
		v.Outcome, v.Cause, v.Label = Pending, Credentials, LabelTransient
		v.Problem = &problem.Error{Status: http.StatusUnauthorized, Code: problem.Unauthorized, Detail: detail,
			Message: fmt.Sprintf("mutation %d of client %s (%s): the upstream did not accept the credentials (%d); it is kept until they are renewed",
				mu.ID, mu.ClientID, mu.Name, res.Status)}
	default: // Transient
		v.Outcome, v.Label = Pending, LabelTransient
		if res.Status >= 300 && res.Status < 400 {
			// A redirect: the mapping's path is not the API's. The mutation
			// waits, untouched and not counted toward giving up, for the
			// mapping to be fixed.
			v.Cause = Mapping
			v.Report = &Report{Level: slog.LevelError, Kind: KindMutation, Mapped: mu.Name, Method: res.Method, Path: res.Path,
				Status: res.Status, Location: res.Location}
			d := cloneDetail(detail)
			d["upstreamStatus"] = res.Status
			v.Problem = &problem.Error{Status: http.StatusServiceUnavailable, Code: problem.MappingError, RetryAfter: 30, Detail: d,
				Message: fmt.Sprintf("mapping error: %s %s answered %d (Location: %q) for mutation %d of client %s (%s); redirects are never followed: fix the mutator's path",
					res.Method, res.Path, res.Status, res.Location, mu.ID, mu.ClientID, mu.Name)}
			return v
		}
		v.Cause = Unavailable
		v.Evidence = callEvidence(res.Err, res.Status, source)
		v.GiveUp = ownFailure(res.Status, others)
		ra := 1
		if errors.Is(res.Err, upstream.ErrCircuitOpen) {
			ra = retryAfter
		}
		d := cloneDetail(detail)
		d["cause"], d["upstreamStatus"] = res.Cause(), res.Status
		v.Problem = &problem.Error{Status: http.StatusServiceUnavailable, Code: problem.UpstreamUnavailable, RetryAfter: ra, Detail: d,
			Message: fmt.Sprintf("mutation %d of client %s (%s) not applied: %s; retry later", mu.ID, mu.ClientID, mu.Name, res.Cause())}
	}
	return v
}

// Abandoned is the verdict on a mutation given up on after attempts
// answered retryably over span: consumed as rejected.
func Abandoned(v Verdict) Verdict {
	v.Outcome, v.Cause, v.Label, v.Problem, v.Recheck = Consumed, Business, LabelAbandoned, nil, false
	return v
}

// View judges a pull's failed view fetch (err from clientview, the budget
// or the upstream). ok is false when err is none of those (the caller's
// bookkeeping failed): there is no view verdict then.
func View(err error, source string, retryAfter int) (v Verdict, ok bool) {
	var se *clientview.SourceError
	var st *clientview.StatusError // the upstream's answer to a page, if that is what failed
	errors.As(err, &st)
	v = Verdict{Outcome: Pending, Evidence: upstream.Evidence{Health: upstream.Healthy, Source: source}}
	if st != nil {
		v.Evidence.Status = st.Status
	}
	switch {
	case errors.Is(err, upstream.ErrCircuitOpen):
		v.Cause, v.Evidence.Health = Unavailable, upstream.Unknown
		v.Problem = Suspended(retryAfter)
	case errors.Is(err, budget.ErrBusy):
		v.Cause, v.Evidence.Health = Unavailable, upstream.Unknown
		v.Problem = BudgetProblem(err, "client view")
	case errors.Is(err, upstream.ErrQueued):
		v.Cause, v.Evidence.Health = Unavailable, upstream.Unknown
		v.Problem = problem.Unavailable(problem.UpstreamUnavailable, 1,
			"the sidecar is making as many upstream requests as it may (SIDECAR_UPSTREAM_MAX_INFLIGHT); retry in a moment")
	case errors.As(err, new(*budget.TooLargeError)):
		// Not the upstream's fault: no breaker evidence.
		v.Cause, v.Evidence.Health = Unusable, upstream.Unknown
		v.Problem = BudgetProblem(err, "client view")
		v.Problem.Status, v.Problem.Code = http.StatusBadGateway, problem.ViewTooLarge
	case !errors.As(err, &se):
		return Verdict{}, false
	case st != nil && st.Status == http.StatusUnauthorized:
		// Expired credentials: 401 makes the Replicache client call getAuth
		// and retry with a fresh token (a 502 would keep the dead one).
		v.Cause = Credentials
		v.Problem = problem.Errorf(http.StatusUnauthorized, problem.Unauthorized,
			"the upstream did not accept the credentials (view source %s answered 401)", se.Source)
	case se.Shifted:
		// Another writer kept moving items between the pages: no mapping
		// error, and the next pull will likely succeed.
		v.Cause = Unusable
		v.Problem = &problem.Error{Status: http.StatusServiceUnavailable, Code: problem.ViewShifted, RetryAfter: 1,
			Message: fmt.Sprintf("client view source %s changed while it was read (%s); retry", se.Source, se.Reason),
			Detail:  map[string]any{"source": se.Source, "reason": se.Reason}}
	case st != nil && st.Status >= 300 && st.Status < 400:
		v.Cause = Mapping
		v.Report = &Report{Level: slog.LevelError, Kind: KindView, Mapped: se.Source, Method: http.MethodGet, Path: st.Path,
			Status: st.Status, Location: st.Location}
		v.Problem = &problem.Error{Status: http.StatusBadGateway, Code: problem.MappingError,
			Message: fmt.Sprintf("mapping error: GET %s answered %d (Location: %q); redirects are never followed: write the canonical path in the mapping",
				st.Path, st.Status, st.Location),
			Detail: map[string]any{"source": se.Source, "reason": se.Reason}}
	default:
		var ce *upstream.CallError
		switch {
		case st != nil && st.Status >= 500:
			v.Cause, v.Evidence = Unavailable, callEvidence(nil, st.Status, source)
		case st != nil:
			v.Cause = Unusable
		case errors.As(err, &ce):
			v.Cause, v.Evidence = Unavailable, callEvidence(err, 0, source)
		default:
			v.Cause, v.BadResponse = Unusable, true // answered 2xx, but not a usable view
		}
		v.Problem = &problem.Error{Status: http.StatusBadGateway, Code: problem.BadGateway, Message: se.Error(),
			Detail: map[string]any{"source": se.Source, "reason": se.Reason}}
	}
	return v, true
}

// ownFailure says whether a retryable answer is the mutation's own failure,
// which alone may lead to giving up on it. Never: no answer at all; an
// answer that says the service cannot serve now (429, 502, 503, 504: a rate
// limit or an outage of any length loses nothing); an answer another
// caller's mutation got too (the API, or the mapping, fails for everyone);
// a failure while nothing else gets a normal answer (the API may be down).
func ownFailure(status int, others Others) bool {
	switch {
	case status < 400:
		return false
	case status == http.StatusTooManyRequests, status == http.StatusBadGateway,
		status == http.StatusServiceUnavailable, status == http.StatusGatewayTimeout:
		return false
	}
	return others.Healthy && !others.SameStatus
}

// callEvidence is what a retried answer (status), or no answer (err), says
// of the upstream's health.
func callEvidence(err error, status int, source string) upstream.Evidence {
	e := upstream.Evidence{Health: upstream.Sick, Source: source, Status: status}
	var ce *upstream.CallError
	switch {
	case status >= 500:
		e.Strong = status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
	case status != 0:
		e.Health = upstream.Healthy // 408, 425, 429: an answer, if a slow one
	case errors.Is(err, upstream.ErrCircuitOpen), !errors.As(err, &ce), ce.NotSent():
		e.Health = upstream.Unknown // nothing was asked of the upstream
	case ce.Canceled():
		e.Health = upstream.Unknown // the caller left: says nothing
	default:
		e.Strong = true // no answer: a timeout or a failed connection
	}
	return e
}

// Auth judges the identity call's answer: status (0 when there was none,
// with err the call's error). The user is read from a 2xx answer by the
// caller.
func Auth(method, path string, status int, location string, err error, source string) Verdict {
	endpoint := method + " " + path
	v := Verdict{Outcome: Done, Evidence: upstream.Evidence{Health: upstream.Healthy, Source: source, Status: status}}
	unavailable := func(format string, args ...any) {
		v.Outcome, v.Cause = Pending, Unavailable
		v.Problem = problem.Unavailable(problem.UpstreamUnavailable, 1, format, args...)
	}
	var ce *upstream.CallError
	switch code := status; {
	case err != nil:
		v.Evidence = callEvidence(err, 0, source)
		if errors.As(err, &ce) && ce.Timeout {
			unavailable("auth endpoint %s did not answer within %s", path, ce.After)
		} else {
			unavailable("calling auth endpoint %s failed", path)
		}
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		v.Outcome, v.Cause = Pending, Credentials
		v.Problem = problem.Errorf(http.StatusUnauthorized, problem.Unauthorized,
			"the upstream did not accept the credentials (%s answered %d)", path, code)
	case code >= 500:
		// Retry later. Only an answer that says the service is unavailable
		// (502, 503, 504) is evidence against it: the call's input is the
		// caller's own credential, and many APIs answer 500 to a malformed
		// one (a token parser that throws). One caller's problem must never
		// open the breaker that every user's pushes and pulls need.
		if e := callEvidence(nil, code, source); e.Strong {
			v.Evidence = e
		} else {
			v.Evidence.Health = upstream.Unknown
		}
		unavailable("auth endpoint %s answered %d", endpoint, code)
	case code >= 300 && code < 400:
		// A mapping error like a redirected mutation: 503, so pushes keep
		// their mutations until SIDECAR_AUTH_PATH is fixed.
		v.Outcome, v.Cause = Pending, Mapping
		v.Report = &Report{Level: slog.LevelError, Kind: KindAuth, Mapped: path, Method: method, Path: path, Status: code, Location: location}
		v.Problem = &problem.Error{Status: http.StatusServiceUnavailable, Code: problem.MappingError, RetryAfter: 30,
			Message: fmt.Sprintf("mapping error: auth endpoint %s answered %d (Location: %q); redirects are never followed: set SIDECAR_AUTH_PATH to the canonical path",
				endpoint, code, location)}
	case code == http.StatusNotFound || code == http.StatusMethodNotAllowed:
		v.Outcome, v.Cause = Pending, Mapping
		v.Report = &Report{Level: slog.LevelError, Kind: KindAuth, Mapped: path, Method: method, Path: path, Status: code}
		v.Problem = problem.Errorf(http.StatusBadGateway, problem.ConfigurationError,
			"auth endpoint %s answered %d: check SIDECAR_AUTH_PATH and SIDECAR_AUTH_METHOD", endpoint, code)
	case code < 200 || code > 299:
		v.Outcome, v.Cause = Pending, Unusable
		v.Problem = problem.Errorf(http.StatusBadGateway, problem.BadGateway, "auth endpoint %s answered %d", path, code)
	}
	return v
}

// Suspended answers a request that needs the upstream while its breaker is
// open: retry when the next trial may go through.
func Suspended(retryAfter int) *problem.Error {
	return &problem.Error{Status: http.StatusServiceUnavailable, Code: problem.UpstreamUnavailable,
		Message: "the upstream service is failing; calls are suspended for a moment", RetryAfter: retryAfter,
		Detail: map[string]any{"cause": upstream.ErrCircuitOpen.Error()}}
}

// BudgetProblem answers a request whose bytes (what) found no room in the
// process-wide in-flight budget: 503 to retry in a moment, or 413 when it
// needs more than the whole budget.
func BudgetProblem(err error, what string) *problem.Error {
	var tooLarge *budget.TooLargeError
	if errors.As(err, &tooLarge) {
		return problem.Errorf(http.StatusRequestEntityTooLarge, problem.PayloadTooLarge, "the %s %s", what, tooLarge.Error())
	}
	if errors.Is(err, budget.ErrBusy) {
		return problem.Unavailable(problem.MemoryBudgetExhausted, 1,
			"the sidecar holds as many request and view bytes as its memory allows (SIDECAR_MAX_INFLIGHT_VIEW_BYTES); retry in a moment")
	}
	return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "reading the %s: %v", what, err)
}

func cloneDetail(d map[string]any) map[string]any {
	out := make(map[string]any, len(d)+2)
	for k, v := range d {
		out[k] = v
	}
	return out
}
