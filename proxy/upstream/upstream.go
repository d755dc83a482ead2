// Package upstream is the sidecar's side of the legacy service: one HTTP
// client per kind of call (mutation, view, auth, pass-through), built once,
// each with its own circuit breaker, sharing one connection pool and one
// set of metrics. Callers build their
// requests; a Client bounds, sends and accounts for them.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// kind is a kind of upstream call; its value is the metrics' kind label.
type kind string

// The kinds of upstream call.
const (
	kindMutation    kind = "mutation"
	kindView        kind = "view"
	kindAuth        kind = "auth"
	kindPassthrough kind = "proxy" // the label predates the name
)

// errNotUpstream: a request for another scheme or host than the upstream's.
var errNotUpstream = errors.New("not the upstream")

// ErrQueued: a call waited for a slot under SIDECAR_UPSTREAM_MAX_INFLIGHT
// as long as a call may take, and was not sent.
var ErrQueued = errors.New("the sidecar is making as many upstream requests as it may (SIDECAR_UPSTREAM_MAX_INFLIGHT); not sent")

// ErrCircuitOpen is returned (wrapped) by every call made while the circuit
// breaker is open: the call was not attempted.
var ErrCircuitOpen = errors.New("circuit breaker open: the upstream is failing, calls are suspended")

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

// Options configure an Upstream.
type Options struct {
	// Base is the upstream's base URL. Clients call nothing else: a request
	// for another scheme or host is refused before it is sent.
	Base *url.URL
	// Timeout bounds each mutation, view and auth call, from dialing to the
	// last byte of the answer read. Pass-through calls have no timeout of
	// ours: the legacy service's own pages may be slow or streamed.
	Timeout time.Duration
	Breaker BreakerSettings
	// Registerer receives the upstream metrics, named <Namespace>_upstream_*
	// and <Namespace>_circuit_breaker_open{kind}.
	Registerer prometheus.Registerer
	Namespace  string
	// Tracer, when set, records a client span per call (its traceparent
	// replaces the one the request carries). Nil: no spans.
	Tracer trace.Tracer
	// MaxInflight bounds the view and auth calls in flight at once, served
	// in turn between callers (WithCaller); 0: no bound.
	MaxInflight int
}

// Upstream is the legacy service as the sidecar calls it. It is safe for
// concurrent use.
type Upstream struct {
	Mutation, View, Auth *Client
	// Witness remembers what the upstream answered whom lately (for the
	// give-up valve): every admitted unit of work's evidence.
	Witness *Witness
	// Passthrough carries every request that is not a push or pull.
	Passthrough http.RoundTripper

	openTimeout time.Duration
}

