// Package identity decides, once, at the edge, who is calling and what the
// caller may claim, before anything large is read: for pushes, pulls, poke
// streams and the pass-through alike.
//
// # Contract
//
//   - Who: with SIDECAR_USER_ID_HEADER, that header names the user when it
//     comes from a trusted proxy (SIDECAR_TRUSTED_PROXIES); from anyone
//     else it is refused (401), never ignored. Else, with
//     SIDECAR_AUTH_PATH, the API is asked with the forwarded headers. With
//     neither the sidecar is single-tenant: every caller is the anonymous
//     user "".
//   - Fairness: Caller.Key is the one key every fairness rule uses (memory
//     budget, breaker evidence, poke slots, view-record storage): the user
//     when known, the client's address otherwise. Never a client group or
//     client id, which the caller invents at will.
//   - The client's address is the connection's peer, or, when the peer is
//     a trusted proxy, the last address in X-Forwarded-For that is not a
//     trusted proxy.
//   - Same site: push and pull take only JSON; with SIDECAR_CORS_ORIGINS an
//     unlisted Origin or Sec-Fetch-Site: cross-site is refused (403).
//   - Identification reads headers only; the body is the caller's to read
//     afterwards, bounded.
//
// An Edge is safe for concurrent use.
package identity

import (
	"context"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Options configure an Edge; the names are the settings'.
type Options struct {
	UserIDHeader   string         // SIDECAR_USER_ID_HEADER ("": unused)
	TrustedProxies []netip.Prefix // SIDECAR_TRUSTED_PROXIES
	AuthPath       string         // SIDECAR_AUTH_PATH ("": unused)
	AuthMethod     string         // GET, or POST with {} as the body
	AuthUserField  string         // dotted path of the user id in the answer
	ForwardHeaders []string       // SIDECAR_FORWARD_HEADERS, canonical
	CORSOrigins    []string       // SIDECAR_CORS_ORIGINS
	// TraceClients: every caller's traceparent is continued, not only a
	// trusted proxy's (SIDECAR_TRACE_CLIENTS).
	TraceClients bool
	// Base is the upstream's URL; Auth makes the identity calls.
	Base *url.URL
	Auth *upstream.Client
	// Reporter counts and logs a mapping error of the auth call (nil:
	// neither).
	Reporter *verdict.Reporter
}

// Edge identifies callers. It is safe for concurrent use.
type Edge struct {
	o     Options
	field []string
	base  string
}

// New returns an Edge for o.
func New(o Options) *Edge {
	return &Edge{o: o, field: strings.Split(o.AuthUserField, "."), base: strings.TrimSuffix(o.Base.String(), "/")}
}

// Caller is who sent a request, as the edge decided.
type Caller struct {
	User      string     // "" in single-tenant mode
	ViaHeader bool       // named by the trusted header, not the auth call
	Addr      netip.Addr // the client's address (see the package contract)
	RequestID string     // the client's X-Replicache-RequestID, bounded
	// Forward is what every upstream call the request causes carries: the
	// forwarded headers, the request id as X-Request-ID, the trace context.
	Forward http.Header
}

// Key is who the caller is for every fairness rule: the user when known,
// the client's address otherwise.
func (c Caller) Key() string {
	if c.User != "" || c.ViaHeader {
		return "user:" + c.User
	}
	return "addr:" + c.Addr.String()
}

// Identify decides who sent r, from its headers alone: an *problem.Error
// is 401 when the caller is not authenticated, 502/503 when the auth
// endpoint misbehaves.
func (e *Edge) Identify(ctx context.Context, r *http.Request) (Caller, *problem.Error) {
	c := Caller{RequestID: RequestID(r), Addr: e.ClientAddr(r)}
	c.Forward = e.forward(r, c.RequestID)
	if h := e.o.UserIDHeader; h != "" {
		if _, sent := r.Header[http.CanonicalHeaderKey(h)]; sent && !e.Trusted(r.RemoteAddr) {
			return c, problem.Errorf(http.StatusUnauthorized, problem.Unauthorized,
				"the %s header is accepted only from a trusted proxy (SIDECAR_TRUSTED_PROXIES)", h)
		}
		if v := strings.TrimSpace(r.Header.Get(h)); v != "" {
			c.User, c.ViaHeader = v, true
			return c, nil
		}
		if e.o.AuthPath == "" {
			return c, problem.Errorf(http.StatusUnauthorized, problem.Unauthorized, "missing %s header", h)
		}
	}
	if e.o.AuthPath == "" {
		return c, nil
	}
	user, v := e.Ask(ctx, c.Forward, c.Key())
	if v.Problem != nil {
		return c, v.Problem
	}
	c.User = user
	return c, nil
}

// AsksAPI reports whether users are identified by the auth call (so that
// their credentials can be asked about again).
func (e *Edge) AsksAPI() bool { return e.o.AuthPath != "" }

// Ask asks the auth endpoint who the credentials in fwd belong to. The
// verdict's Problem is set when no user came of it; source is who is
// asking (for the breaker's evidence). The call is admitted by the auth
// breaker and reports its evidence.
func (e *Edge) Ask(ctx context.Context, fwd http.Header, source string) (string, verdict.Verdict) {
	method, path := e.o.AuthMethod, e.o.AuthPath
	t, err := e.o.Auth.Admit()
	if err != nil {
		v := verdict.Auth(method, path, 0, "", err, source)
		return "", v
	}
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("{}")
	}
	req, err := http.NewRequestWithContext(upstream.WithCaller(upstream.WithTicket(ctx, t), source), method, e.base+path, body)
	if err != nil {
		t.Done(upstream.Evidence{})
		return "", verdict.Verdict{Outcome: verdict.Pending, Problem: problem.Errorf(http.StatusInternalServerError, problem.Internal, "building auth request: %v", err)}
	}
	for k, vs := range fwd {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.o.Auth.Do(req)
	status, location := 0, ""
	if err == nil {
		defer func() { _ = resp.Body.Close() }()
		status, location = resp.StatusCode, resp.Header.Get("Location")
	}
	v := verdict.Auth(method, path, status, location, err, source)
	t.Done(v.Evidence)
	e.o.Reporter.Report(tracing.IDOf(ctx), "", v.Report)
	if v.Problem != nil {
		return "", v
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var val []byte
	present := false
	if err == nil {
		val, present, err = jsonwalk.Lookup(raw, e.field)
	}
	id, _ := jsonwalk.StringOrNumber(val)
	switch {
	case err != nil:
		v.Outcome, v.Cause = verdict.Pending, verdict.Unusable
		v.Problem = problem.Errorf(http.StatusBadGateway, problem.BadGateway, "auth endpoint %s did not answer JSON", path)
	case !present || id == "":
		v.Outcome, v.Cause = verdict.Pending, verdict.Unusable
		v.Problem = problem.Errorf(http.StatusBadGateway, problem.BadGateway, "auth endpoint %s answered without a string or number field %q", path, e.o.AuthUserField)
	}
	return id, v
}

// Trusted reports whether remoteAddr (host:port, as in
// http.Request.RemoteAddr) is a trusted proxy's.
func (e *Edge) Trusted(remoteAddr string) bool {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	return e.trustedAddr(ap.Addr())
}

func (e *Edge) trustedAddr(a netip.Addr) bool {
	a = a.Unmap().WithZone("") // a link-local peer carries its interface
	for _, n := range e.o.TrustedProxies {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// ClientAddr is the address of the client that sent r: the connection's
// peer or, from a trusted proxy, the last X-Forwarded-For address that is
// not a trusted proxy's.
func (e *Edge) ClientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap().WithZone("")
	if !e.trustedAddr(addr) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return addr // a hop we cannot read: stop at what we know
		}
		if a = a.Unmap().WithZone(""); !e.trustedAddr(a) {
			return a
		}
		addr = a
	}
	return addr
}

// SameSiteJSON refuses what a cross-site form could send with the user's
// cookies. Push and pull take only Content-Type: application/json (the
// Replicache client always sends it), which a cross-site page cannot send
// without a CORS preflight; and SameSite applies.
func (e *Edge) SameSiteJSON(r *http.Request) *problem.Error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return problem.Errorf(http.StatusUnsupportedMediaType, problem.UnsupportedMediaType,
			"push and pull take Content-Type: application/json, not %q", r.Header.Get("Content-Type"))
	}
	return e.SameSite(r)
}

