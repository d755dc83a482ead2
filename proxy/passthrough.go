package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// newPassthrough returns the handler for every request that is not a push or
// pull: it goes to the upstream unchanged (method, path, query, headers,
// body) with X-Forwarded-For/Proto/Host added, and the answer streams back.
// The identity header (identityHeader, when set) is removed from requests
// that do not come from a trusted proxy, so nobody can claim an identity to
// the legacy service through the sidecar.
func newPassthrough(base *url.URL, transport http.RoundTripper, log *slog.Logger, retryAfter int,
	identityHeader string, trusted trustedPeers) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(base)
			pr.SetXForwarded()
			if identityHeader != "" && !trusted.contains(pr.In.RemoteAddr) {
				pr.Out.Header.Del(identityHeader)
			}
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				// The client went away: not an upstream failure.
				w.WriteHeader(499)
				return
			}
			if errors.Is(err, upstream.ErrCircuitOpen) {
				writeError(w, upstreamSuspended(retryAfter))
				return
			}
			log.Warn("pass-through failed", "method", r.Method, "path", r.URL.Path, "error", err)
			writeError(w, errorf(http.StatusBadGateway, "BadGateway", "the upstream service could not be reached"))
		},
	}
}
