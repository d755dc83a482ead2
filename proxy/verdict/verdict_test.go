package verdict

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

var mu = mutators.Mutation{ClientGroupID: "g", ClientID: "c", ID: 7, Name: "createTodo"}

// TestMutation: what each answer to a mutation's call comes to.
func TestMutation(t *testing.T) {
	noAnswer := &upstream.CallError{Err: errors.New("connection refused")}
	for _, tc := range []struct {
		name     string
		res      mutators.Result
		outcome  Outcome
		cause    Cause
		health   upstream.Health
		strong   bool
		giveUp   bool
		recheck  bool
		reported bool
		code     problem.Code // "" for no problem
	}{
		// The plain cases: consumed only when the API said so.
		{"2xx applied", mutators.Result{Outcome: mutators.Applied, Status: 201}, Done, None, upstream.Healthy, false, false, false, false, ""},
		// A create whose answer lacks the id the mapping names: applied
		// all the same, and loud (a mapping error).
		{"2xx applied without its server id, reported", mutators.Result{Outcome: mutators.Applied, Status: 201, NoServerID: "the answer has no field id (serverID.field)"},
			Done, None, upstream.Healthy, false, false, false, true, ""},
		{"business 4xx consumed, credentials re-checked first", mutators.Result{Outcome: mutators.Rejected, Status: 422},
			Consumed, Business, upstream.Healthy, false, false, true, false, ""},
		// A mutation the mapping cannot render was never sent: consumed,
		// with nothing learnt about the API and nothing to re-check.
		{"render error", mutators.Result{Outcome: mutators.Rejected, Err: errors.New("missing arg")},
			Consumed, Business, upstream.Unknown, false, false, false, false, ""},
		// 404 is a rejection by default, but loud: a wrong path would
		// consume every mutation.
		{"404 reported", mutators.Result{Outcome: mutators.Rejected, Status: 404}, Consumed, Business, upstream.Healthy, false, false, true, true, ""},
		{"401 kept for fresh credentials", mutators.Result{Outcome: mutators.Unauthorized, Status: 401},
			Pending, Credentials, upstream.Healthy, false, false, false, false, problem.Unauthorized},
		// A redirect is a mapping error: kept, never counted toward giving
		// up, never evidence against the API.
		{"redirect kept for the mapping", mutators.Result{Outcome: mutators.Transient, Status: 301, Location: "/x/"},
			Pending, Mapping, upstream.Healthy, false, false, false, true, problem.MappingError},
		// An outage of any length loses nothing: "unavailable" never counts
		// toward giving up.
		{"503 pending, strong evidence, never counts toward giving up", mutators.Result{Outcome: mutators.Transient, Status: 503},
			Pending, Unavailable, upstream.Sick, true, false, false, false, problem.UpstreamUnavailable},
		{"500 pending, weak evidence", mutators.Result{Outcome: mutators.Transient, Status: 500},
			Pending, Unavailable, upstream.Sick, false, true, false, false, problem.UpstreamUnavailable},
		// A 429 is an answer (the API is up), not evidence of an outage.
		{"429 pending, healthy, never counts toward giving up", mutators.Result{Outcome: mutators.Transient, Status: 429},
			Pending, Unavailable, upstream.Healthy, false, false, false, false, problem.UpstreamUnavailable},
		// No answer at all: evidence, but never counted toward giving up.
		{"no answer", mutators.Result{Outcome: mutators.Transient, Err: noAnswer},
			Pending, Unavailable, upstream.Sick, true, false, false, false, problem.UpstreamUnavailable},
		{"breaker open: nothing sent", mutators.Result{Outcome: mutators.Transient, Err: &upstream.CallError{Err: upstream.ErrCircuitOpen}},
			Pending, Unavailable, upstream.Unknown, false, false, false, false, problem.UpstreamUnavailable},
		{"caller left", mutators.Result{Outcome: mutators.Transient, Err: &upstream.CallError{Err: context.Canceled}},
			Pending, Unavailable, upstream.Unknown, false, false, false, false, problem.UpstreamUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Mutation(mu, tc.res, "src", 3, Others{Healthy: true})
			if v.Outcome != tc.outcome || v.Cause != tc.cause {
				t.Errorf("outcome, cause = %v, %v; want %v, %v", v.Outcome, v.Cause, tc.outcome, tc.cause)
			}
			if v.Evidence.Health != tc.health || v.Evidence.Strong != tc.strong || v.Evidence.Source != "src" {
				t.Errorf("evidence = %+v; want health %v strong %v from src", v.Evidence, tc.health, tc.strong)
			}
			if v.GiveUp != tc.giveUp || v.Recheck != tc.recheck || (v.Report != nil) != tc.reported {
				t.Errorf("giveUp %v recheck %v report %v; want %v %v %v", v.GiveUp, v.Recheck, v.Report != nil, tc.giveUp, tc.recheck, tc.reported)
			}
			switch {
			case tc.code == "" && v.Problem != nil:
				t.Errorf("problem %v, want none", v.Problem)
			case tc.code != "" && (v.Problem == nil || v.Problem.Code != tc.code):
				t.Errorf("problem %v, want code %s", v.Problem, tc.code)
			}
		})
	}
	// A 500 is the mutation's own only while others get normal answers and
	// nobody else gets the same one.
	for _, tc := range []struct {
		others Others
		want   bool
	}{
		{Others{Healthy: true}, true},
		{Others{Healthy: true, SameStatus: true}, false}, // the API (or the mapping) fails for everyone
		{Others{}, false},                                // nothing else answers normally: maybe an outage
	} {
		if v := Mutation(mu, mutators.Result{Outcome: mutators.Transient, Status: 500}, "", 1, tc.others); v.GiveUp != tc.want {
			t.Errorf("500 with %+v: GiveUp = %v, want %v", tc.others, v.GiveUp, tc.want)
		}
	}
	// The open breaker's wait is what the client is told.
	v := Mutation(mu, mutators.Result{Outcome: mutators.Transient, Err: &upstream.CallError{Err: upstream.ErrCircuitOpen}}, "", 3, Others{})
	if v.Problem.RetryAfter != 3 {
		t.Errorf("Retry-After with the breaker open = %d, want 3", v.Problem.RetryAfter)
	}
	if a := Abandoned(Mutation(mu, mutators.Result{Outcome: mutators.Transient, Status: 500}, "", 1, Others{})); a.Outcome != Consumed || a.Label != LabelAbandoned || a.Problem != nil {
		t.Errorf("Abandoned = %+v", a)
	}
}

