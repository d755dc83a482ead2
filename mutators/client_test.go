package mutators

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

func newTestClient(t *testing.T, base string, timeout time.Duration) *Client {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	up := upstream.New(upstream.Options{Base: u, Timeout: timeout, Registerer: prometheus.NewRegistry(), Namespace: "test"})
	return NewClient(ClientOptions{Base: u, Upstream: up.Mutation, IdempotencyHeader: "Idempotency-Key"})
}

func TestClientSendsHeadersAndBody(t *testing.T) {
	type seen struct {
		method, uri, body string
		header            http.Header
	}
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.RequestURI, string(b), r.Header.Clone()}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	// A base URL with a path prefix: mutation paths go under it.
	c := newTestClient(t, srv.URL+"/v1/", time.Second)
	m := mustCompile(t, map[string]Spec{"create": {Method: "POST", Path: "/api/todos/{args.id}", Headers: map[string]string{"X-Static": "yes"}}})
	req, err := m.Render(Mutation{ClientID: "c1", ID: 3, Name: "create", Args: []byte(`{"id":"a b"}`)})
	if err != nil {
		t.Fatal(err)
	}
	res := c.Do(context.Background(), req, http.Header{"Authorization": {"Bearer alice"}, "X-Request-Id": {"req-1"}})
	if res.Outcome != Applied || res.Status != 201 {
		t.Fatalf("result = %+v, want applied 201", res)
	}
	s := <-got
	checks := map[string][2]string{
		"method":          {s.method, "POST"},
		"uri":             {s.uri, "/v1/api/todos/a%20b"},
		"body":            {s.body, `{"id":"a b"}`},
		"Authorization":   {s.header.Get("Authorization"), "Bearer alice"},
		"Idempotency-Key": {s.header.Get("Idempotency-Key"), "c1:3"},
		"X-Request-ID":    {s.header.Get("X-Request-ID"), "req-1"},
		"Content-Type":    {s.header.Get("Content-Type"), "application/json"},
		"X-Static":        {s.header.Get("X-Static"), "yes"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s = %q, want %q", name, c[0], c[1])
		}
	}
}

func TestClientOutcomes(t *testing.T) {
	var redirectTargetHit atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { redirectTargetHit.Store(true) }))
	defer target.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			// Reading the body lets the server notice the client leaving.
			_, _ = io.ReadAll(r.Body)
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		case "/redirect":
			http.Redirect(w, r, target.URL+"/x", http.StatusTemporaryRedirect)
		case "/big-error":
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = io.WriteString(w, strings.Repeat("é", 10_000))
		default:
			code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
			if err != nil {
				code = http.StatusTeapot
			}
			w.WriteHeader(code)
			_, _ = io.WriteString(w, `{"error":"nope"}`)
		}
	}))
	defer srv.Close()
	closedLn, _ := net.Listen("tcp", "127.0.0.1:0")
	closedURL := "http://" + closedLn.Addr().String()
	_ = closedLn.Close()

	tests := []struct {
		name      string
		base      string
		path      string
		want      Outcome
		errSubstr string
	}{
		{"2xx applied", srv.URL, "/status/204", Applied, ""},
		{"422 rejected with body kept", srv.URL, "/status/422", Rejected, ""},
		{"429 transient", srv.URL, "/status/429", Transient, ""},
		{"503 transient", srv.URL, "/status/503", Transient, ""},
		// The client must not re-send a mutation elsewhere.
		{"redirect not followed", srv.URL, "/redirect", Transient, ""},
		{"timeout is transient", srv.URL, "/slow", Transient, "did not answer within"},
		{"connection refused is transient", closedURL, "/x", Transient, "calling upstream"},
		{"oversize error body is truncated", srv.URL, "/big-error", Rejected, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, tc.base, 200*time.Millisecond)
			res := c.Do(context.Background(), &Request{Method: "POST", PathQuery: tc.path, Body: []byte("{}"), IdempotencyKey: "c:1"}, nil)
			if res.Outcome != tc.want {
				t.Fatalf("outcome = %v (%+v), want %v", res.Outcome, res, tc.want)
			}
			if tc.errSubstr != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tc.errSubstr)) {
				t.Errorf("err = %v, want it to mention %q", res.Err, tc.errSubstr)
			}
			if len(res.Body) > errorBodyKeep {
				t.Errorf("kept %d bytes of body, want at most %d", len(res.Body), errorBodyKeep)
			}
		})
	}
	if redirectTargetHit.Load() {
		t.Error("the redirect target was called")
	}

	t.Run("cancelled context is transient, not applied", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		res := newTestClient(t, srv.URL, time.Second).Do(ctx, &Request{Method: "POST", PathQuery: "/status/200", IdempotencyKey: "c:1"}, nil)
		if res.Outcome != Transient || !errors.Is(res.Err, context.Canceled) {
			t.Fatalf("result = %+v, want transient/canceled", res)
		}
	})
}
