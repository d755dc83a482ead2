package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy"
)

// twoSourceAPI answers two lists; /a and /b share the id "x".
func twoSourceAPI(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		pad := strings.Repeat("p", 300)
		switch r.URL.Path {
		case "/a":
			_, _ = fmt.Fprintf(w, `{"items":[{"id":"x","pad":%q},{"id":"a1","pad":%q}]}`, pad, pad)
		case "/b":
			_, _ = fmt.Fprintf(w, `{"items":[{"id":"x","pad":%q},{"id":"b1","pad":%q}]}`, pad, pad)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// pullFetch is what every pull does: the whole view in one FetchResult.
func pullFetch(t *testing.T, env map[string]string) error {
	t.Helper()
	cfg, err := proxy.LoadConfig(withoutDatabase(env))
	if err != nil {
		t.Fatal(err)
	}
	f := clientview.NewFetcher(clientview.FetcherOptions{Base: cfg.Upstream, Upstream: http.DefaultClient, MaxBodyBytes: cfg.MaxUpstreamBodyBytes})
	_, err = f.FetchResult(context.Background(), cfg.Mapping.View, clientview.Request{})
	return err
}

// TestCheckCrossSourceDuplicates: two sources producing the same key fail
// every pull (502); the check finds it by fetching the whole view once as
// a pull does.
func TestCheckCrossSourceDuplicates(t *testing.T) {
	api := twoSourceAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": writeMapping(t, `{
	  "mutators": {"m": {"method": "POST", "path": "/a"}},
	  "clientView": [{"path": "/a", "items": "items", "key": "k/{id}"}, {"path": "/b", "items": "items", "key": "k/{id}"}]}`)}
	if err := pullFetch(t, env); err == nil || !strings.Contains(err.Error(), "duplicate key") {
		t.Fatalf("the pull's fetch: %v; want a duplicate key", err)
	}
	if code, out, errOut := check(t, env); code != 1 {
		t.Errorf("check exit %d, want 1 (every pull fails with a duplicate key)\n%s%s", code, out, errOut)
	}
}

// TestCheckViewSizeAcrossSources: SIDECAR_MAX_UPSTREAM_BODY_BYTES bounds
// all pages of all sources together; a view over it is a problem even when
// each source alone fits.
func TestCheckViewSizeAcrossSources(t *testing.T) {
	api := twoSourceAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAX_UPSTREAM_BODY_BYTES": "1000", "SIDECAR_MAPPING_FILE": writeMapping(t, `{
	  "mutators": {"m": {"method": "POST", "path": "/a"}},
	  "clientView": [{"path": "/a", "items": "items", "key": "a/{id}"}, {"path": "/b", "items": "items", "key": "b/{id}"}]}`)}
	if err := pullFetch(t, env); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("the pull's fetch: %v; want the view over the bound", err)
	}
	if code, out, errOut := check(t, env); code != 1 {
		t.Errorf("check exit %d, want 1 (every pull fails: view over the size bound)\n%s%s", code, out, errOut)
	}
}

// TestCheckAuthUnreachable: with SIDECAR_AUTH_PATH set and the API down,
// the check could not run (2), as in the trusted-header mode: no
// credentials problem is made up.
func TestCheckAuthUnreachable(t *testing.T) {
	env := map[string]string{"SIDECAR_UPSTREAM_URL": "http://" + freeAddr(t), "SIDECAR_MAPPING_FILE": writeMapping(t, hostileMapping),
		"SIDECAR_AUTH_PATH": "/api/me/"}
	if code, out, errOut := check(t, env, "--header", "Authorization: Token good"); code != 2 {
		t.Errorf("API down (auth mode): exit %d, want 2\n%s%s", code, out, errOut)
	}
}

// TestCheckJSONConfigError: with --json, configuration problems come as
// JSON too, for a CI gate.
func TestCheckJSONConfigError(t *testing.T) {
	env := map[string]string{"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:1", "SIDECAR_MAPPING_FILE": writeMapping(t, `{"mutators":{"m":{"method":"POST"}},"clientView":[{"path":"nope","key":""}]}`)}
	code, out, _ := check(t, env, "--json")
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Errorf("--json, exit %d: output is not JSON (%v):\n%s", code, err, out)
	}
}

// TestCheckDoesNotEchoAMalformedHeader: a --header without "Name:" (a
// token pasted alone) is refused without printing it into CI logs.
func TestCheckDoesNotEchoAMalformedHeader(t *testing.T) {
	env := map[string]string{"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:1", "SIDECAR_MAPPING_FILE": writeMapping(t, hostileMapping)}
	_, _, errOut := check(t, env, "--header", "Bearer s3cr3t-token")
	if strings.Contains(errOut, "s3cr3t-token") {
		t.Errorf("stderr repeats the credential: %s", errOut)
	}
}

// TestCheckAuthRedirect: an auth endpoint that redirects is a problem the
// check names (it crashed on the mapping-error counter it does not have).
func TestCheckAuthRedirect(t *testing.T) {
	api := hostileAPI(t) // /api/items answers 301
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": writeMapping(t, hostileMapping),
		"SIDECAR_AUTH_PATH": "/api/items"}
	code, out, errOut := check(t, env, "--header", "Authorization: Token good")
	if code != 1 || !strings.Contains(out, "answered 301") || !strings.Contains(out, "the auth endpoint GET /api/items") {
		t.Errorf("redirecting auth endpoint: exit %d\n%s%s", code, out, errOut)
	}
}
