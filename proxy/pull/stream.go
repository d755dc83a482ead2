package pull

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
)

// A reset answer goes out while its view is read. A reset does not depend
// on the group's record (it is "clear", then every entry), so each page's
// puts can be written as soon as the page is read, and the page's bytes
// let go: the answer's memory is then the pages in flight and the queue
// to the client, not the whole view. What stays is each entry's key and
// hash, for the record (diff mode) and the view's checks.
//
// Never a partial view: the cookie is the answer's last member, written
// only once the transaction that issued it has committed. A view that
// fails after the answer started (a later page, the budget, the
// database) breaks the answer off before its JSON completes: the
// connection is cut, so the client sees a failed pull (a truncated chunked
// body, and JSON that does not parse), keeps the view it had and pulls
// again; and nothing is committed (the transaction rolls back). A client
// can therefore never hold a cookie for a view it did not wholly receive.
//
// Only a pull whose answer is known to be a reset before anything is read
// streams (pullView.classifyEarly: no cookie, another group's or another
// database's, or reset mode), and only once its view has brought
// streamAfterBytes of values: a smaller view is answered whole after the
// commit, as before, and every failure of it keeps its own status. A
// streamed answer is one pull's: it starts only if no other pull has
// joined the fetch, and seals the flight (flight.SealAlone), since a rider
// would need the values again.
//
// The client's pace barely holds the group: the answer is queued to a
// writer goroutine, so the fetch, the diff and the commit go on while it
// is sent. While more than streamQueue waits to be written, the pull waits
// for its client to take some, but for streamPatience at most in all:
// a client that keeps up keeps the queue (the answer's memory) short, and
// a slow one holds the group's lock for that long at most; after that the
// queue grows. A page's bytes stay charged to the pull's budget lease
// until its puts are written (the queue takes the page's place in memory),
// so a streamed answer is charged no more than an answer written whole,
// and a reader too slow for the budget is pre-empted as any slow reader
// is.

// streamAfterBytes: a reset answer starts going out once its view has
// brought this many bytes of values (and no other pull has joined it).
const streamAfterBytes = 256 << 10

// streamChunk is the size of the pieces the answer is queued in; a page's
// puts go out at the end of the page once they fill streamFlush.
const (
	streamChunk = 64 << 10
	streamFlush = 4 << 10
)

// streamQueue and streamPatience: a pull waits for its client while more
// than streamQueue bytes of its answer wait to be written, for
// streamPatience at most in all.
const (
	streamQueue    = 2 * streamChunk
	streamPatience = time.Second
)

// pullStream is one pull's answer, perhaps written while its view is read.
// It is the fetch's page sink (clientview.PageSink): its calls come one at
// a time, from the fetch's goroutines, and pullBuild's between fetches.
type pullStream struct {
	w     http.ResponseWriter
	c     *engine.Exchange
	after int64      // streamAfterBytes, or a test's
	pool  *sync.Pool // of chunks (*[]byte)

	// Set by allow, when the pull's answer is a reset whatever is read.
	view  *pullView
	alone func() bool // seals the pull's flight if no one joined it

	// Before the answer starts: the pages given, values held.
	pending []streamPage
	held    int64
	fetchAt int // pending[fetchAt:] came with the fetch under way

	out  *answerWriter // nil until the answer starts
	cur  []byte        // the piece being filled
	puts int
}

type streamPage struct {
	source  string
	entries []clientview.Entry
}

// errBrokenOff: the answer was broken off (its client went away, or the
// answer was abandoned).
var errBrokenOff = errors.New("the pull's answer was broken off")

// allow lets the answer stream: its view's entries will make a reset.
func (st *pullStream) allow(view *pullView, alone func() bool) {
	st.view, st.alone = view, alone
}

// fetching marks the start of a fetch, for Again.
func (st *pullStream) fetching() { st.fetchAt = len(st.pending) }

