package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// breaker is the circuit breaker of one kind of upstream call: gobreaker's
// state machine, with an open period that starts short and doubles while
// trial calls fail (up to the configured longest), so a recovered upstream
// is used again within a short open period while a long outage sees only a
// few trial calls a second. It is safe for concurrent use; a nil *breaker
// is a disabled one.
type breaker struct {
	cb               *gobreaker.TwoStepCircuitBreaker[struct{}]
	minOpen, maxOpen time.Duration

	mu         sync.Mutex
	period     time.Duration // the current open period
	until      time.Time     // no call before this while open
	lastSource string        // the source of the last failing answer counted
}

// firstOpenPeriod is how long a breaker first stays open: short, so one
// burst of failures costs little once the upstream is back.
const firstOpenPeriod = 250 * time.Millisecond

// newBreaker returns the circuit breaker of one kind of call, or nil when
// disabled.
func newBreaker(k kind, bs BreakerSettings, m *metrics) *breaker {
	open := m.breakerOpen.WithLabelValues(string(k))
	open.Set(0)
	if bs.Failures == 0 {
		return nil
	}
	b := &breaker{minOpen: min(firstOpenPeriod, bs.OpenTimeout), maxOpen: bs.OpenTimeout}
	b.period = b.minOpen
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        string(k),
		MaxRequests: max(bs.HalfOpenRequests, 1),
		// gobreaker lets a trial call through after the shortest period;
		// until holds calls back for the rest of the current one.
		Timeout:     b.minOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= bs.Failures },
		// A caller that gave up (client gone, or a sibling view source
		// failed), and anything else that says nothing about the
		// upstream's health, counts for neither side.
		IsExcluded: func(err error) bool {
			var ne *notEvidence
			return errors.Is(err, context.Canceled) || errors.As(err, &ne)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			b.mu.Lock()
			defer b.mu.Unlock()
			switch to {
			case gobreaker.StateOpen:
				if from == gobreaker.StateHalfOpen {
					b.period = min(2*b.period, b.maxOpen) // the trial failed
				} else {
					b.period = b.minOpen
				}
				b.until = time.Now().Add(b.period)
				open.Set(1)
			case gobreaker.StateClosed:
				b.period, b.until = b.minOpen, time.Time{}
				open.Set(0)
			}
		},
	})
	return b
}

func (b *breaker) holding() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Now().Before(b.until)
}

// allow admits one unit of work unless the breaker is open (or, half-open,
// has as many trials running as it allows), and returns the function that
// reports its outcome: nil (healthy), an error IsExcluded holds (no
// evidence), or any other error (sick).
func (b *breaker) allow() (func(error), error) {
	if b.holding() {
		return nil, gobreaker.ErrOpenState
	}
	return b.cb.Allow()
}

// suspended reports whether calls fail at once: the open period, which
// every opening sets, is not over (after it the next call is a trial).
func (b *breaker) suspended() bool {
	return b != nil && b.holding()
}

// admits says whether sick evidence from source counts against the
// upstream. Strong evidence (no answer, a timeout, 502, 503, 504: the
// service itself is unavailable) always counts. Weak evidence (a 500: this
// request broke) counts unless the previous one counted came from the same
// source: one caller re-pushing a mutation that fails every time (a poison
// mutation, which the give-up valve ends) weighs as one failure, while an
// outage, which fails every caller's calls, opens the breaker as fast as
// failures arrive. Evidence that names no source always counts.
func (b *breaker) admits(source string, strong bool) bool {
	switch {
	case b == nil || source == "" || strong:
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if source == b.lastSource {
		return false
	}
	b.lastSource = source
	return true
}

// notEvidence is an outcome that says nothing about the upstream's health:
// an answer the breaker must not count (status set), or an error of the
// client's own side (err set).
type notEvidence struct {
	status int
	err    error
}

func (e *notEvidence) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return "upstream answered " + strconv.Itoa(e.status)
}

func (e *notEvidence) Unwrap() error { return e.err }

// watchedBody remembers whether reading the client's request body failed.
type watchedBody struct {
	io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
	}
	return n, err
}

func (b *watchedBody) failed() bool {
	if b == nil || b.ReadCloser == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err != nil
}

// sendable refuses a request net/http would refuse to send: a header value
// with a control character (an id that slipped through, say).
func sendable(req *http.Request) error {
	for name, vs := range req.Header {
		for _, v := range vs {
			if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
				return &notEvidence{err: errors.New("header " + name + ": invalid value: the request was not sent")}
			}
		}
	}
	return nil
}