// New builds the clients of o.Base and registers their metrics.
func New(o Options) *Upstream {
	m := newMetrics(o.Registerer, o.Namespace)
	calls := newCallTransport(o.Timeout)
	witness := newWitness()
	// One bound for the calls pulls and identification make: what a poke
	// wave asks of the API. Mutations are bounded by the groups' turns.
	limit := newLimiter(o.MaxInflight)
	m.limited(limit)
	// One breaker per kind: the write path failing must not stop pulls and
	// pages whose own calls succeed, and a healthy auth endpoint must not
	// keep resetting the count of failing mutation calls.
	client := func(k kind) *Client {
		cb := newBreaker(k, o.Breaker, m) //nolint:bodyclose // it passes answers through to callers, who close them
		var l *limiter
		if k == kindView || k == kindAuth {
			l = limit
		}
		return &Client{
			kind: k, base: o.Base, timeout: o.Timeout, metrics: m, cb: cb, witness: witness, limit: l,
			hc: &http.Client{
				Transport: &transport{kind: k, next: calls, cb: cb, metrics: m, tracer: o.Tracer},
				// A mutation is never re-sent elsewhere, a view and an
				// identity come from the upstream itself: the caller sees
				// a redirect as the answer it is.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
		}
	}
	return &Upstream{
		Witness:  witness,
		Mutation: client(kindMutation),
		View:     client(kindView),
		Auth:     client(kindAuth),
		Passthrough: &transport{kind: kindPassthrough, next: newPassthroughTransport(),
			cb: newBreaker(kindPassthrough, o.Breaker, m), metrics: m, tracer: o.Tracer}, //nolint:bodyclose // as above
		openTimeout: o.Breaker.OpenTimeout,
	}
}

// Suspended reports whether this kind's breaker is open: its calls fail at
// once with ErrCircuitOpen.
func (c *Client) Suspended() bool { return c.cb.suspended() }

// RetryAfter is what a client refused because of an open breaker is told
// to wait, in whole seconds: at most the longest open period, after which
// a trial call goes through.
func (u *Upstream) RetryAfter() int {
	return max(1, int((u.openTimeout+time.Second-1)/time.Second))
}

// Client makes one kind of upstream call. It is safe for concurrent use.
type Client struct {
	kind    kind
	base    *url.URL
	hc      *http.Client
	timeout time.Duration
	metrics *metrics
	cb      *breaker // nil: disabled
	witness *Witness
	limit   *limiter // nil: no bound
}

// maxDrain is how much of an unread answer Close reads so the connection
// can be reused; a longer rest closes the connection instead.
const maxDrain = 64 << 10

// Do sends req, which must address the upstream (its base URL's scheme and
// host), bounded by the client's timeout and req's context, without
// following redirects. Headers are sent as the caller set them.
//
// A request whose context carries a Ticket of this kind (WithTicket) was
// admitted by the breaker already, and the ticket's Done reports what the
// answer showed. Without one the call is admitted alone and judged by the
// default rule: no answer or a 5xx is evidence against the upstream.
//
// The caller must close the answer's body. Closing it reads at most 64 KiB
// of what is left, so the connection is reused, and releases the timeout.
// A failure to get an answer is a *CallError.
func (c *Client) Do(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != c.base.Scheme || req.URL.Host != c.base.Host {
		return nil, &CallError{Err: fmt.Errorf("%w: refusing to call %s://%s", errNotUpstream, req.URL.Scheme, req.URL.Host)}
	}
	release, err := c.queue(req.Context())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(req.Context(), c.timeout)
	resp, err := c.hc.Do(req.WithContext(ctx))
	if err != nil {
		cancel()
		release()
		var netErr net.Error
		timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout())
		if errors.Is(err, context.Canceled) {
			err = context.Canceled // the caller left: the URL adds nothing
		}
		return nil, &CallError{Timeout: timedOut, After: c.timeout, Err: err}
	}
	resp.Body = &drainingBody{ReadCloser: resp.Body, cancel: func() { cancel(); release() }}
	return resp, nil
}

// queue waits for the call's turn under SIDECAR_UPSTREAM_MAX_INFLIGHT, at
// most as long as a call may take, and returns what gives the slot back.
func (c *Client) queue(ctx context.Context) (release func(), err error) {
	if c.limit == nil {
		return func() {}, nil
	}
	start := time.Now()
	wctx, cancel := waitBound(ctx, c.timeout)
	defer cancel()
	release, err = c.limit.acquire(wctx, callerOf(ctx))
	c.metrics.queueWait.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		return release, nil
	case ctx.Err() != nil:
		return nil, &CallError{Err: context.Canceled}
	}
	return nil, &CallError{Err: &notEvidence{err: ErrQueued}}
}

// BadResponse counts an answer the caller could not use (not JSON, not the
// expected shape) as an upstream error of this kind.
func (c *Client) BadResponse() {
	c.metrics.errors.WithLabelValues(string(c.kind), "bad_response").Inc()
}

// CallError is an upstream call that got no answer: it timed out, could not
// connect, was refused by the open breaker, or was cancelled by the caller.
type CallError struct {
	Timeout bool          // no answer within After
	After   time.Duration // the client's timeout
	Err     error
}

