package mutators

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// Outcome classifies what an upstream call did to a mutation.
type Outcome int

const (
	// Applied: the upstream accepted the mutation (2xx).
	Applied Outcome = iota + 1
	// Rejected: a business error. The upstream (or the mapping) refused the
	// mutation for good; retrying cannot help, so the mutation is consumed.
	Rejected
	// Transient: the mutation may or may not have been applied and must be
	// retried later with the same idempotency key.
	Transient
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Rejected:
		return "rejected"
	case Transient:
		return "transient"
	}
	return "unknown"
}

// Classify maps an upstream status code to an Outcome: 2xx applied; 4xx other
// than 408 (timeout), 425 (too early) and 429 (rate limited) rejected;
// anything else, including 3xx (redirects are never followed), transient.
func Classify(status int) Outcome {
	switch {
	case status >= 200 && status < 300:
		return Applied
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly, status == http.StatusTooManyRequests:
		return Transient
	case status >= 400 && status < 500:
		return Rejected
	default:
		return Transient
	}
}

// Result is the outcome of one upstream call.
type Result struct {
	Outcome Outcome
	Status  int    // the upstream's status; 0 when there was no HTTP answer
	Body    string // the start of a non-2xx answer, for the record and logs
	Err     error  // why, for Rejected without a status and for Transient
}

// Cause is a short human-readable reason for a non-applied result.
func (r Result) Cause() string {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case r.Status != 0:
		return fmt.Sprintf("upstream answered %d", r.Status)
	}
	return r.Outcome.String()
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// Base is the upstream's base URL; request paths are appended to it.
	Base *url.URL
	// HTTPClient sends the requests. Its redirect policy is replaced: a
	// mutation is never re-sent to another location.
	HTTPClient *http.Client
	// IdempotencyHeader names the header carrying Request.IdempotencyKey.
	IdempotencyHeader string
	// Timeout bounds each call, from dialing to the last byte read.
	Timeout time.Duration
}

// Client sends rendered mutations to the upstream. It is safe for concurrent
// use.
type Client struct {
	base       string
	host       string
	hc         *http.Client
	idemHeader string
	timeout    time.Duration
}

// Error bodies are read up to errorBodyRead bytes so the connection can be
// reused, and errorBodyKeep bytes of that are kept for the record.
const (
	errorBodyRead = 64 << 10
	errorBodyKeep = 512
)

// NewClient returns a Client for o.
func NewClient(o ClientOptions) *Client {
	hc := *o.HTTPClient
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{
		base:       strings.TrimSuffix(o.Base.String(), "/"),
		host:       o.Base.Host,
		hc:         &hc,
		idemHeader: o.IdempotencyHeader,
		timeout:    o.Timeout,
	}
}

// Do sends r with the forwarded headers fwd and requestID, and classifies the
// answer. It never returns Applied unless the upstream answered 2xx. The call
// is bounded by the client's timeout and by ctx.
//
// Do has effects outside any transaction: callers that retry it must reuse
// r.IdempotencyKey, which Do always sends.
func (c *Client) Do(ctx context.Context, r *Request, fwd http.Header, requestID string) Result {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, c.base+r.PathQuery, body)
	if err != nil || req.URL.Host != c.host {
		// Rendering escapes every value, so this means a broken mapping.
		return Result{Outcome: Rejected, Err: fmt.Errorf("building upstream request: invalid URL %q", r.PathQuery)}
	}
	for k, vs := range fwd {
		req.Header[k] = vs
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	if r.Body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(c.idemHeader, r.IdempotencyKey)
	if requestID != "" {
		req.Header.Set("X-Request-ID", requestID)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return Result{Outcome: Transient, Err: describeCallError(ctx, err, c.timeout)}
	}
	defer resp.Body.Close()
	res := Result{Outcome: Classify(resp.StatusCode), Status: resp.StatusCode}
	if res.Outcome == Applied {
		// Drain a little so the connection is reused; the answer is not needed.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, errorBodyRead))
		return res
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyRead))
	res.Body = shorten(b, errorBodyKeep)
	return res
}

func describeCallError(ctx context.Context, err error, timeout time.Duration) error {
	var netErr net.Error
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return fmt.Errorf("upstream did not answer within %s", timeout)
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("calling upstream: %w", context.Canceled)
	}
	return fmt.Errorf("calling upstream: %w", err)
}

// shorten returns at most n bytes of b as valid UTF-8 text.
func shorten(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
		for len(b) > 0 && !utf8.Valid(b) {
			b = b[:len(b)-1]
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
