// Package sse writes a process's poke streams (Server-Sent Events) on
// connections taken over from the HTTP server, so that an idle stream
// costs little more than its socket: no goroutine, no buffer and no timer
// of its own.
//
//   - One goroutine (the Writer's) writes every stream's events: a poke
//     when the hub says one is due (the stream is its poke.Sink), a
//     heartbeat comment every Options.Heartbeat, and the last words when
//     the stream ends. Writes do not wait: a write the socket cannot take
//     at once goes on in a goroutine of its own, bounded by
//     Options.WriteTimeout, and the stream waits for it (a client that
//     stopped reading is ended when it passes, as before).
//   - Heartbeats come from one wheel: the streams are spread over slots,
//     and each tick writes one slot's.
//   - A close is noticed by a small read: on Linux one goroutine waits on
//     every stream's socket at once (epoll); elsewhere, and for a
//     connection that is not a plain socket (TLS), a goroutine per stream
//     reads a few bytes.
//
// The response is HTTP/1.1 with chunked transfer coding, as the server
// would have written it; a stream ends with the last chunk, and its
// connection is closed.
package sse

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
)

// End says why a stream ended.
type End int

const (
	// Disconnected: the client went away (its connection closed or
	// failed).
	Disconnected End = iota
	// WriteFailed: a write failed, or did not complete within
	// Options.WriteTimeout.
	WriteFailed
	// Shutdown: Options.Stop closed.
	Shutdown
	// ByHub: the hub ended it (poke.Subscriber.End says why).
	ByHub
)

// Options configure a Writer.
type Options struct {
	// Heartbeat: every stream gets a comment this often (give or take a
	// tick of the wheel, Heartbeat/256 or 10 ms), so that proxies keep it
	// open. It must be positive.
	Heartbeat time.Duration
	// WriteTimeout bounds every write: one still blocked this long ends
	// its stream (WriteFailed).
	WriteTimeout time.Duration
	// Stop, when closed, ends every stream (Shutdown) and those started
	// after.
	Stop <-chan struct{}
	// Ended is told once when a stream ended, and why, from the writer's
	// goroutine (or Start's caller); the stream's connection is closed, or
	// closes once its last words are written (within a second).
	Ended func(st *Stream, why End)
	// Poked is told each time a poke event was written.
	Poked func()
}

// Texts of the stream, each framed as one chunk.
var (
	pingChunk = chunk(nil, ": ping\n\n")
	pokeChunk = chunk(nil, "event: poke\nid: 1\ndata: {}\n\n")
)

const lastChunk = "0\r\n\r\n"

func chunk(dst []byte, text string) []byte {
	dst = fmt.Appendf(dst, "%x\r\n", len(text))
	dst = append(dst, text...)
	return append(dst, "\r\n"...)
}

// Writer writes every started stream. It is safe for concurrent use.
type Writer struct {
	o     Options
	tick  time.Duration
	slots int

	mu      sync.Mutex
	ready   []*Stream // streams with something to do, each once
	wake    chan struct{}
	wheel   [][]*Stream // by heartbeat slot
	cursor  int         // the slot the next tick writes
	count   int         // started streams not yet ended
	running bool        // the writer's goroutine runs
	stopped bool        // Stop was seen
	poller  *poller     // closes of sockets (nil: none yet, or none on this platform)
	nextID  uint64
}

// New returns a writer; it starts its goroutine with the first stream,
// and ends it when the last one ended.
func New(o Options) *Writer {
	slots := min(256, max(1, int(o.Heartbeat/(10*time.Millisecond))))
	return &Writer{o: o, slots: slots, tick: max(time.Millisecond, o.Heartbeat/time.Duration(slots)), wake: make(chan struct{}, 1),
		wheel: make([][]*Stream, slots)}
}

// Stream is one poke stream: its poke.Sink from NewStream on, then
// written by the writer once started.
type Stream struct {
	// Sub is its subscription, set by its creator before Start.
	Sub *poke.Subscriber
	// OnEnd, when set by its creator before Start, is for the creator's
	// own bookkeeping: the writer never calls it (the creator's end
	// callback may).
	OnEnd func()

	w    *Writer
	conn net.Conn
	raw  syscall.RawConn // for writes that do not wait and the poller; nil: conn only
	id   uint64          // the poller's name for it

	// w.mu:
	flags flag
	slot  int // in w.wheel
	pos   int // in w.wheel[slot]
}