// started reports whether the answer has started going out.
func (st *pullStream) started() bool { return st != nil && st.out != nil }

// Page is given each page of the view as it is read (clientview.PageSink),
// and the entries a pull adds after the fetch (source ""): it queues their
// puts once the answer has started, and starts it once enough came.
func (st *pullStream) Page(source string, es []clientview.Entry) (release bool, err error) {
	var n int64
	for _, e := range es {
		n += int64(len(e.Value))
	}
	if st.out == nil {
		if st.view == nil {
			return false, nil // not to be streamed
		}
		st.pending = append(st.pending, streamPage{source, es})
		if st.held += n; st.held < st.after || !st.start() {
			return false, nil
		}
		es = nil // among the pages held, written below
	} else if err := st.err(); err != nil {
		return false, err // the client is gone: no point reading on
	}
	if source != "" {
		// The page's bytes are given back to the budget as its puts are
		// written (the fetch charged them; what a pull adds after it was
		// not charged).
		st.out.owe(n)
	}
	for _, p := range st.pending {
		for _, e := range p.entries {
			if err := st.put(e); err != nil {
				return false, err
			}
		}
	}
	st.pending, st.held = nil, 0
	for _, e := range es {
		if err := st.put(e); err != nil {
			return false, err
		}
	}
	if len(st.cur) >= streamFlush {
		if err := st.flush(); err != nil { // as the page is decided
			return false, err
		}
	}
	return true, st.err()
}

// Again is told that a source is read again (clientview.PageSink): once
// the answer has started, its client holds what the first read gave;
// before, those pages are forgotten, as the fetch forgets them.
func (st *pullStream) Again(source string) (sent bool) {
	if st.out != nil {
		return true
	}
	kept := st.pending[:st.fetchAt]
	for _, p := range st.pending[st.fetchAt:] {
		if p.source != source {
			kept = append(kept, p)
		}
	}
	st.pending = kept
	return false
}

// start starts the answer, if no other pull has joined this one: the
// headers and the head of the JSON.
func (st *pullStream) start() bool {
	if !st.alone() {
		st.view, st.pending = nil, nil // answered whole, with the riders'
		return false
	}
	w := st.w
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	st.out = &answerWriter{w: w, mem: st.c.Mem, pool: st.pool, wake: make(chan struct{}, 1), done: make(chan struct{}),
		drained: make(chan struct{}, 1), patience: streamPatience}
	go st.out.run()
	st.cur = st.chunk()
	st.cur = append(st.cur, `{"lastMutationIDChanges":`...)
	st.cur = appendLastMutationIDs(st.cur, st.view.lmids)
	st.cur = append(st.cur, `,"patch":[{"op":"clear"}`...)
	return true
}

// put queues one entry's put.
func (st *pullStream) put(e clientview.Entry) error {
	if len(st.cur) > 0 && len(st.cur)+len(e.Key)+len(e.Value) > streamChunk {
		if err := st.flush(); err != nil {
			return err
		}
	}
	st.cur = appendPut(append(st.cur, ','), e.Key, e.Value)
	st.puts++
	return nil
}

// flush queues the piece being filled.
func (st *pullStream) flush() error {
	piece := st.cur
	st.cur = st.chunk()
	return st.out.send(piece)
}

func (st *pullStream) chunk() []byte {
	if p, ok := st.pool.Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return make([]byte, 0, streamChunk)
}

// err is the answer's writer's error, once the client is gone.
func (st *pullStream) err() error {
	if st == nil || st.out == nil {
		return nil
	}
	return st.out.failure()
}

// finish ends the answer with ans's cookie (the commit is done) and waits
// until it is written. A slow reader may be pre-empted, as in writePull.
func (st *pullStream) finish(ans pullAnswer) (written int64, err error) {
	st.cur = appendCookie(append(st.cur, `],"cookie":`...), ans)
	st.cur = append(st.cur, '}')
	if err := st.flush(); err != nil {
		st.abort()
		return st.out.written, err
	}
	rc := http.NewResponseController(st.w)
	done := st.c.Mem.Interruptible(func() { _ = rc.SetWriteDeadline(time.Unix(1, 0)) })
	st.out.close()
	done()
	return st.out.written, st.out.failure()
}

