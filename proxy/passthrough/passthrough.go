// Package passthrough sends every request that is not the sidecar's own
// (push, pull, poke, invalidate) to the legacy API and streams the answer
// back: method, cleaned path, query, headers and body. What the API learns
// of the client depends on who the peer is (Options.Trusted): from a
// trusted proxy its forwarding headers are kept and the peer appended to
// X-Forwarded-For; from anyone else they are replaced by what the
// connection says, and the identity header is removed.
package passthrough

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// Options configure the pass-through.
type Options struct {
	Base      *url.URL
	Transport http.RoundTripper // upstream.Upstream.Passthrough: its breaker counts only failing to reach the API
	Log       *slog.Logger
	// Suspended answers a request refused by the open breaker.
	Suspended *problem.Error
	// IdentityHeader (when set) is removed from requests that do not come
	// from a trusted proxy, so nobody can claim an identity to the legacy
	// service through the sidecar.
	IdentityHeader string
	// Trusted says whether a peer (host:port) is a trusted proxy; the
	// identity edge decides it (identity.Edge.Trusted).
	Trusted func(remoteAddr string) bool
	// KeepHost sends the incoming Host on (SIDECAR_PASSTHROUGH_HOST=incoming).
	KeepHost bool
	// Deny are path prefixes answered 404 without an upstream call.
	Deny []string
	// OnWrite, when set, is called after a write (POST, PUT, PATCH, DELETE)
	// the upstream answered 2xx, before the answer's body is passed on,
	// with a copy of the write's request as the client sent it: headers
	// (the identity header included, whoever sent it: the identity edge
	// judges it), peer address, method and URL; no body. OnWrite may keep
	// the copy, whose context is not cancelled when the response ends; it
	// must return at once (anything slow goes on another goroutine).
	OnWrite func(write *http.Request)
}

// incoming carries, in the outgoing request's context, the request the
// client sent (for OnWrite).
type incoming struct{}

func isWrite(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// New returns the pass-through handler.
func New(o Options) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			in, out := pr.In, pr.Out
			out.URL.Path, out.URL.RawPath = in.URL.Path, in.URL.RawPath // cleaned by the handler below
			pr.SetURL(o.Base)
			trusted := o.Trusted(in.RemoteAddr)
			forwarded(in, out, trusted)
			if o.IdentityHeader != "" && !trusted {
				out.Header.Del(o.IdentityHeader)
			}
			if o.KeepHost {
				out.Host = in.Host
			}
			tracing.SetHeaders(in.Context(), out.Header)
		},
		Transport: o.Transport,
		ModifyResponse: func(resp *http.Response) error {
			if o.OnWrite == nil || resp.StatusCode < 200 || resp.StatusCode > 299 {
				return nil
			}
			if in, ok := resp.Request.Context().Value(incoming{}).(*http.Request); ok {
				write := in.Clone(context.WithoutCancel(in.Context()))
				write.Body, write.GetBody, write.ContentLength = http.NoBody, nil, 0
				o.OnWrite(write)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				// The client went away: not an upstream failure.
				w.WriteHeader(499)
				return
			}
			if errors.Is(err, upstream.ErrCircuitOpen) {
				failTraced(w, r, o.Suspended)
				return
			}
			o.Log.Warn("pass-through failed", "method", r.Method, "path", r.URL.Path, "error", err, "trace_id", tracing.IDOf(r.Context()))
			failTraced(w, r, problem.Errorf(http.StatusBadGateway, problem.BadGateway, "the upstream service could not be reached"))
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		clean, ok := CleanPath(r.URL.EscapedPath())
		if !ok {
			failTraced(w, r, problem.Errorf(http.StatusBadRequest, problem.BadRequest, "the path leaves the service's root"))
			return
		}
		for _, p := range o.Deny {
			if clean == p || strings.HasPrefix(clean, p+"/") {
				failTraced(w, r, problem.Errorf(http.StatusNotFound, problem.NotFound, "no such route"))
				return
			}
		}
		if clean != r.URL.EscapedPath() {
			r2 := r.Clone(r.Context())
			r2.URL.RawPath = clean
			r2.URL.Path, _ = url.PathUnescape(clean)
			r = r2
		}
		if o.OnWrite != nil && isWrite(r.Method) {
			r = r.WithContext(context.WithValue(r.Context(), incoming{}, r))
		}
		rp.ServeHTTP(w, r)
	})
}

// CleanPath resolves "." and ".." segments and repeated slashes of an
// escaped path, their percent-encoded spellings (%2e, %2f) included, so the
// path the upstream sees is the one the deny list judged and it cannot climb
// out of the upstream URL's prefix. ok is false when it would climb above
// the root. A path with nothing to resolve comes back unchanged.
func CleanPath(escaped string) (string, bool) {
	lower := strings.ToLower(escaped)
	if !strings.Contains(lower, "/.") && !strings.Contains(lower, "//") && !strings.Contains(lower, "%2e") && !strings.Contains(lower, "%2f") {
		return escaped, true
	}
	decoded := strings.NewReplacer("%2e", ".", "%2E", ".", "%2f", "/", "%2F", "/").Replace(escaped)
	var stack []string
	for _, seg := range strings.Split(decoded, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(stack) == 0 {
				return "", false
			}
			stack = stack[:len(stack)-1]
		default:
			stack = append(stack, seg)
		}
	}
	clean := "/" + strings.Join(stack, "/")
	if strings.HasSuffix(decoded, "/") && len(stack) > 0 {
		clean += "/"
	}
	return clean, true
}

// forwarded sets what the legacy service learns of the client. From a
// trusted proxy: X-Forwarded-For gains the peer, and the proxy's
// X-Forwarded-Proto, X-Forwarded-Host and Forwarded are kept. From anyone
// else, whatever it claimed is replaced by what the connection says, and
// X-Real-IP is dropped.
func forwarded(in, out *http.Request, trusted bool) {
	peer, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		peer = in.RemoteAddr
	}
	proto := "http"
	if in.TLS != nil {
		proto = "https"
	}
	if !trusted {
		out.Header.Del("Forwarded")
		out.Header.Del("X-Real-Ip")
		out.Header.Set("X-Forwarded-For", peer)
		out.Header.Set("X-Forwarded-Proto", proto)
		out.Header.Set("X-Forwarded-Host", in.Host)
		return
	}
	// Rewrite has removed Forwarded and the X-Forwarded-* headers from out:
	// restore the trusted proxy's.
	xff := strings.Join(in.Header.Values("X-Forwarded-For"), ", ")
	if xff != "" {
		xff += ", "
	}
	out.Header.Set("X-Forwarded-For", xff+peer)
	for _, h := range []string{"X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
		if v := in.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	if out.Header.Get("X-Forwarded-Proto") == "" {
		out.Header.Set("X-Forwarded-Proto", proto)
	}
	if out.Header.Get("X-Forwarded-Host") == "" {
		out.Header.Set("X-Forwarded-Host", in.Host)
	}
}

// failTraced answers a pass-through request with the sidecar's own error,
// naming the request's trace (the API's answers are passed on as they are).
func failTraced(w http.ResponseWriter, r *http.Request, e *problem.Error) {
	if id := tracing.IDOf(r.Context()); id != "" {
		w.Header().Set("X-Trace-ID", id)
	}
	problem.Write(w, e)
}
