package mutators

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
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
	// Unauthorized: the upstream did not accept the caller's credentials
	// (401). The mutation was not applied and must not be consumed: the
	// client gets a fresh token and pushes it again.
	Unauthorized
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Rejected:
		return "rejected"
	case Transient:
		return "transient"
	case Unauthorized:
		return "unauthorized"
	}
	return "unknown"
}

// Result is the outcome of one upstream call.
type Result struct {
	Outcome Outcome
	Status  int    // the upstream's status; 0 when there was no HTTP answer
	Body    string // the start of a non-2xx answer, for the record and logs
	Err     error  // why, for Rejected without a status and for Transient
	// Method and Path are the call as sent (Path relative to the base, with
	// its query); Location is a redirect's target. For reports of mapping
	// errors.
	Method, Path, Location string
	// ServerID is, for an applied call of a mutator that declares
	// serverID, the id the API chose, read from its answer at
	// serverID.field; NoServerID says why there is none (the answer lacks
	// the field, the mutation has no temporary id, …). Both are empty for
	// any other call.
	ServerID   ServerID
	NoServerID string
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

// Doer sends one HTTP request to the upstream and returns its answer. In
// the sidecar it is proxy/upstream's mutation client, which bounds the call
// by its timeout, never follows redirects and describes a failure to get an
// answer in its error. (What an answer says of the upstream's health is
// the caller's verdict, not the Client's.) The caller closes the body.
type Doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// Base is the upstream's base URL; request paths are appended to it.
	Base *url.URL
	// Upstream sends the requests.
	Upstream Doer
	// IdempotencyHeader names the header carrying Request.IdempotencyKey.
	IdempotencyHeader string
}

// Client sends rendered mutations to the upstream. It is safe for concurrent
// use.
type Client struct {
	base       string
	host       string
	upstream   Doer
	idemHeader string
}

// Error bodies are read up to errorBodyRead bytes so the connection can be
// reused, and errorBodyKeep bytes of that are kept for the record.
const (
	errorBodyRead = 64 << 10
	errorBodyKeep = 512
)

// NewClient returns a Client for o.
func NewClient(o ClientOptions) *Client {
	return &Client{
		base:       strings.TrimSuffix(o.Base.String(), "/"),
		host:       o.Base.Host,
		upstream:   o.Upstream,
		idemHeader: o.IdempotencyHeader,
	}
}

// Do sends r with the headers fwd (those forwarded from the client's
// request, and its request id), and classifies the answer. It never returns
// Applied unless the upstream answered 2xx. The call is bounded by ctx and
// by the upstream's timeout.
//
// Do has effects outside any transaction: callers that retry it must reuse
// r.IdempotencyKey, which Do always sends.
func (c *Client) Do(ctx context.Context, r *Request, fwd http.Header) Result {
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
	for k, vs := range r.Header { // Content-Type among them, when there is a body
		req.Header[k] = vs
	}
	req.Header.Set(c.idemHeader, r.IdempotencyKey)
	resp, err := c.upstream.Do(req)
	if err != nil {
		return Result{Outcome: Transient, Err: err}
	}
	defer func() { _ = resp.Body.Close() }()
	res := Result{Outcome: r.outcomes.classify(resp.StatusCode), Status: resp.StatusCode,
		Method: r.Method, Path: r.PathQuery, Location: resp.Header.Get("Location")}
	switch {
	case res.Outcome != Applied:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyRead))
		res.Body = shorten(b, errorBodyKeep)
	case r.serverID != nil && r.TempID == "":
		res.NoServerID = r.noTempID
	case r.serverID != nil:
		res.ServerID, res.NoServerID = r.serverID.read(resp.Body)
	}
	return res
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
