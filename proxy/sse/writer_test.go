package sse

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
)

// ended records what Options.Ended was told.
type ended struct {
	mu  sync.Mutex
	why map[*Stream]End
}

func (e *ended) record(st *Stream, why End) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.why == nil {
		e.why = map[*Stream]End{}
	}
	if _, again := e.why[st]; again {
		panic("a stream ended twice")
	}
	e.why[st] = why
}

// of waits until st ended and returns why.
func (e *ended) of(t *testing.T, st *Stream) End {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		why, ok := e.why[st]
		e.mu.Unlock()
		if ok {
			return why
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the stream did not end within 10s")
	return 0
}

// wrapped hides a connection's socket: the writer must write and read it
// through the connection (as a TLS connection).
type wrapped struct{ net.Conn }

// pair returns both ends of a loopback TCP connection: the server's (as
// Hijack hands it over, or wrapped) and the client's.
func pair(t *testing.T, wrap bool, opts ...func(server, client *net.TCPConn)) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
	for _, o := range opts {
		o(s.(*net.TCPConn), c.(*net.TCPConn))
	}
	if wrap {
		return wrapped{s}, c
	}
	return s, c
}

// client reads a stream as EventSource would: the response, then its
// lines.
type client struct {
	resp  *http.Response
	lines chan string // closed at the stream's end; "EOF" then if it ended cleanly
}

func read(t *testing.T, conn net.Conn) *client {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	c := &client{resp: resp, lines: make(chan string, 100)}
	go func() {
		defer close(c.lines)
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				if err == io.EOF { // the last chunk: a clean end
					c.lines <- "EOF"
				}
				return
			}
			c.lines <- strings.TrimSuffix(line, "\n")
		}
	}()
	return c
}

// next returns the next line other than a heartbeat's, "" when the stream
// ended without a clean end.
func (c *client) next(t *testing.T) string {
	t.Helper()
	for {
		select {
		case line := <-c.lines:
			if line == ": ping" || line == "" {
				continue
			}
			return line
		case <-time.After(10 * time.Second):
			t.Fatal("nothing on the stream within 10s")
		}
	}
}

func (c *client) waitPing(t *testing.T) {
	t.Helper()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				t.Fatal("the stream ended before a heartbeat")
			}
			if line == ": ping" {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no heartbeat within 10s")
		}
	}
}

// TestWriter: a stream on a plain socket (epoll, writes that do not wait)
// and one on a wrapped connection (a reader and writes of its own) behave
// the same: the response head with the caller's header, the opening, a
// heartbeat, a poke (counted), the hub's end with its reason and reconnect
// hint and a clean end; a client that goes away is noticed; the writer's
// goroutine (and the poller) end with the last stream.
func TestWriter(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		name := "socket"
		if wrap {
			name = "wrapped"
		}
		t.Run(name, func(t *testing.T) {
			var rec ended
			var poked atomic.Int64
			hub := poke.NewHub(poke.Limits{Max: 10, PerKey: 1}, 0)
			w := New(Options{Heartbeat: 30 * time.Millisecond, WriteTimeout: time.Second, Stop: hub.Done(),
				Ended: rec.record, Poked: func() { poked.Add(1) }})
			start := func(key string) (*Stream, *client, net.Conn) {
				srv, cl := pair(t, wrap)
				st := w.NewStream()
				sub, err := hub.SubscribeTo(key, key, st)
				if err != nil {
					t.Fatal(err)
				}
				st.Sub = sub
				w.Start(st, srv, http.Header{"X-Trace-Id": {"abc"}}, ": connected\nretry: 2000\n\n")
				return st, read(t, cl), cl
			}
			st, c, _ := start("alice")
			if c.resp.StatusCode != http.StatusOK || c.resp.Header.Get("X-Trace-Id") != "abc" || !c.resp.Close ||
				len(c.resp.TransferEncoding) != 1 || c.resp.TransferEncoding[0] != "chunked" {
				t.Fatalf("response %d %v (close %t, %v)", c.resp.StatusCode, c.resp.Header, c.resp.Close, c.resp.TransferEncoding)
			}
			if l := c.next(t); l != ": connected" {
				t.Fatalf("first line %q, want the opening", l)
			}
			if l := c.next(t); l != "retry: 2000" {
				t.Fatalf("second line %q, want the reconnect hint", l)
			}
			c.waitPing(t)
			hub.Poke(nil)
			if l := c.next(t); l != "event: poke" {
				t.Fatalf("after a poke: %q", l)
			}
			for deadline := time.Now().Add(5 * time.Second); poked.Load() != 1; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("Poked told %d times, want 1", poked.Load())
				}
			}
			// A second stream of the same key (PerKey 1) makes the hub end
			// the first: said, with a reconnect hint, then a clean end.
			bob, bc, bconn := start("alice")
			for _, want := range []string{"id: 1", "data: {}", ": evicted"} {
				if l := c.next(t); l != want {
					t.Fatalf("the evicted stream: %q, want %q", l, want)
				}
			}
			if l := c.next(t); !strings.HasPrefix(l, "retry: ") {
				t.Fatalf("the evicted stream: %q, want its reconnect hint", l)
			}
			if l := c.next(t); l != "EOF" {
				t.Fatalf("the evicted stream: %q, want its clean end", l)
			}
			if why := rec.of(t, st); why != ByHub {
				t.Errorf("the evicted stream ended for %d, want ByHub", why)
			}
			if l := bc.next(t); l != ": connected" {
				t.Fatalf("the second stream: %q", l)
			}
			// Its client goes away.
			_ = bconn.Close()
			if why := rec.of(t, bob); why != Disconnected {
				t.Errorf("a stream whose client left ended for %d, want Disconnected", why)
			}
			waitIdle(t, w)
		})
	}
}

