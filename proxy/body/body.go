// Package body reads the JSON body of a push or a pull: bounded in size,
// charged to the caller's lease of the in-flight budget as its bytes
// arrive (interruptible: pre-empting the lease ends the read, 503), and
// paced: a body must keep arriving, or it is cut off with 408 and its
// bytes go back (see Decode and the pace below). Every failure is a
// problem.Error naming it.
package body

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Decode reads at most limit bytes of JSON into dst, charging mem for
// them (nil: not charged), at the pace pacedBody sets and by readBy at the
// latest (zero: no bound of its own). While it reads, mem is
// interruptible: pre-empting it ends the read, and the request answers 503.
// It refuses trailing data after the value, and names the problem in the
// returned error.
//
// The body is read into one buffer, sized by Content-Length when the client
// sent one, and decoded from there: about twice the body in memory at the
// peak (the buffer, and the args kept as raw bytes), where a streaming
// decoder's doubling buffer took four times.
func Decode(w http.ResponseWriter, r *http.Request, limit int64, mem *budget.Lease, readBy time.Time, dst any) *problem.Error {
	tooLarge := problem.Errorf(http.StatusRequestEntityTooLarge, problem.PayloadTooLarge, "request body is larger than %d bytes (SIDECAR_MAX_BODY_BYTES)", limit)
	if r.ContentLength > limit {
		return tooLarge
	}
	if mem != nil && r.ContentLength > mem.Limit() {
		return verdict.BudgetProblem(&budget.TooLargeError{Limit: mem.Limit()}, "request body")
	}
	paced := newPacedBody(w, http.MaxBytesReader(w, r.Body, limit), readBy)
	buf, p := readBody(r, paced, mem, tooLarge)
	if paced.end() {
		// Cut off (or pre-empted as its last byte came): nothing more is
		// read from this connection, and it closes after the answer.
		w.Header().Set("Connection", "close")
		if p == nil {
			p = readError(budget.ErrPreempted, tooLarge)
		}
	}
	if p != nil {
		return p
	}
	err := json.Unmarshal(buf, dst)
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	bad := func(format string, args ...any) *problem.Error {
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, format, args...)
	}
	switch {
	case err == nil:
		return nil
	case len(bytes.TrimSpace(buf)) == 0:
		return bad("empty request body")
	case errors.As(err, &syntax) && strings.Contains(syntax.Error(), "after top-level value"):
		return bad("unexpected data after the JSON value (byte %d)", syntax.Offset)
	case errors.As(err, &syntax) && syntax.Offset >= int64(len(buf)):
		return bad("truncated JSON body")
	case errors.As(err, &syntax):
		return bad("malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typeErr):
		return bad("field %q: JSON %s where %s was expected", typeErr.Field, typeErr.Value, typeErr.Type)
	default:
		return bad("decoding request body: %v", err)
	}
}

// readBody reads the body from paced, charging mem (nil: not charged),
// which is interruptible meanwhile: pre-empting it stops paced.
func readBody(r *http.Request, paced *pacedBody, mem *budget.Lease, tooLarge *problem.Error) ([]byte, *problem.Error) {
	var body io.Reader = paced
	if mem != nil {
		defer mem.Interruptible(paced.stop)()
		// Charged as the bytes arrive, not as declared: a slow client
		// holds no more of the budget than it has sent.
		body = mem.Reader(r.Context(), body)
	}
	if r.ContentLength > 0 {
		buf := make([]byte, r.ContentLength)
		if n, err := io.ReadFull(body, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return nil, problem.Errorf(http.StatusBadRequest, problem.BadRequest, "the body ended after %d of %d bytes (Content-Length)", n, r.ContentLength)
			}
			return nil, readError(err, tooLarge)
		}
		return buf, nil
	}
	buf, err := io.ReadAll(body)
	if err != nil {
		return nil, readError(err, tooLarge)
	}
	return buf, nil
}

// readError names why a request body could not be read.
func readError(err error, tooLarge *problem.Error) *problem.Error {
	var netErr net.Error
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return tooLarge
	case errors.Is(err, budget.ErrPreempted):
		return problem.Unavailable(problem.MemoryBudgetExhausted, 1,
			"this request was stopped to make room for other callers: yours hold more than a fair share of the sidecar's in-flight bytes (SIDECAR_MAX_INFLIGHT_VIEW_BYTES); retry in a moment")
	case errors.Is(err, budget.ErrBusy), errors.As(err, new(*budget.TooLargeError)):
		return verdict.BudgetProblem(err, "request body")
	case errors.Is(err, errBodyTooSlow):
		return problem.Errorf(http.StatusRequestTimeout, problem.RequestTimeout,
			"the request body arrived slower than %d KiB/s for more than %s, or not at all", MinRate>>10, Slack)
	case errors.As(err, &netErr) && netErr.Timeout():
		return problem.Errorf(http.StatusRequestTimeout, problem.RequestTimeout, "the request body did not arrive in time (SIDECAR_HTTP_READ_TIMEOUT)")
	default:
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "reading request body: %v", err)
	}
}