// SameSite refuses, when SIDECAR_CORS_ORIGINS is set, a request whose
// Origin is not listed or that the browser marks cross-site.
func (e *Edge) SameSite(r *http.Request) *problem.Error {
	if len(e.o.CORSOrigins) == 0 {
		return nil
	}
	if origin := r.Header.Get("Origin"); origin != "" && !slices.Contains(e.o.CORSOrigins, origin) {
		return problem.Errorf(http.StatusForbidden, problem.Forbidden, "origin %q is not allowed (SIDECAR_CORS_ORIGINS)", origin)
	}
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return problem.Errorf(http.StatusForbidden, problem.Forbidden, "cross-site requests are refused (Sec-Fetch-Site: cross-site)")
	}
	return nil
}

// Trace is r's trace context: the caller's continued when it comes from a
// trusted proxy (or SIDECAR_TRACE_CLIENTS says every caller may), a new
// one otherwise. A trace id the sidecar's logs carry, and a sampling
// decision, are never an anonymous caller's to choose.
func (e *Edge) Trace(r *http.Request) tracing.Context {
	return tracing.FromRequest(r, e.o.TraceClients || e.Trusted(r.RemoteAddr))
}

// forward returns what every upstream call a request causes carries from
// r: the configured headers, skipping empty values (the Replicache client
// sends an empty Authorization when it has none), the request id as
// X-Request-ID for correlation, and the trace context.
func (e *Edge) forward(r *http.Request, requestID string) http.Header {
	h := make(http.Header, len(e.o.ForwardHeaders)+3)
	for _, n := range e.o.ForwardHeaders {
		for _, v := range r.Header.Values(n) {
			if v != "" {
				h.Add(n, v)
			}
		}
	}
	if requestID != "" {
		h.Set("X-Request-ID", requestID)
	}
	tracing.SetHeaders(r.Context(), h)
	return h
}

// maxIDLen bounds ids that end up in the database, logs and headers.
const maxIDLen = 512

// RequestID returns the client's request id, used to correlate logs and
// upstream calls (it is not unique: see the protocol notes).
func RequestID(r *http.Request) string {
	id := r.Header.Get("X-Replicache-RequestID")
	if len(id) > maxIDLen {
		id = id[:maxIDLen]
	}
	return id
}
