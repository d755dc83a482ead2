package upstream

import (
	"context"
	"errors"
	"sync"
)

// Health is what an answer says of the upstream.
type Health uint8

const (
	// Unknown: nothing was learnt (the caller left, nothing was sent):
	// counts for neither side.
	Unknown Health = iota
	// Healthy: the upstream answered as a working service does (whatever
	// the answer meant for the request).
	Healthy
	// Sick: the upstream did not answer, or answered that it is failing.
	Sick
)

// Evidence is what one unit of admitted work showed of the upstream's
// health. Package verdict decides it from the answer; the breaker only
// counts it.
type Evidence struct {
	Health Health
	// Strong: Sick because the service itself is unavailable (no answer, a
	// timeout, 502, 503, 504), not because one request broke (a 500).
	Strong bool
	// Source names who the work was for; one source's weak evidence in a
	// row counts once. "" always counts.
	Source string
	// Status is the answer's status (0: none), for the metrics.
	Status int
}

// Ticket is one unit of work admitted by a kind's circuit breaker: a
// mutation's call, an identity call, or every page of one pull's view (so
// that, half-open, the trial is the whole pull and a pull's sources never
// refuse each other). Calls made with a context carrying the ticket
// (WithTicket) skip the breaker; Done reports what they showed.
type Ticket struct {
	c    *Client
	done func(error)
	once sync.Once
}

// Admit asks the client's breaker for a unit of work. While the breaker is
// open (or half-open with its trials running) it returns a *CallError
// wrapping ErrCircuitOpen at once. A nil breaker admits everything.
func (c *Client) Admit() (*Ticket, error) {
	t := &Ticket{c: c}
	if c.cb == nil {
		return t, nil
	}
	done, err := c.cb.allow()
	if err != nil {
		c.metrics.errors.WithLabelValues(string(c.kind), "circuit_open").Inc()
		return nil, &CallError{Err: ErrCircuitOpen}
	}
	t.done = done
	return t, nil
}

// Done reports the work's evidence to the breaker, once (later calls do
// nothing). Every admitted ticket must be done, or a half-open breaker
// keeps waiting for its trial.
func (t *Ticket) Done(e Evidence) {
	if t == nil {
		return
	}
	t.once.Do(func() {
		t.c.witness.saw(t.c.kind, e)
		if e.Health == Sick && e.Status >= 500 {
			t.c.metrics.errors.WithLabelValues(string(t.c.kind), "server_error").Inc()
		}
		if t.done == nil {
			return
		}
		switch {
		case e.Health == Healthy:
			t.done(nil)
		case e.Health == Sick && t.c.cb.admits(e.Source, e.Strong):
			t.done(errSick)
		default:
			t.done(&notEvidence{err: errNoEvidence})
		}
	})
}

var (
	errSick       = errors.New("the upstream looks sick")
	errNoEvidence = errors.New("no evidence")
)

type ticketKey struct{}

// WithTicket returns ctx carrying t: calls of t's kind made with it skip
// the breaker (t admitted them).
func WithTicket(ctx context.Context, t *Ticket) context.Context {
	return context.WithValue(ctx, ticketKey{}, t)
}

func ticketOf(ctx context.Context, k kind) *Ticket {
	t, _ := ctx.Value(ticketKey{}).(*Ticket)
	if t == nil || t.c.kind != k {
		return nil
	}
	return t
}
