// Package check is `replicache-sidecar check`: it tries a mapping against
// the live API before any client syncs, as the server would, and says what
// to fix in the mapping's terms. It needs no database.
//
// It builds its upstream parts with the server's own constructor
// (engine.NewParts), and reads the same verdicts the server acts on
// (package verdict), so what it reports is what the server would do. It
// imports package proxy for its Config only.
//
// Every finding names the source or mutator, what was seen and the fix (a
// setting or a mapping field, with its value). A problem is what would
// make the server fail or lose data (exit status 1); a warning is what the
// check could not verify (an empty collection) or what may go wrong under
// other writers (pages that can skip an item), and does not fail it.
package check

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Options say as whom, and how far, Run tries the mapping.
type Options struct {
	// Header is sent with every call, as a client's request would carry it
	// (e.g. Authorization); only the names SIDECAR_FORWARD_HEADERS lists
	// reach the API, as at run time.
	Header http.Header
	// User is the user id in the trusted-header mode (SIDECAR_USER_ID_HEADER),
	// given instead of asking the auth endpoint.
	User string
	// Examples are mutations to render (and with Write send), in the
	// order given: an update can need what a create before it made.
	Examples []Example
	// Write sends each example's call once, in order.
	Write bool
}

// Report is what Run found. Problems counts what must be fixed
// before clients sync; Warnings what the check could not verify, or what
// may go wrong under load, which a person should read (they do not fail
// the check).
type Report struct {
	Upstream string         `json:"upstream"`
	User     string         `json:"user"`
	Identity []string       `json:"identityProblems,omitempty"`
	Sources  []SourceCheck  `json:"sources"`
	View     []string       `json:"viewProblems,omitempty"` // across sources, as a pull fetches them
	Mutators []MutatorCheck `json:"mutators"`
	Problems int            `json:"problems"`
	Warnings int            `json:"warnings"`
	TookMs   float64        `json:"tookMs"`
	Unknown  []string       `json:"unknownExamples,omitempty"`
}

// SourceCheck is one view source tried as a pull would fetch it.
type SourceCheck struct {
	Path       string   `json:"path"`
	Pagination string   `json:"pagination"`
	Pages      int      `json:"pages"`
	Entities   int      `json:"entities"`
	SampleKeys []string `json:"sampleKeys"`
	TookMs     float64  `json:"tookMs"`
	Problems   []string `json:"problems"`
	Warnings   []string `json:"warnings,omitempty"`
	// Changes says what the delta reads tried showed, when the API
	// honours the source's changes filter.
	Changes string `json:"changes,omitempty"`
}

