package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// authenticator learns who sent a push or pull. With neither a trusted
// header nor an auth path configured the sidecar is single-tenant and every
// request belongs to the anonymous user "".
type authenticator struct {
	header  string       // trusted header set by a gateway; "" if unused
	peers   trustedPeers // who may set header
	path    string       // upstream path answering the caller's identity; "" if unused
	method  string       // GET, or POST with an empty JSON object
	field   []string     // dotted path of the user id in path's JSON answer
	base    string
	client  *upstream.Client
	timeout time.Duration
	mapErrs *mappingErrors
}

// newAuthenticator identifies callers as cfg says, asking the auth endpoint
// through client. mapErrs may be nil (nothing counted or logged).
func newAuthenticator(cfg Config, client *upstream.Client, mapErrs *mappingErrors) *authenticator {
	return &authenticator{
		header: cfg.UserIDHeader, peers: cfg.TrustedNets, path: cfg.AuthPath, method: cfg.AuthMethod, field: strings.Split(cfg.AuthUserField, "."),
		base: strings.TrimSuffix(cfg.Upstream.String(), "/"), client: client, timeout: cfg.UpstreamTimeout, mapErrs: mapErrs,
	}
}

// identify returns the caller's user id or an *httpError: 401 when the caller
// is not authenticated, 502/503 when the auth endpoint misbehaves. fwd are
// the headers forwarded to the upstream (forwardHeaders).
//
// The trusted header wins when present on a connection from a trusted
// proxy; when it is absent and an auth path is configured, the upstream
// decides. The header from anyone else is refused (401), never ignored: a
// client claiming an identity must not silently become someone else.
//
// viaHeader reports that the trusted header named the user.
func (a *authenticator) identify(ctx context.Context, r *http.Request, fwd http.Header) (user string, viaHeader bool, herr *httpError) {
	if a.header != "" {
		if _, sent := r.Header[http.CanonicalHeaderKey(a.header)]; sent && !a.peers.contains(r.RemoteAddr) {
			return "", false, errorf(http.StatusUnauthorized, "Unauthorized",
				"the %s header is accepted only from a trusted proxy (SIDECAR_TRUSTED_PROXIES)", a.header)
		}
		if v := strings.TrimSpace(r.Header.Get(a.header)); v != "" {
			return v, true, nil
		}
		if a.path == "" {
			return "", false, errorf(http.StatusUnauthorized, "Unauthorized", "missing %s header", a.header)
		}
	}
	if a.path == "" {
		return "", false, nil
	}
	user, herr = a.ask(ctx, fwd)
	return user, false, herr
}