// A request body must keep arriving, or it is cut off with 408 and its
// bytes go back to the in-flight budget, whatever SIDECAR_HTTP_READ_TIMEOUT
// allows (that bounds the whole request; this, a body that stalls or
// drips). The body may fall behind MinRate by at most Slack: it
// has Slack of time in hand, spends it while a read waits, and earns
// one second for every MinRate bytes, never more than Slack in
// hand. So a body that sends nothing for Slack is cut off, and so is
// one that trickles below MinRate for long enough; a body of up to
// Slack × MinRate (40 KiB: most pushes and every pull) can take
// Slack whatever its pace. A stall or a drip is what holds memory
// without finishing: a caller's several requests can be pre-empted when
// others need the room, but its one request cannot (see package budget),
// and before this it held its bytes for the whole read timeout.
const (
	// MinRate: 8 KiB/s, about the upload of a 2G (EDGE) connection,
	// the slowest network a Replicache client syncs over in practice.
	MinRate = 8 << 10
	// Slack: 5 s, a few TCP retransmissions on a lossy mobile link.
	// A longer pause is rarer than the client's retry after a 408.
	Slack = 5 * time.Second
)

// errBodyTooSlow: the body fell behind its pace (pacedBody).
var errBodyTooSlow = errors.New("the request body arrived too slowly")

// aLongTimeAgo is a read deadline that has passed: it ends a blocked read
// at once.
var aLongTimeAgo = time.Unix(1, 0)

// pacedBody reads a request body with the connection's read deadline set
// before each read, from the time the body has in hand (see Slack),
// and never later than readBy. stop ends a read in progress (and every
// later one) with budget.ErrPreempted; end says what the connection's
// deadline is for the rest of the request. When the ResponseWriter cannot
// set deadlines (a test's recorder) it reads without them.
type pacedBody struct {
	r      io.Reader
	rc     *http.ResponseController
	readBy time.Time     // zero: no bound of its own
	ahead  time.Duration // time in hand: at most Slack

	mu      sync.Mutex // orders stop and end with setting deadlines
	stopped bool
	cut     bool // too slow: nothing more is read
	eof     bool // the whole body was read
	done    bool // ended: the deadline is no longer the body's
	noDL    bool // the ResponseWriter cannot set deadlines
}

func newPacedBody(w http.ResponseWriter, r io.Reader, readBy time.Time) *pacedBody {
	return &pacedBody{r: r, rc: http.NewResponseController(w), readBy: readBy, ahead: Slack}
}

func (p *pacedBody) Read(b []byte) (int, error) {
	start := time.Now()
	deadline, paced := start.Add(p.ahead), true
	if !p.readBy.IsZero() && !deadline.Before(p.readBy) {
		deadline, paced = p.readBy, false
	}
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return 0, budget.ErrPreempted
	}
	if !p.noDL {
		// Set under mu: a stop that comes after it overrides it, and one
		// that came before it was seen above.
		p.noDL = p.rc.SetReadDeadline(deadline) != nil
	}
	p.mu.Unlock()
	n, err := p.r.Read(b)
	p.ahead = min(Slack, p.ahead-time.Since(start)+time.Duration(n)*time.Second/MinRate)
	if err == nil {
		return n, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var netErr net.Error
	switch {
	case p.stopped:
		return n, budget.ErrPreempted
	case paced && errors.As(err, &netErr) && netErr.Timeout():
		p.cut = true
		return n, errBodyTooSlow
	case errors.Is(err, io.EOF):
		p.eof = true
	}
	return n, err
}

// stop ends the body's read in progress, and every later one, with
// budget.ErrPreempted. It is the lease's stop while the body is read.
func (p *pacedBody) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.stopped = true
	if !p.noDL {
		_ = p.rc.SetReadDeadline(aLongTimeAgo)
	}
}

// end ends the body's pace, once the lease's stop can no longer come, and
// reports whether the body was cut off: too slow, or stopped (even as its
// last byte came). Then the connection's read deadline is left in the
// past, and the caller closes the connection after its answer: the server
// must not wait for the rest of the body, and a read that the deadline
// ended has cancelled the connection's context, which the next request on
// it would inherit. A body read to its end leaves the connection without
// a deadline, as net/http leaves it while it reads ahead for the next
// request (a deadline then would cancel this request when it passed); any
// other body has readBy again, as the server set it for the whole request.
func (p *pacedBody) end() (cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	cut = p.cut || p.stopped
	switch {
	case p.noDL:
	case cut:
		_ = p.rc.SetReadDeadline(aLongTimeAgo)
	case p.eof:
		_ = p.rc.SetReadDeadline(time.Time{})
	default:
		_ = p.rc.SetReadDeadline(p.readBy)
	}
	return cut
}
