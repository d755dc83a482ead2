package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
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
	field   []string     // dotted path of the user id in path's JSON answer
	base    string
	client  *upstream.Client
	timeout time.Duration
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+a.path, nil)
	if err != nil {
		return "", errorf(http.StatusInternalServerError, "Internal", "building auth request: %v", err)
	}
	for k, vs := range fwd {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
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
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return "", errorf(http.StatusUnauthorized, "Unauthorized", "the upstream did not accept the credentials (%s answered %d)", a.path, resp.StatusCode)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return "", errorf(http.StatusBadGateway, "BadGateway", "auth endpoint %s answered %d", a.path, resp.StatusCode)
	}
	var doc any
	dec := json.NewDecoder(io.LimitReader(resp.Body, 1<<20))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return "", errorf(http.StatusBadGateway, "BadGateway", "auth endpoint %s did not answer JSON", a.path)
	}
	for _, seg := range a.field {
		obj, ok := doc.(map[string]any)
		if !ok {
			doc = nil
			break
		}
		doc = obj[seg]
	}
	var id string
	switch v := doc.(type) {
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