// Error is safe to show a client: it names what happened, never the
// upstream's address or Go's error text (Detail has those, for logs).
func (e *CallError) Error() string {
	switch {
	case e.Timeout:
		return fmt.Sprintf("upstream did not answer within %s", e.After)
	case errors.Is(e.Err, ErrCircuitOpen):
		return "calling upstream: " + ErrCircuitOpen.Error()
	case errors.Is(e.Err, context.Canceled):
		return "calling upstream: " + context.Canceled.Error()
	case errors.Is(e.Err, errNotUpstream):
		return "calling upstream: " + errNotUpstream.Error()
	}
	var ne *notEvidence
	if errors.As(e.Err, &ne) {
		return "calling upstream: the request could not be sent"
	}
	return "calling upstream: the connection failed"
}

// NotSent reports that nothing was asked of the upstream: the breaker
// refused the call, the request was not for the upstream, or it could not
// be sent (an invalid header value).
func (e *CallError) NotSent() bool {
	var ne *notEvidence
	return errors.Is(e.Err, ErrCircuitOpen) || errors.Is(e.Err, errNotUpstream) || errors.As(e.Err, &ne)
}

// Canceled reports that the caller went away before the answer.
func (e *CallError) Canceled() bool { return errors.Is(e.Err, context.Canceled) }

// Detail is the whole story, for logs only: it may name the upstream's
// address.
func (e *CallError) Detail() string { return e.Err.Error() }

func (e *CallError) Unwrap() error { return e.Err }

// drainingBody reads a bounded rest of the answer before closing it, and
// then releases the call's timeout.
type drainingBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *drainingBody) Close() error {
	_, _ = io.Copy(io.Discard, io.LimitReader(b.ReadCloser, maxDrain))
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// newCallTransport is the transport of the sidecar's own upstream calls
// (mutations, views, auth).
func newCallTransport(timeout time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil // the upstream is a neighbour; never route it through an HTTP proxy
	// Dialing a neighbour is fast; a slow dial means it is down.
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	// Every call is bounded by timeout in total; this also frees a
	// connection whose upstream never starts answering.
	t.ResponseHeaderTimeout = timeout
	// Pushes of many groups run at once; keep enough warm connections.
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	return t
}

// newPassthroughTransport serves pass-through traffic. It sets no response
// timeout: the legacy service's own pages may legitimately be slow or
// streamed, and the client's cancellation ends the call.
func newPassthroughTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.MaxIdleConnsPerHost = 256
	return t
}

// transport is the round tripper of one kind of call: the circuit breaker
// and the metrics around the shared connection pool.
type transport struct {
	kind    kind
	next    http.RoundTripper
	cb      *breaker // nil: no breaker
	metrics *metrics
	tracer  trace.Tracer // nil: no spans
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.tracer == nil {
		return t.roundTrip(req)
	}
	attrs := append([]attribute.KeyValue{attribute.String("http.request.method", req.Method), attribute.String("url.path", req.URL.Path)},
		spanAttributes(req.Context())...)
	ctx, span := t.tracer.Start(req.Context(), "upstream "+string(t.kind), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	defer span.End()
	r2 := req.WithContext(ctx)
	r2.Header = req.Header.Clone()
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(r2.Header))
	// tracestate goes on exactly as the request had it (Inject rewrites it
	// from its own parse).
	if ts, ok := req.Header["Tracestate"]; ok {
		r2.Header["Tracestate"] = ts
	} else {
		r2.Header.Del("Tracestate")
	}
	resp, err := t.roundTrip(r2)
	switch {
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	default:
		span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
		if resp.StatusCode >= 500 {
			span.SetStatus(codes.Error, http.StatusText(resp.StatusCode))
		}
	}
	return resp, err
}

type spanAttrsKey struct{}

// WithSpanAttributes returns ctx carrying attributes for the client spans
// of the calls made with it (e.g. the client group).
func WithSpanAttributes(ctx context.Context, kv ...attribute.KeyValue) context.Context {
	return context.WithValue(ctx, spanAttrsKey{}, append(spanAttributes(ctx), kv...))
}

func spanAttributes(ctx context.Context) []attribute.KeyValue {
	kv, _ := ctx.Value(spanAttrsKey{}).([]attribute.KeyValue)
	return kv[:len(kv):len(kv)]
}