// TestView: what a failed fetch of the view comes to.
func TestView(t *testing.T) {
	src := func(err error, reason string) error {
		return &clientview.SourceError{Source: "/api/todos", Reason: reason, Err: err}
	}
	for _, tc := range []struct {
		name   string
		err    error
		health upstream.Health
		code   problem.Code
		status int
	}{
		{"401: credentials", src(&clientview.StatusError{Status: 401}, "upstream answered 401"), upstream.Healthy, problem.Unauthorized, 401},
		{"redirect: mapping error", src(&clientview.StatusError{Status: 301, Location: "/api/todos/"}, "x"), upstream.Healthy, problem.MappingError, 502},
		{"503: evidence", src(&clientview.StatusError{Status: 503}, "x"), upstream.Sick, problem.BadGateway, 502},
		{"404: the API answered", src(&clientview.StatusError{Status: 404}, "x"), upstream.Healthy, problem.BadGateway, 502},
		{"not JSON: a bad response", src(nil, "response is not JSON"), upstream.Healthy, problem.BadGateway, 502},
		{"no answer", src(&upstream.CallError{Timeout: true}, "x"), upstream.Sick, problem.BadGateway, 502},
		{"shifted pages", &clientview.SourceError{Source: "/a", Reason: "x", Shifted: true}, upstream.Healthy, problem.ViewShifted, 503},
		{"breaker open", &upstream.CallError{Err: upstream.ErrCircuitOpen}, upstream.Unknown, problem.UpstreamUnavailable, 503},
		{"budget spent", budget.ErrBusy, upstream.Unknown, problem.MemoryBudgetExhausted, 503},
		{"view too large", &budget.TooLargeError{Limit: 10}, upstream.Unknown, problem.ViewTooLarge, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, ok := View(tc.err, "", 2)
			if !ok || v.Outcome != Pending || v.Evidence.Health != tc.health || v.Problem.Code != tc.code || v.Problem.Status != tc.status {
				t.Errorf("View = ok %v %+v %v; want health %v code %s status %d", ok, v.Evidence, v.Problem, tc.health, tc.code, tc.status)
			}
		})
	}
	if _, ok := View(errors.New("database down"), "", 1); ok {
		t.Error("a bookkeeping error got a view verdict")
	}
}

// TestAuth: what the identity call's answers come to.
func TestAuth(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		err     error
		outcome Outcome
		health  upstream.Health
		code    problem.Code
	}{
		{"200", 200, nil, Done, upstream.Healthy, ""},
		{"401: not authenticated", 401, nil, Pending, upstream.Healthy, problem.Unauthorized},
		{"403: not authenticated", 403, nil, Pending, upstream.Healthy, problem.Unauthorized},
		{"404: the setting is wrong", 404, nil, Pending, upstream.Healthy, problem.ConfigurationError},
		{"302: a mapping error", 302, nil, Pending, upstream.Healthy, problem.MappingError},
		{"503: an outage", 503, nil, Pending, upstream.Sick, problem.UpstreamUnavailable},
		// The auth call's input is the caller's credential: a 500 for a
		// malformed token is that caller's problem, never evidence.
		{"500: the caller's problem", 500, nil, Pending, upstream.Unknown, problem.UpstreamUnavailable},
		{"timeout", 0, &upstream.CallError{Timeout: true}, Pending, upstream.Sick, problem.UpstreamUnavailable},
		{"418: unusable", 418, nil, Pending, upstream.Healthy, problem.BadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Auth(http.MethodGet, "/me", tc.status, "", tc.err, "")
			code := problem.Code("")
			if v.Problem != nil {
				code = v.Problem.Code
			}
			if v.Outcome != tc.outcome || v.Evidence.Health != tc.health || code != tc.code {
				t.Errorf("Auth = %v %+v %q; want %v %v %q", v.Outcome, v.Evidence, code, tc.outcome, tc.health, tc.code)
			}
		})
	}
}