type flag uint8

const (
	poked    flag = 1 << iota // a poke is due
	hubEnded                  // the hub ended it
	gone                      // the client went away
	failed                    // a write failed
	queued                    // in w.ready
	writing                   // a write that waits is under way: only it touches the connection
	started                   // Start handed it to the writer
	finished                  // ended; nothing more happens to it
)

// NewStream returns a stream to subscribe to the hub with (it is the
// subscription's Sink), then to Start.
func (w *Writer) NewStream() *Stream { return &Stream{w: w} }

// Poke is poke.Sink: a poke is due.
func (st *Stream) Poke() { st.w.mark(st, poked) }

// Ended is poke.Sink: the hub ended the stream.
func (st *Stream) Ended() { st.w.mark(st, hubEnded) }

// mark sets f on st and has the writer look at it once started.
func (w *Writer) mark(st *Stream, f flag) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st.flags |= f
	w.enqueue(st)
}

// enqueue queues st for the writer when it is started and has something
// to do; w.mu is held.
func (w *Writer) enqueue(st *Stream) {
	if st.flags&(started|queued|finished|writing) != started || st.flags&(poked|hubEnded|gone|failed) == 0 && !w.stopped {
		return
	}
	st.flags |= queued
	w.ready = append(w.ready, st)
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Start takes over conn, hijacked from the server for st's request, and
// writes the response: a 200 with header (and the transfer coding, Date
// and Connection: close), then opening as the first event. From then on
// the writer writes st, until it ends and Options.Ended is told; when the
// first write fails that is told at once (WriteFailed), before Start
// returns.
func (w *Writer) Start(st *Stream, conn net.Conn, header http.Header, opening string) {
	st.conn = conn
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	header.Set("Transfer-Encoding", "chunked")
	header.Set("Connection", "close")
	_ = header.Write(&head)
	head.WriteString("\r\n")
	head.Write(chunk(nil, opening))
	_ = conn.SetWriteDeadline(time.Now().Add(w.o.WriteTimeout))
	_, err := conn.Write(head.Bytes())
	_ = conn.SetWriteDeadline(time.Time{})
	if err != nil {
		_ = conn.Close()
		w.o.Ended(st, WriteFailed)
		return
	}
	st.raw = rawConn(conn)

	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextID++
	st.id = w.nextID
	st.flags |= started
	w.count++
	// Into the slot the last tick wrote: its first heartbeat is a whole
	// interval away.
	st.slot = (w.cursor + w.slots - 1) % w.slots
	st.pos = len(w.wheel[st.slot])
	w.wheel[st.slot] = append(w.wheel[st.slot], st)
	if st.raw == nil || !w.watch(st) {
		go w.readUntilClosed(st)
	}
	if !w.running {
		w.running = true
		go w.run()
	}
	w.enqueue(st)
}

// Wait waits until every stream has ended (after Stop: at shutdown), or
// ctx ends.
func (w *Writer) Wait(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		w.mu.Lock()
		n := w.count
		w.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d poke streams still ending: %w", n, ctx.Err())
		case <-t.C:
		}
	}
}

// readUntilClosed notices that st's client went away with a small read on
// its connection, where the poller cannot (bytes the client sends are
// dropped: it has nothing to say on a stream).
func (w *Writer) readUntilClosed(st *Stream) {
	var b [16]byte
	for {
		if _, err := st.conn.Read(b[:]); err != nil {
			w.mark(st, gone)
			return
		}
	}
}