func (t *transport) roundTrip(req *http.Request) (*http.Response, error) {
	k := string(t.kind)
	start := time.Now()
	if err := sendable(req); err != nil {
		// The sidecar could not even build this request: nothing was
		// asked of the upstream, so nothing is learnt about it.
		return nil, err
	}
	// An error reading the client's own body (a malformed chunked upload,
	// a client slower than the read timeout) is no evidence either.
	body := &watchedBody{ReadCloser: req.Body}
	if req.Body != nil && req.Body != http.NoBody {
		r2 := *req
		r2.Body = body
		req = &r2
	}
	var done func(error)
	if t.cb != nil && ticketOf(req.Context(), t.kind) == nil {
		// Admitted alone, judged by the default rule below.
		var err error
		if done, err = t.cb.allow(); err != nil {
			t.metrics.errors.WithLabelValues(k, "circuit_open").Inc()
			return nil, ErrCircuitOpen
		}
	}
	resp, err := t.next.RoundTrip(req)
	if done != nil {
		switch {
		case err != nil && (body.failed() || errors.Is(err, context.Canceled) || req.Context().Err() != nil):
			done(&notEvidence{err: err}) // the client's side failed, or it left
		case err != nil:
			done(err)
		case t.kind != kindPassthrough && resp.StatusCode >= 500:
			// The legacy API's own answers to pass-through requests go to
			// the client as they are; only failing to reach it counts.
			t.metrics.errors.WithLabelValues(k, "server_error").Inc()
			done(errSick)
		default:
			done(nil)
		}
	}
	if err != nil {
		reason := errorReason(req.Context(), err)
		if reason != "canceled" {
			t.metrics.errors.WithLabelValues(k, reason).Inc()
		}
		t.metrics.duration.WithLabelValues(k, "error").Observe(time.Since(start).Seconds())
		return nil, err
	}
	t.metrics.duration.WithLabelValues(k, strconv.Itoa(resp.StatusCode)).Observe(time.Since(start).Seconds())
	return resp, nil
}

// limited registers the gauge of view and auth calls in flight under l.
func (m *metrics) limited(l *limiter) {
	namespace := m.namespace
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "upstream_inflight_requests",
		Help: "View and auth calls in flight now (at most SIDECAR_UPSTREAM_MAX_INFLIGHT when it is set).",
	}, func() float64 { return float64(l.inFlightNow()) }))
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

// metrics are the upstream series. Label values come from small fixed sets.
type metrics struct {
	duration    *prometheus.HistogramVec
	errors      *prometheus.CounterVec
	breakerOpen *prometheus.GaugeVec
	queueWait   prometheus.Histogram
	reg         prometheus.Registerer
	namespace   string
}

func newMetrics(reg prometheus.Registerer, namespace string) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "upstream_request_duration_seconds",
			Help:    "Time until the upstream's answer headers, by kind (mutation, view, auth, proxy) and status code (\"error\" when there was no answer).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"kind", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "upstream_errors_total",
			Help: "Failed upstream calls by kind and reason (timeout, connection, circuit_open, server_error, bad_response).",
		}, []string{"kind", "reason"}),
		breakerOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "circuit_breaker_open",
			Help: "1 while the circuit breaker of a kind of upstream call (mutation, view, auth, proxy) is open (its calls fail fast), else 0.",
		}, []string{"kind"}),
	}
	m.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_queue_wait_seconds",
		Help:    "Time view and auth calls waited for a slot under SIDECAR_UPSTREAM_MAX_INFLIGHT.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	m.reg, m.namespace = reg, namespace
	reg.MustRegister(m.duration, m.errors, m.breakerOpen, m.queueWait)
	for _, k := range []kind{kindMutation, kindView, kindAuth, kindPassthrough} {
		for _, reason := range []string{"timeout", "connection", "circuit_open", "server_error"} {
			m.errors.WithLabelValues(string(k), reason)
		}
	}
	m.errors.WithLabelValues(string(kindView), "bad_response")
	return m
}