// abort breaks the answer off: what is queued is dropped, and the
// connection is cut before the JSON completes (a write deadline in the
// past: the chunked body's end, written when the handler returns, never
// goes out either).
func (st *pullStream) abort() {
	st.out.fail(errBrokenOff)
	if err := http.NewResponseController(st.w).SetWriteDeadline(time.Unix(1, 0)); err != nil {
		st.c.Log.Warn("cannot cut the connection of a pull answer broken off", "error", err)
	}
	st.out.close()
}

// answerWriter writes the pieces of an answer to its client, in order, on
// its own goroutine (run), so that the client's pace holds no one else.
type answerWriter struct {
	w    http.ResponseWriter
	mem  *budget.Lease
	pool *sync.Pool

	// patience is how long the producer may still wait for the queue to
	// drain (the producer's alone).
	patience time.Duration
	drained  chan struct{} // a piece was written

	mu      sync.Mutex
	queue   [][]byte
	queued  int64 // bytes of the pieces queued
	owed    int64 // bytes of the lease to give back as the queue is written
	closed  bool
	err     error
	written int64 // read after done
	wake    chan struct{}
	done    chan struct{}
}

// owe notes that n bytes of the lease are held by the queue now (a page
// whose puts are queued), to give back as the queue is written.
func (a *answerWriter) owe(n int64) {
	a.mu.Lock()
	a.owed += n
	a.mu.Unlock()
}

// send queues piece.
func (a *answerWriter) send(piece []byte) error {
	a.mu.Lock()
	if err := a.err; err != nil {
		a.mu.Unlock()
		a.pool.Put(&piece)
		return err
	}
	a.queue = append(a.queue, piece)
	a.queued += int64(cap(piece))
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	for a.patience > 0 && a.backlog() > streamQueue {
		t0 := time.Now()
		timer := time.NewTimer(a.patience)
		select {
		case <-a.drained:
		case <-timer.C:
		}
		timer.Stop()
		a.patience -= time.Since(t0)
	}
	return nil
}

// backlog is the bytes queued, 0 once writing failed.
func (a *answerWriter) backlog() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return 0
	}
	return a.queued
}

func (a *answerWriter) failure() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// fail drops what is queued and writes nothing more.
func (a *answerWriter) fail(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
}

// close lets the writer end once the queue is written, and waits for it.
func (a *answerWriter) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	<-a.done
}

func (a *answerWriter) run() {
	defer close(a.done)
	for {
		a.mu.Lock()
		for len(a.queue) == 0 && !a.closed {
			a.mu.Unlock()
			<-a.wake
			a.mu.Lock()
		}
		if len(a.queue) == 0 {
			a.mu.Unlock()
			return
		}
		piece := a.queue[0]
		a.queue[0] = nil
		a.queue = a.queue[1:]
		failed := a.err != nil
		a.mu.Unlock()
		if !failed {
			n, err := a.w.Write(piece)
			a.written += int64(n)
			if err == nil {
				err = http.NewResponseController(a.w).Flush() // the piece goes out now, not with the next
			}
			if err != nil {
				a.fail(err) // the producer stops at its next page
			}
		}
		a.mu.Lock()
		back := min(a.owed, int64(len(piece)))
		a.owed -= back
		a.queued -= int64(cap(piece))
		a.mu.Unlock()
		a.mem.Shrink(back)
		select {
		case a.drained <- struct{}{}:
		default:
		}
		if cap(piece) <= 2*streamChunk {
			piece = piece[:0]
			a.pool.Put(&piece)
		}
	}
}
