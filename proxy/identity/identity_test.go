package identity

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

func edge(t *testing.T, o Options) *Edge {
	t.Helper()
	if o.Base == nil {
		o.Base = &url.URL{Scheme: "http", Host: "127.0.0.1:1"}
	}
	if o.TrustedProxies == nil {
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	}
	return New(o)
}

// TestClientAddr: the client's address is the peer's, unless the peer is a
// trusted proxy; then the last X-Forwarded-For hop that is not a trusted
// proxy. A client cannot pick its address by sending the header itself.
func TestClientAddr(t *testing.T) {
	e := edge(t, Options{})
	for _, tc := range []struct {
		name, peer, xff, want string
	}{
		{"untrusted peer: its own address, whatever it claims", "203.0.113.9:5000", "198.51.100.1", "203.0.113.9"},
		{"trusted peer: the hop before it", "127.0.0.1:5000", "198.51.100.1", "198.51.100.1"},
		// A client's own claim sits left of what the trusted chain
		// appended: the rightmost untrusted hop is the one to believe.
		{"trusted chain: the rightmost untrusted hop", "127.0.0.1:5000", "6.6.6.6, 198.51.100.1, 10.1.1.1", "198.51.100.1"},
		{"several header lines are one list", "127.0.0.1:5000", "6.6.6.6\n198.51.100.2", "198.51.100.2"},
		{"no header from a trusted peer: the peer", "127.0.0.1:5000", "", "127.0.0.1"},
		{"unreadable hop: the last known", "127.0.0.1:5000", "junk, 10.2.2.2", "10.2.2.2"},
		{"IPv4-mapped peer, compared unmapped", "[::ffff:203.0.113.9]:5000", "", "203.0.113.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tc.peer
			for _, v := range splitLines(tc.xff) {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := e.ClientAddr(r).String(); got != tc.want {
				t.Errorf("ClientAddr = %s, want %s", got, tc.want)
			}
		})
	}
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// TestIdentifyByHeader: the trusted header names the user from a trusted
// proxy, is refused from anyone else, and the fairness key follows the
// user (not the address) once one is known.
func TestIdentifyByHeader(t *testing.T) {
	e := edge(t, Options{UserIDHeader: "X-User"})
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.RemoteAddr = "127.0.0.1:1"
	r.Header.Set("X-User", "alice")
	c, p := e.Identify(context.Background(), r)
	if p != nil || c.User != "alice" || !c.ViaHeader || c.Key() != "user:alice" {
		t.Fatalf("trusted header: %+v %v", c, p)
	}
	r.RemoteAddr = "203.0.113.9:1"
	if _, p := e.Identify(context.Background(), r); p == nil || p.Status != 401 {
		t.Errorf("the header from an untrusted peer: %v, want 401", p)
	}
	r.Header.Del("X-User")
	if _, p := e.Identify(context.Background(), r); p == nil || p.Status != 401 {
		t.Errorf("no header, no auth path: %v, want 401", p)
	}
	// Single tenant: everyone is "", told apart by address.
	single := edge(t, Options{})
	c, p = single.Identify(context.Background(), r)
	if p != nil || c.User != "" || c.Key() != "addr:203.0.113.9" {
		t.Errorf("single tenant: %+v %v", c, p)
	}
}

// TestAsk: the auth call's answer names the user at a dotted path (array
// elements by index, numbers as written); an answer without it, or not
// JSON, is the API's problem (502), and credentials it refuses are 401.
func TestAsk(t *testing.T) {
	var answer string
	status := 200
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer ok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(answer))
	}))
	t.Cleanup(api.Close)
	base, _ := url.Parse(api.URL)
	up := upstream.New(upstream.Options{Base: base, Timeout: time.Second, Registerer: prometheus.NewRegistry(), Namespace: "t"})
	for _, tc := range []struct {
		name, field, answer, token, user string
		code                             problem.Code
	}{
		{"top-level string", "id", `{"id":"alice"}`, "ok", "alice", ""},
		{"number as written", "id", `{"id":12345678901234567890}`, "ok", "12345678901234567890", ""},
		{"inside an array", "items.0.id", `{"items":[{"id":"bob"}]}`, "ok", "bob", ""},
		{"an envelope", "data.id", `{"data":{"id":"carol"}}`, "ok", "carol", ""},
		{"field absent", "id", `{"user":"x"}`, "ok", "", problem.BadGateway},
		{"not a scalar", "id", `{"id":{"x":1}}`, "ok", "", problem.BadGateway},
		{"not JSON", "id", `<html>`, "ok", "", problem.BadGateway},
		{"refused credentials", "id", `{}`, "bad", "", problem.Unauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer = tc.answer
			e := edge(t, Options{AuthPath: "/me", AuthMethod: http.MethodGet, AuthUserField: tc.field, Base: base, Auth: up.Auth})
			user, v := e.Ask(context.Background(), http.Header{"Authorization": {"Bearer " + tc.token}}, "")
			code := problem.Code("")
			if v.Problem != nil {
				code = v.Problem.Code
			}
			if user != tc.user || code != tc.code {
				t.Errorf("Ask = %q, %q; want %q, %q", user, code, tc.user, tc.code)
			}
		})
	}
}
