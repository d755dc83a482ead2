package proxy

import (
	"net/http"
	"slices"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
)

func postOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			problem.Write(w, problem.Errorf(http.StatusMethodNotAllowed, problem.MethodNotAllowed, "%s %s: only POST is allowed", r.Method, r.URL.Path))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// cors answers CORS preflights and marks responses for the configured exact
// origins, with credentials allowed. With no origins configured it adds
// nothing at all and h sees every request, OPTIONS included.
func cors(origins []string, h http.Handler) http.Handler {
	if len(origins) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		allowed := origin != "" && slices.Contains(origins, origin)
		hdr := w.Header()
		hdr.Add("Vary", "Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if preflight {
			hdr.Add("Vary", "Access-Control-Request-Method")
			hdr.Add("Vary", "Access-Control-Request-Headers")
			if !allowed {
				problem.Write(w, problem.Errorf(http.StatusForbidden, problem.Forbidden, "origin %q is not allowed (SIDECAR_CORS_ORIGINS)", origin))
				return
			}
			hdr.Set("Access-Control-Allow-Origin", origin)
			hdr.Set("Access-Control-Allow-Credentials", "true")
			hdr.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
			if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
				hdr.Set("Access-Control-Allow-Headers", sanitizeHeaderList(req))
			}
			hdr.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if allowed {
			hdr.Set("Access-Control-Allow-Origin", origin)
			hdr.Set("Access-Control-Allow-Credentials", "true")
			hdr.Set("Access-Control-Expose-Headers", "Retry-After, X-Request-ID, X-Trace-ID")
		}
		h.ServeHTTP(w, r)
	})
}

// sanitizeHeaderList keeps the header names of a preflight's
// Access-Control-Request-Headers that are valid tokens.
func sanitizeHeaderList(list string) string {
	var out []string
	for _, h := range strings.Split(list, ",") {
		if h = strings.TrimSpace(h); config.ValidToken(h) {
			out = append(out, h)
		}
	}
	return strings.Join(out, ", ")
}