// run is the writer's goroutine: ready streams, heartbeats, shutdown. It
// returns when no stream is left.
func (w *Writer) run() {
	tick := time.NewTimer(w.tick)
	defer tick.Stop()
	stop := w.o.Stop
	var batch []*Stream
	for {
		select {
		case <-stop:
			stop = nil
			w.mu.Lock()
			w.stopped = true
			for _, slot := range w.wheel {
				for _, st := range slot {
					w.enqueue(st)
				}
			}
			w.mu.Unlock()
		case <-w.wake:
		case <-tick.C:
			w.heartbeat()
			tick.Reset(w.tick)
		}
		w.mu.Lock()
		batch, w.ready = w.ready, batch[:0]
		w.mu.Unlock()
		for i, st := range batch {
			w.serve(st)
			batch[i] = nil
		}
		w.mu.Lock()
		if w.count == 0 && len(w.ready) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

// heartbeat writes a comment on the streams of the wheel's next slot.
func (w *Writer) heartbeat() {
	w.mu.Lock()
	slot := w.wheel[w.cursor]
	due := make([]*Stream, 0, len(slot))
	for _, st := range slot {
		if st.flags&(writing|queued) == 0 { // busy streams are written anyway
			due = append(due, st)
		}
	}
	w.cursor = (w.cursor + 1) % w.slots
	w.mu.Unlock()
	for _, st := range due {
		w.write(st, pingChunk, false)
	}
}

// serve does what st is due: its end, or a poke.
func (w *Writer) serve(st *Stream) {
	w.mu.Lock()
	st.flags &^= queued
	f := st.flags
	if f&(finished|writing) != 0 {
		w.mu.Unlock()
		return
	}
	switch {
	case f&gone != 0:
		w.mu.Unlock()
		w.finish(st, Disconnected)
	case f&failed != 0:
		w.mu.Unlock()
		w.finish(st, WriteFailed)
	case w.stopped:
		w.mu.Unlock()
		w.finish(st, Shutdown)
	case f&hubEnded != 0:
		w.mu.Unlock()
		w.finish(st, ByHub)
	case f&poked != 0:
		st.flags &^= poked
		w.mu.Unlock()
		if w.write(st, pokeChunk, false) && w.o.Poked != nil {
			w.o.Poked()
		}
	default:
		w.mu.Unlock()
	}
}

// write writes p (one or more chunks) on st without waiting: what the
// socket does not take at once is written by a goroutine of its own,
// within the write timeout, while the stream waits. It reports whether p
// is written or on its way. last: the stream's last words (nothing waits
// for them).
func (w *Writer) write(st *Stream, p []byte, last bool) bool {
	n := 0
	if st.raw != nil {
		var err error
		if n, err = writeNow(st.raw, p); err != nil {
			if !last {
				w.mark(st, failed)
			}
			return false
		}
	}
	if n == len(p) || last {
		return true
	}
	rest := bytes.Clone(p[n:])
	w.mu.Lock()
	st.flags |= writing
	w.mu.Unlock()
	go func() {
		_ = st.conn.SetWriteDeadline(time.Now().Add(w.o.WriteTimeout))
		_, err := st.conn.Write(rest)
		_ = st.conn.SetWriteDeadline(time.Time{})
		w.mu.Lock()
		defer w.mu.Unlock()
		st.flags &^= writing
		if err != nil {
			st.flags |= failed
		}
		w.enqueue(st)
	}()
	return true
}

// finish ends st: its last words (the hub's reason and when to come back,
// then the last chunk), written if the socket takes them at once, and its
// connection closed.
func (w *Writer) finish(st *Stream, why End) {
	w.mu.Lock()
	st.flags |= finished
	w.count--
	slot := w.wheel[st.slot]
	moved := slot[len(slot)-1]
	slot[st.pos], moved.pos = moved, st.pos
	slot[len(slot)-1] = nil
	w.wheel[st.slot] = slot[:len(slot)-1]
	w.unwatch(st)
	w.mu.Unlock()
	if why == ByHub || why == Shutdown {
		var words []byte
		if why == ByHub {
			// Said as a comment, with when to come back unless the
			// stream's first hint stands; then a clean end, after which
			// EventSource reconnects by itself.
			reason, retry := st.Sub.End()
			text := fmt.Sprintf(": %s\n\n", reason)
			if retry > 0 {
				text = fmt.Sprintf(": %s\nretry: %d\n\n", reason, retry.Milliseconds())
			}
			words = chunk(nil, text)
		}
		words = append(words, lastChunk...)
		if st.raw != nil {
			w.write(st, words, true)
		} else {
			// No write that does not wait: the last words go within a
			// second, then the connection closes.
			go func() {
				_ = st.conn.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = st.conn.Write(words)
				_ = st.conn.Close()
			}()
			w.o.Ended(st, why)
			return
		}
	}
	_ = st.conn.Close()
	w.o.Ended(st, why)
}