// MutatorCheck is one example rendered (and sent, with Write), or a
// mutator without one.
type MutatorCheck struct {
	Name     string   `json:"name"`
	Method   string   `json:"method"`
	Path     string   `json:"path"` // rendered for the example, else the template
	Example  bool     `json:"example"`
	Expect   string   `json:"expect,omitempty"`  // the example's expected answer, when not "applied"
	Outcome  string   `json:"outcome,omitempty"` // applied, rejected or retry (Write)
	Status   int      `json:"status,omitempty"`
	ServerID string   `json:"serverID,omitempty"` // the id the API chose, for an applied create that declares serverID (its JSON text: 17, "a1")
	Problems []string `json:"problems"`
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Run tries cfg's mapping against the live API: it fetches every view
// source as user o would, following pagination with the same guards as a
// pull, and renders (and with o.Write sends) each mutator's example. It
// needs no database. The error is for what stopped it from running at all.
func Run(ctx context.Context, cfg proxy.Config, o Options) (*Report, error) {
	start := time.Now()
	// The check must see every answer: no breaker between it and them.
	parts := engine.NewParts(cfg, engine.PartsOptions{Registerer: prometheus.NewRegistry(), NoBreakers: true})
	rep := &Report{Upstream: cfg.Upstream.String()}
	// Nothing to try if nothing answers: that is "could not run".
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", hostPort(cfg.Upstream))
	if err != nil {
		return nil, fmt.Errorf("the API at %s could not be reached: %w", cfg.Upstream, err)
	}
	_ = conn.Close()
	in := o.Header.Clone()
	if in == nil {
		in = http.Header{}
	}
	if o.User != "" && cfg.UserIDHeader != "" && in.Get(cfg.UserIDHeader) == "" {
		in.Set(cfg.UserIDHeader, o.User) // as the gateway sets it on the client's request
	}
	// Only what the server forwards reaches the API, as at run time.
	fwd := http.Header{}
	for _, n := range cfg.ForwardHeaders {
		for _, v := range in.Values(n) {
			if v != "" {
				fwd.Add(n, v)
			}
		}
	}
	ctx = tracing.With(ctx, tracing.Fresh())
	tracing.SetHeaders(ctx, fwd)

	// Who: the trusted header's user, or the auth endpoint's answer.
	switch {
	case o.User != "":
		rep.User = o.User
	case cfg.AuthPath != "":
		user, v := parts.Identity.Ask(ctx, fwd, "")
		if v.Problem != nil {
			// An answer without the id where the setting says: where it is.
			found := v.Cause == verdict.Unusable && idElsewhere(ctx, cfg, parts.Upstream.Auth, fwd, rep)
			if !found {
				rep.Identity = append(rep.Identity, fmt.Sprintf("the auth endpoint %s %s: %s (give the credentials of a real user: --header 'Authorization: Bearer …')",
					cfg.AuthMethod, cfg.AuthPath, v.Problem.Message))
			}
			if rep.User == "" {
				rep.count()
				rep.TookMs = millis(time.Since(start))
				return rep, nil
			}
			break // the rest is checked as the user the answer names
		}
		rep.User = user
	case cfg.UserIDHeader != "":
		rep.Identity = append(rep.Identity, fmt.Sprintf("users are named by the %s header: say which with --user", cfg.UserIDHeader))
		rep.count()
		rep.TookMs = millis(time.Since(start))
		return rep, nil
	}

	fetcher := parts.Fetcher
	c := &checker{cfg: cfg, parts: parts, user: rep.User, fwd: fwd}
	for _, src := range cfg.Mapping.View.Sources() {
		rep.Sources = append(rep.Sources, c.source(ctx, src))
	}

	// Each source passed alone: the whole view once more, as a pull fetches
	// it, for what only shows across sources (a key two sources produce,
	// the size bound over all of them).
	alone := true
	for _, sc := range rep.Sources {
		alone = alone && len(sc.Problems) == 0
	}
	if alone && len(rep.Sources) > 1 {
		if _, err := fetcher.FetchResult(ctx, cfg.Mapping.View, clientview.Request{UserID: rep.User, Header: fwd}); err != nil {
			rep.View = append(rep.View, sourceProblem(err, cfg.Upstream, cfg.MaxUpstreamBodyBytes))
		}
	}
	secret := []byte(cfg.IdempotencySecret)
	if len(secret) == 0 {
		secret = []byte(tracing.RandomHex(32)) // the deployment's is in its database
	}
	sender := parts.Sender
	// The examples in the order given (each sent before the next), then
	// the mutators without one. Like one client group's pushes: the ids the
	// API chose for creates (serverID) replace their temporary ids in the
	// examples that follow.
	ids := mutators.ServerIDs{}
	tried := map[string]bool{}
	for _, ex := range o.Examples {
		if !cfg.Mapping.Mutators.Has(ex.Mutator) {
			if !slices.Contains(rep.Unknown, ex.Mutator) {
				rep.Unknown = append(rep.Unknown, ex.Mutator)
			}
			continue
		}
		tried[ex.Mutator] = true
		rep.Mutators = append(rep.Mutators, checkMutator(ctx, cfg.Mapping.Mutators, sender, secret, ex, true, o.Write, rep.User, fwd, ids))
	}
	for _, name := range cfg.Mapping.Mutators.Names() {
		if !tried[name] {
			rep.Mutators = append(rep.Mutators, checkMutator(ctx, cfg.Mapping.Mutators, sender, secret, Example{Mutator: name}, false, o.Write, rep.User, fwd, ids))
		}
	}
	rep.count()
	rep.TookMs = millis(time.Since(start))
	return rep, nil
}

func (r *Report) count() {
	n := len(r.Identity) + len(r.Unknown) + len(r.View)
	w := 0
	for _, s := range r.Sources {
		n += len(s.Problems)
		w += len(s.Warnings)
	}
	for _, m := range r.Mutators {
		n += len(m.Problems)
	}
	r.Problems, r.Warnings = n, w
}

// checker tries the view's sources as one user.
type checker struct {
	cfg   proxy.Config
	parts engine.Parts
	user  string
	fwd   http.Header
}

func (c *checker) request() clientview.Request {
	return clientview.Request{UserID: c.user, Header: c.fwd}
}

func (c *checker) problem(err error) string {
	return sourceProblem(err, c.cfg.Upstream, c.cfg.MaxUpstreamBodyBytes)
}

// source reads src in full as a pull would, then looks at what only an
// answer shows: a collection too empty to verify anything, pages that
// can skip an item, and whether the API honours the source's changes.
func (c *checker) source(ctx context.Context, src clientview.SourceInfo) SourceCheck {
	sc := SourceCheck{Path: src.Path, Pagination: cmp.Or(src.Pagination, "single answer"), SampleKeys: []string{}, Problems: []string{}}
	t0 := time.Now()
	res, err := c.parts.Fetcher.FetchResult(ctx, src.View, c.request())
	sc.TookMs = millis(time.Since(t0))
	if err != nil {
		sc.Problems = append(sc.Problems, c.problem(err))
		return sc
	}
	sc.Pages, sc.Entities = len(res.Pages), len(res.Entries)
	for i, e := range res.Entries {
		if i == 3 {
			break
		}
		sc.SampleKeys = append(sc.SampleKeys, e.Key)
	}
	read := res.Sources[0]
	if len(res.Entries) == 0 && len(read.Deleted) == 0 {
		what := "its key template"
		if src.Delta {
			what += ", its changes"
		}
		sc.Warnings = append(sc.Warnings, fmt.Sprintf("answered no items for user %s, so nothing of the items was verified (%s): "+
			"an empty collection passes whatever the mapping says; give the credentials of a user who has items (--header, --user)", userName(c.user), what))
		return sc
	}
	c.paging(ctx, src, res, &sc)
	if src.Delta {
		c.changes(ctx, src, res, &sc)
	}
	return sc
}

// userName is how the report names user.
func userName(user string) string {
	if user == "" {
		return "(anonymous)"
	}
	return user
}

// sourceProblem says what a failed source needs, in the mapping's terms,
// from the verdict the server would reach on it.
func sourceProblem(err error, base *url.URL, maxBytes int64) string {
	v, _ := verdict.View(err, "", 1)
	var se *clientview.SourceError
	var st *clientview.StatusError
	errors.As(err, &se)
	switch {
	case v.Cause == verdict.Mapping && v.Report != nil:
		r := v.Report
		return fmt.Sprintf("%s answers %d, a redirect to %s: write %s in the mapping", r.Path, r.Status, cmp.Or(r.Location, "(no Location)"),
			canonical(base, r.Path, r.Location))
	case errors.As(err, &st) && (st.Status == http.StatusUnauthorized || st.Status == http.StatusForbidden):
		return fmt.Sprintf("%s answers %d: the credentials given (--header, --user) are not accepted for it", st.Path, st.Status)
	case st != nil:
		return fmt.Sprintf("%s answers %d", st.Path, st.Status)
	case se != nil && se.Shifted:
		return se.Reason + " (the pages moved while they were read: another writer? try again)"
	case se != nil && strings.Contains(se.Reason, "larger than"):
		return fmt.Sprintf("%s (SIDECAR_MAX_UPSTREAM_BODY_BYTES is %d)", se.Reason, maxBytes)
	case se != nil:
		return se.Reason
	}
	return err.Error()
}

// canonical is the path to write for a source the API redirects: the
// redirect's target, relative to the upstream's base when it is on it.
func canonical(base *url.URL, from, location string) string {
	if location == "" {
		return "the path the API expects"
	}
	ref, err := url.Parse(from)
	if err != nil {
		return location
	}
	to, err := base.ResolveReference(ref).Parse(location)
	if err != nil {
		return location
	}
	if to.Host != base.Host {
		return to.String() + " (on another host: the sidecar only calls SIDECAR_UPSTREAM_URL)"
	}
	p := strings.TrimPrefix(to.EscapedPath(), strings.TrimSuffix(base.EscapedPath(), "/"))
	if to.RawQuery != "" {
		p += "?" + to.RawQuery
	}
	return p
}

// checkMutator renders ex (and with write sends it). ids are the server
// ids the examples before it got for their temporary ids: rendered in, and
// added to when ex is an applied create that declares serverID.
func checkMutator(ctx context.Context, set *mutators.Set, sender *mutators.Client, secret []byte, ex Example, has, write bool, user string, fwd http.Header, ids mutators.ServerIDs) MutatorCheck {
	name := ex.Mutator
	method, path, _ := set.Template(name)
	mc := MutatorCheck{Name: name, Method: method, Path: path, Example: has, Problems: []string{}}
	if ex.Expect != "applied" {
		mc.Expect = ex.Expect
	}
	if !has {
		return mc
	}
	mu := mutators.Mutation{ClientGroupID: "check-" + tracing.RandomHex(8), ClientID: "check-" + tracing.RandomHex(8), ID: 1, Name: name, Args: ex.Args, UserID: user, ServerIDs: ids}
	mu.IdempotencyKey = mutators.IdempotencyKey(secret, mu) // a key of the server's own form, never one a client will use
	req, err := set.Render(mu)
	if err != nil {
		if ex.Expect == "rejected" {
			mc.Outcome = "rejected" // as the server consumes it: a business error, nothing sent
			return mc
		}
		mc.Problems = append(mc.Problems, "the example does not render: "+err.Error())
		return mc
	}
	mc.Path = req.PathQuery
	if !write {
		return mc
	}
	res := sender.Do(ctx, req, fwd)
	mc.Status = res.Status
	// What the server would make of this answer.
	v := verdict.Mutation(mu, res, "", 1, verdict.Others{})
	switch v.Outcome {
	case verdict.Done:
		mc.Outcome = "applied"
	case verdict.Consumed:
		mc.Outcome = "rejected"
	default:
		mc.Outcome = "retry"
	}
	if mc.Outcome == "applied" && req.TempID != "" && res.ServerID != "" {
		mc.ServerID = string(res.ServerID)
		if _, ok := ids[req.TempID]; !ok { // the first stands, as in the server
			ids[req.TempID] = res.ServerID
		}
	}
	if mc.Expect != "" {
		if !expectMet(mc.Expect, mc.Outcome, res.Status) {
			mc.Problems = append(mc.Problems, fmt.Sprintf("expected %s, but %s%s", mc.Expect, answered(res), answerText(res)))
		}
		return mc
	}
	switch {
	case mc.Outcome == "applied" && res.NoServerID != "":
		mc.Problems = append(mc.Problems, fmt.Sprintf("applied (%d), but the id the API chose is unknown: %s; later mutations naming the temporary id would go out with it",
			res.Status, res.NoServerID))
	case mc.Outcome == "applied":
	case mc.Outcome == "rejected" && v.Report != nil:
		mc.Problems = append(mc.Problems, fmt.Sprintf("answered %d%s: a path or method the API does not have would consume every mutation as rejected", res.Status, answerText(res)))
	case mc.Outcome == "rejected":
		hint := "fix the example's args (or the mutator's body)"
		if res.Status == http.StatusForbidden {
			hint = "the credentials given may not do this, or the item it names does not exist; fix the example's args (or the credentials)"
		}
		mc.Problems = append(mc.Problems, fmt.Sprintf("answered %d%s: the API rejected the example; %s, or, if a rejection is the point, mark it expected: %s",
			res.Status, answerText(res), hint, expectHint(name, res.Status)))
	case v.Cause == verdict.Mapping && res.Location != "":
		mc.Problems = append(mc.Problems, fmt.Sprintf("answered %d, a redirect to %s: the sidecar never follows redirects, so the mutation would wait for a fixed mapping; write the path it names (a trailing slash?)", res.Status, res.Location))
	case v.Cause == verdict.Mapping:
		mc.Problems = append(mc.Problems, fmt.Sprintf("answered %d, a redirect: the mutation would wait for a fixed mapping", res.Status))
	case v.Cause == verdict.Credentials:
		mc.Problems = append(mc.Problems, fmt.Sprintf("answered %d: the credentials given are not accepted", res.Status))
	default:
		mc.Problems = append(mc.Problems, "not applied: "+res.Cause()+answerText(res))
	}
	return mc
}

// hostPort is u's host with its port, the scheme's when it names none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}
