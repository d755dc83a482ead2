package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func newUpstream(t *testing.T, h http.Handler, bs BreakerSettings) (*Upstream, *prometheus.Registry, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	base, _ := url.Parse(srv.URL)
	reg := prometheus.NewRegistry()
	return New(Options{Base: base, Timeout: 200 * time.Millisecond, Breaker: bs, Registerer: reg, Namespace: "ns"}), reg, srv
}

func get(t *testing.T, c *Client, u string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Do(req)
}

// failed returns the error of a call expected to fail, closing the body of
// an answer that came anyway.
func failed(resp *http.Response, err error) error {
	if resp != nil {
		_ = resp.Body.Close()
	}
	return err
}

// TestEachClientCountsAsItsKind: the kind comes from the client a call is
// made with; nothing the caller forgets can make a mutation count as
// pass-through.
func TestEachClientCountsAsItsKind(t *testing.T) {
	up, reg, srv := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}), BreakerSettings{})
	for _, c := range []*Client{up.Mutation, up.View, up.View, up.Auth} {
		resp, err := get(t, c, srv.URL+"/x")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/y", nil)
	resp, err := up.Passthrough.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	for k, want := range map[kind]int{kindMutation: 1, kindView: 2, kindAuth: 1, kindPassthrough: 1} {
		n, err := testutil.GatherAndCount(reg, "ns_upstream_request_duration_seconds")
		if err != nil || n != 4 {
			t.Fatalf("series: %d, %v; want 4", n, err)
		}
		mfs, _ := reg.Gather()
		var got uint64
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if mf.GetName() == "ns_upstream_request_duration_seconds" && m.GetLabel()[0].GetValue() == "418" && m.GetLabel()[1].GetValue() == string(k) {
					got = m.GetHistogram().GetSampleCount()
				}
			}
		}
		if got != uint64(want) {
			t.Errorf("kind %s: %d calls counted, want %d", k, got, want)
		}
	}
}

func TestDo(t *testing.T) {
	var mu sync.Mutex
	peers := map[string]bool{} // client addresses that asked for /long
	up, _, srv := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		case "/redirect":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/long":
			mu.Lock()
			peers[r.RemoteAddr] = true
			mu.Unlock()
			_, _ = io.WriteString(w, strings.Repeat("x", 1000))
		}
	}), BreakerSettings{})

	t.Run("a timeout says how long it waited", func(t *testing.T) {
		err := failed(get(t, up.View, srv.URL+"/slow"))
		var ce *CallError
		if !errors.As(err, &ce) || !ce.Timeout || err.Error() != "upstream did not answer within 200ms" {
			t.Fatalf("err = %v, want a timeout CallError", err)
		}
	})
	t.Run("redirects are answers, not followed", func(t *testing.T) {
		resp, err := get(t, up.Mutation, srv.URL+"/redirect")
		if err != nil || resp.StatusCode != http.StatusFound {
			t.Fatalf("resp = %v, %v; want the 302 itself", resp, err)
		}
		_ = resp.Body.Close()
	})
	t.Run("only the upstream is called", func(t *testing.T) {
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			t.Error("another host was called")
		}))
		defer other.Close()
		if err := failed(get(t, up.View, other.URL+"/x")); err == nil || !strings.Contains(err.Error(), "not the upstream") {
			t.Fatalf("err = %v, want a refusal", err)
		}
	})
	t.Run("a closed body leaves the connection reusable", func(t *testing.T) {
		for range 3 {
			resp, err := get(t, up.View, srv.URL+"/long")
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close() // unread: Close drains it
		}
		mu.Lock()
		defer mu.Unlock()
		if n := len(peers); n > 1 {
			t.Errorf("%d connections for 3 sequential calls; unread bodies were not drained", n)
		}
	})
	t.Run("a cancelled caller is not a timeout", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/x", nil)
		err := failed(up.Auth.Do(req))
		var ce *CallError
		if !errors.As(err, &ce) || ce.Timeout || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want a cancelled CallError", err)
		}
	})
}

// TestBreaker: each kind of call has its own breaker. 5xx answers to
// mutation calls open the mutation breaker only: while it is open mutation
// calls fail with ErrCircuitOpen without reaching the upstream, and the
// other kinds still call it. A cancelled caller never counts.
func TestBreaker(t *testing.T) {
	var calls atomic.Int64
	up, reg, srv := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}), BreakerSettings{Failures: 2, OpenTimeout: time.Hour, HalfOpenRequests: 1})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 3 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/x", nil)
		if err := failed(up.Mutation.Do(req)); err == nil {
			t.Fatal("a cancelled call succeeded")
		}
	}
	if up.Mutation.Suspended() {
		t.Fatal("cancelled calls opened the breaker")
	}
	for range 2 {
		resp, err := get(t, up.Mutation, srv.URL+"/x")
		if err != nil || resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("5xx answer: %v, %v; want the answer itself", resp, err)
		}
		_ = resp.Body.Close()
	}
	if !up.Mutation.Suspended() || up.RetryAfter() != 3600 {
		t.Fatalf("Suspended = %v, RetryAfter = %d; want open for an hour", up.Mutation.Suspended(), up.RetryAfter())
	}
	before := calls.Load()
	if err := failed(get(t, up.Mutation, srv.URL+"/x")); !errors.Is(err, ErrCircuitOpen) {
		t.Errorf("mutation call with its breaker open: %v, want ErrCircuitOpen", err)
	}
	if n := calls.Load() - before; n != 0 {
		t.Errorf("%d calls reached the upstream through an open breaker", n)
	}
	for _, c := range []*Client{up.View, up.Auth} {
		if c.Suspended() {
			t.Errorf("the %s breaker opened on mutation failures", c.kind)
		}
		if resp, err := get(t, c, srv.URL+"/x"); err != nil {
			t.Errorf("%s call while only the mutation breaker is open: %v", c.kind, err)
		} else {
			_ = resp.Body.Close()
		}
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/y", nil)
	if resp, err := up.Passthrough.RoundTrip(req); err != nil {
		t.Errorf("pass-through while only the mutation breaker is open: %v", err)
	} else {
		_ = resp.Body.Close()
	}
	if n := calls.Load() - before; n != 3 {
		t.Errorf("%d calls of the other kinds reached the upstream, want 3", n)
	}
	want := map[string]float64{"mutation": 1, "view": 0, "auth": 0, "proxy": 0}
	for k, v := range want {
		if got := testutil.ToFloat64(up.View.metrics.breakerOpen.WithLabelValues(k)); got != v {
			t.Errorf("circuit_breaker_open{kind=%q} = %v, want %v", k, got, v)
		}
	}
	if n, _ := testutil.GatherAndCount(reg, "ns_circuit_breaker_open"); n != 4 {
		t.Errorf("ns_circuit_breaker_open series = %d, want one per kind", n)
	}
}