// waitIdle waits until the writer holds no stream and its goroutines are
// gone.
func waitIdle(t *testing.T, w *Writer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		idle := w.count == 0 && !w.running && w.poller == nil
		w.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer still runs with no stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWriterStop: closing Stop ends every stream (Shutdown) with a clean
// end, and a stream started afterwards ends at once.
func TestWriterStop(t *testing.T) {
	var rec ended
	stop := make(chan struct{})
	w := New(Options{Heartbeat: time.Hour, WriteTimeout: time.Second, Stop: stop, Ended: rec.record})
	var streams []*Stream
	var clients []*client
	for i := range 3 {
		srv, cl := pair(t, i == 2)
		st := w.NewStream()
		w.Start(st, srv, http.Header{}, ": connected\n\n")
		c := read(t, cl)
		if l := c.next(t); l != ": connected" {
			t.Fatalf("opening %q", l)
		}
		streams, clients = append(streams, st), append(clients, c)
	}
	close(stop)
	for i, st := range streams {
		if why := rec.of(t, st); why != Shutdown {
			t.Errorf("stream %d ended for %d, want Shutdown", i, why)
		}
		if l := clients[i].next(t); l != "EOF" {
			t.Errorf("stream %d at shutdown: %q, want a clean end", i, l)
		}
	}
	srv, cl := pair(t, false)
	late := w.NewStream()
	w.Start(late, srv, http.Header{}, ": connected\n\n")
	if why := rec.of(t, late); why != Shutdown {
		t.Errorf("a stream started after Stop ended for %d, want Shutdown", why)
	}
	c := read(t, cl)
	if l, end := c.next(t), c.next(t); l != ": connected" || end != "EOF" {
		t.Errorf("a stream started after Stop: %q then %q, want its opening and a clean end", l, end)
	}
	waitIdle(t, w)
}

// TestWriterClientThatStopsReading: a client that reads nothing while
// heartbeats fill the buffers between them is ended (WriteFailed) once a
// write has waited the write timeout, on a socket and on a wrapped
// connection alike.
func TestWriterClientThatStopsReading(t *testing.T) {
	small := func(s, c *net.TCPConn) {
		_ = s.SetWriteBuffer(4096)
		raw, _ := c.SyscallConn()
		_ = raw.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
	}
	for _, wrap := range []bool{false, true} {
		var rec ended
		w := New(Options{Heartbeat: time.Millisecond, WriteTimeout: 200 * time.Millisecond, Stop: make(chan struct{}), Ended: rec.record})
		srv, _ := pair(t, wrap, small)
		st := w.NewStream()
		w.Start(st, srv, http.Header{}, ": connected\n\n")
		if why := rec.of(t, st); why != WriteFailed {
			t.Errorf("wrapped %t: a client that reads nothing: ended for %d, want WriteFailed", wrap, why)
		}
		waitIdle(t, w)
	}
}

// TestWriterManyStreams: pokes reach every one of many streams once, the
// heartbeats keep coming for all (the wheel), and the streams end one by
// one as their clients leave.
func TestWriterManyStreams(t *testing.T) {
	var rec ended
	w := New(Options{Heartbeat: 50 * time.Millisecond, WriteTimeout: time.Second, Stop: make(chan struct{}), Ended: rec.record})
	const n = 100
	streams := make([]*Stream, n)
	clients := make([]*client, n)
	conns := make([]net.Conn, n)
	for i := range n {
		srv, cl := pair(t, i%10 == 0)
		streams[i] = w.NewStream()
		w.Start(streams[i], srv, http.Header{}, ": connected\n\n")
		clients[i], conns[i] = read(t, cl), cl
	}
	for _, st := range streams {
		st.Poke()
		st.Poke() // piled up: one poke
	}
	for i, c := range clients {
		if l := c.next(t); l != ": connected" {
			t.Fatalf("stream %d: %q", i, l)
		}
		if l := c.next(t); l != "event: poke" {
			t.Fatalf("stream %d: %q, want a poke", i, l)
		}
		for _, want := range []string{"id: 1", "data: {}"} {
			if l := c.next(t); l != want {
				t.Fatalf("stream %d: %q, want %q", i, l, want)
			}
		}
	}
	for _, c := range clients {
		c.waitPing(t)
		c.waitPing(t)
	}
	for i, st := range streams {
		_ = conns[i].Close()
		if why := rec.of(t, st); why != Disconnected {
			t.Errorf("stream %d ended for %d, want Disconnected", i, why)
		}
	}
	waitIdle(t, w)
}