func (a *authenticator) ask(ctx context.Context, fwd http.Header) (string, *httpError) {
	var body io.Reader
	if a.method == http.MethodPost {
		body = strings.NewReader("{}")
	}
	req, err := http.NewRequestWithContext(ctx, a.method, a.base+a.path, body)
	if err != nil {
		return "", errorf(http.StatusInternalServerError, "Internal", "building auth request: %v", err)
	}
	for k, vs := range fwd {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	endpoint := a.method + " " + a.path
	resp, err := a.client.Do(req)
	if err != nil {
		var ce *upstream.CallError
		if errors.As(err, &ce) && ce.Timeout {
			return "", &httpError{Status: http.StatusServiceUnavailable, Code: "UpstreamUnavailable",
				Message: fmt.Sprintf("auth endpoint %s did not answer within %s", a.path, a.timeout), RetryAfter: 1}
		}
		return "", &httpError{Status: http.StatusServiceUnavailable, Code: "UpstreamUnavailable",
			Message: fmt.Sprintf("calling auth endpoint %s failed", a.path), RetryAfter: 1}
	}
	defer func() { _ = resp.Body.Close() }()
	switch code := resp.StatusCode; {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return "", errorf(http.StatusUnauthorized, "Unauthorized", "the upstream did not accept the credentials (%s answered %d)", a.path, code)
	case code >= 500:
		// An outage of the auth endpoint is an outage: retry later.
		return "", &httpError{Status: http.StatusServiceUnavailable, Code: "UpstreamUnavailable",
			Message: fmt.Sprintf("auth endpoint %s answered %d", endpoint, code), RetryAfter: 1}
	case code >= 300 && code < 400:
		// A mapping error like a redirected mutation: 503, so pushes keep
		// their mutations until SIDECAR_AUTH_PATH is fixed.
		a.mapErrs.report(traceIDOf(ctx), slog.LevelError, "", "auth", a.path, a.method, a.path, code, resp.Header.Get("Location"))
		return "", &httpError{Status: http.StatusServiceUnavailable, Code: "MappingError", RetryAfter: 30,
			Message: fmt.Sprintf("mapping error: auth endpoint %s answered %d (Location: %q); redirects are never followed: set SIDECAR_AUTH_PATH to the canonical path",
				endpoint, code, resp.Header.Get("Location"))}
	case code == http.StatusNotFound || code == http.StatusMethodNotAllowed:
		a.mapErrs.report(traceIDOf(ctx), slog.LevelError, "", "auth", a.path, a.method, a.path, code, "")
		return "", configError("auth endpoint %s answered %d: check SIDECAR_AUTH_PATH and SIDECAR_AUTH_METHOD", endpoint, code)
	case code < 200 || code > 299:
		return "", errorf(http.StatusBadGateway, "BadGateway", "auth endpoint %s answered %d", a.path, code)
	}
	var doc any
	dec := json.NewDecoder(io.LimitReader(resp.Body, 1<<20))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return "", errorf(http.StatusBadGateway, "BadGateway", "auth endpoint %s did not answer JSON", a.path)
	}
	var id string
	switch v := walkJSON(doc, a.field).(type) {
	case string:
		id = v
	case json.Number:
		id = v.String()
	}
	if id == "" {
		return "", errorf(http.StatusBadGateway, "BadGateway", "auth endpoint %s answered without a string or number field %q", a.path, strings.Join(a.field, "."))
	}
	return id, nil
}

// walkJSON follows a dotted path through decoded JSON: object fields by
// name, array elements by index ("items.0.id"). nil when a step is absent.
func walkJSON(doc any, path []string) any {
	for _, seg := range path {
		switch node := doc.(type) {
		case map[string]any:
			doc = node[seg]
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(node) {
				return nil
			}
			doc = node[i]
		default:
			return nil
		}
	}
	return doc
}

// configError is an answer that shows the configuration or mapping does
// not fit the API (a redirect, a missing route): the operator must act.
func configError(format string, args ...any) *httpError {
	return errorf(http.StatusBadGateway, "ConfigurationError", format, args...)
}

// forwardHeaders returns what every upstream call a push or pull causes
// carries from r: the configured headers, skipping empty values (the
// Replicache client sends an empty Authorization when it has none), and
// the request id as X-Request-ID for correlation.
func forwardHeaders(r *http.Request, names []string, requestID string) http.Header {
	h := make(http.Header, len(names)+1)
	for _, n := range names {
		for _, v := range r.Header.Values(n) {
			if v != "" {
				h.Add(n, v)
			}
		}
	}
	if requestID != "" {
		h.Set("X-Request-ID", requestID)
	}
	setTraceHeaders(r.Context(), h)
	return h
}

// trustedPeers are the networks whose connections may claim an identity
// (SIDECAR_TRUSTED_PROXIES): the gateway in front of the sidecar.
type trustedPeers []netip.Prefix

// contains reports whether remoteAddr (host:port, as in
// http.Request.RemoteAddr) is in one of the networks.
func (t trustedPeers) contains(remoteAddr string) bool {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	addr := ap.Addr().Unmap().WithZone("") // a link-local peer carries its interface
	for _, n := range t {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}
