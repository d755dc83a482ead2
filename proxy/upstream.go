package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sony/gobreaker/v2"
)

// errCircuitOpen is returned (wrapped) by every upstream call made while the
// circuit breaker is open: the call was not attempted.
var errCircuitOpen = errors.New("circuit breaker open: the upstream is failing, calls are suspended")

// Upstream call kinds, the values of the metrics' kind label.
const (
	kindMutation = "mutation"
	kindView     = "view"
	kindAuth     = "auth"
	kindProxy    = "proxy"
)

type kindKey struct{}

// withKind marks ctx's upstream calls as kind, for metrics.
func withKind(ctx context.Context, kind string) context.Context {
	return context.WithValue(ctx, kindKey{}, kind)
}

func kindOf(ctx context.Context) string {
	if k, ok := ctx.Value(kindKey{}).(string); ok {
		return k
	}
	return kindProxy
}

// BreakerSettings configure the circuit breaker around upstream calls.
type BreakerSettings struct {
	// Failures is how many consecutive failures (connection errors,
	// timeouts, 5xx answers) open the breaker; 0 disables it.
	Failures uint32
	// OpenTimeout is how long the breaker stays open before letting a
	// probe through (half-open).
	OpenTimeout time.Duration
	// HalfOpenRequests is how many probes may run at once when half-open;
	// that many successes in a row close the breaker.
	HalfOpenRequests uint32
}

// upstreamTransport is the transport of every call to the upstream
// (mutations, views, auth, pass-through): one circuit breaker for the one
// upstream, and the upstream metrics. It is safe for concurrent use.
type upstreamTransport struct {
	next    http.RoundTripper
	cb      *gobreaker.CircuitBreaker[*http.Response] // nil: no breaker
	metrics *metrics
}

// serverFailure marks a 5xx answer as a failure for the breaker while the
// answer itself still goes to the caller.
type serverFailure struct{ status int }

func (e *serverFailure) Error() string { return "upstream answered " + strconv.Itoa(e.status) }

// newBreaker returns the upstream's circuit breaker, or nil when disabled.
func newBreaker(bs BreakerSettings, m *metrics) *gobreaker.CircuitBreaker[*http.Response] {
	m.breakerOpen.Set(0)
	if bs.Failures == 0 {
		return nil
	}
	return gobreaker.NewCircuitBreaker[*http.Response](gobreaker.Settings{
		Name:        "upstream",
		MaxRequests: max(bs.HalfOpenRequests, 1),
		Timeout:     bs.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= bs.Failures },
		// A caller that gave up (client gone, or a sibling view source
		// failed) says nothing about the upstream's health.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(_ string, _, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				m.breakerOpen.Set(1)
			} else {
				m.breakerOpen.Set(0)
			}
		},
	})
}

func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	kind := kindOf(req.Context())
	start := time.Now()
	call := func() (*http.Response, error) {
		resp, err := t.next.RoundTrip(req)
		if err == nil && resp.StatusCode >= 500 {
			return resp, &serverFailure{resp.StatusCode}
		}
		return resp, err
	}
	var resp *http.Response
	var err error
	if t.cb != nil {
		resp, err = t.cb.Execute(call)
	} else {
		resp, err = call()
	}
	var sf *serverFailure
	if errors.As(err, &sf) {
		err = nil // the caller gets the 5xx answer itself
		t.metrics.upstreamErrors.WithLabelValues(kind, "server_error").Inc()
	}
	if err != nil {
		reason := errorReason(req.Context(), err)
		if reason != "canceled" {
			t.metrics.upstreamErrors.WithLabelValues(kind, reason).Inc()
		}
		if reason == "circuit_open" {
			return nil, errCircuitOpen
		}
		t.metrics.upstreamDuration.WithLabelValues(kind, "error").Observe(time.Since(start).Seconds())
		return nil, err
	}
	t.metrics.upstreamDuration.WithLabelValues(kind, strconv.Itoa(resp.StatusCode)).Observe(time.Since(start).Seconds())
	return resp, nil
}

// errorReason names why a call failed, from a small fixed set.
func errorReason(ctx context.Context, err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		return "circuit_open"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return "canceled"
	default:
		return "connection"
	}
}

// retryAfterSeconds is what a 503 caused by the open breaker tells the
// client: when the next probe may go through.
func (s *Sidecar) retryAfterSeconds() int {
	return max(1, int((s.cfg.BreakerOpenTimeout+time.Second-1)/time.Second))
}
