package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// served says how a stream's answer came: its protocol, and whether the
// connection closes after it (only a stream served on its own connection,
// taken over from the server, says Connection: close; the handler leaves
// the connection to the server).
type served struct {
	proto string
	own   bool
}

// openStreamVia opens a poke stream at base through client, as openStream
// does, and says how it was served.
func openStreamVia(t testing.TB, client *http.Client, base, auth string, extra map[string]string) (*stream, served) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/replicache/poke", nil)
	req.Header.Set("Authorization", auth)
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("opening a poke stream: %v", err)
	}
	s := &stream{status: resp.StatusCode, header: resp.Header, events: make(chan string, 1000), cancel: cancel}
	t.Cleanup(func() { cancel(); _ = resp.Body.Close() })
	go func() {
		defer close(s.events)
		defer func() { _ = resp.Body.Close() }()
		sc := bufio.NewScanner(resp.Body)
		event := ""
		for sc.Scan() {
			switch line := sc.Text(); {
			case line == ": ping":
				s.events <- "ping"
			case line == ": connected":
				s.events <- "open"
			case strings.HasPrefix(line, "retry: "):
				ms, _ := strconv.ParseInt(strings.TrimPrefix(line, "retry: "), 10, 64)
				s.retry.Store(ms)
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && event != "":
				s.events <- event
				event = ""
			}
		}
	}()
	return s, served{resp.Proto, resp.Close}
}

// waitPing waits for a heartbeat, skipping nothing else.
func (s *stream) waitPing(t testing.TB) {
	t.Helper()
	select {
	case e := <-s.events:
		if e != "ping" {
			t.Errorf("idle stream sent %q, want a heartbeat", e)
		}
	case <-time.After(5 * time.Second):
		t.Error("no heartbeat within 5s")
	}
}

// TestPokeStreamOnItsOwnConnection: over HTTP/1.1 a stream is served on
// its connection, taken over from the server and written by the process's
// one stream writer. It answers as the handler did: the stream's header,
// the CORS headers of an allowed origin, the trace id, no compression even
// when gzip is accepted, the opening comment with a reconnect hint of 1 to
// 5 s, heartbeats, a catch-up poke for a reconnection (Last-Event-ID)
// counted in pokes_total, and a poke when the hub delivers one. A client
// that goes away ends its stream (disconnected) and frees its slot.
func TestPokeStreamOnItsOwnConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_HEARTBEAT": "100ms", "SIDECAR_CORS_ORIGINS": "https://app.example.com",
		"SIDECAR_POKE_COALESCE": "0s"})
	a := h.start()
	s, how := openStreamVia(t, http.DefaultClient, a.srv.URL, "Bearer alice", map[string]string{"Origin": "https://app.example.com", "Accept-Encoding": "gzip"})
	hdr := s.header
	if s.status != http.StatusOK || !how.own {
		t.Fatalf("stream = %d %v; want 200 on its own connection (Connection: close)", s.status, hdr)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
		"Access-Control-Allow-Origin": "https://app.example.com", "Access-Control-Allow-Credentials": "true", "Content-Encoding": ""} {
		if got := hdr.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if hdr.Get("X-Trace-ID") == "" {
		t.Error("the stream's answer names no trace (X-Trace-ID)")
	}
	s.waitOpen(t)
	s.waitPing(t)
	if ms := s.retry.Load(); ms < 1000 || ms > 5000 { // read before the heartbeat
		t.Errorf("reconnect hint %d ms, want 1–5 s", ms)
	}
	s.waitPing(t)

	again := openStream(t, a, "Bearer alice", map[string]string{"Last-Event-ID": "1"})
	again.waitOpen(t)
	if e := again.next(2 * time.Second); e != "poke" {
		t.Errorf("a reopened stream got %q, want a catch-up poke", e)
	}
	if e := s.next(300 * time.Millisecond); e != "" {
		t.Errorf("the other stream got %q from another's catch-up", e)
	}
	a.sc.core.Hub.Poke(nil)
	if e := s.next(2 * time.Second); e != "poke" {
		t.Errorf("after a delivery: %q, want a poke", e)
	}
	if e := again.next(2 * time.Second); e != "poke" {
		t.Errorf("after a delivery, the other stream: %q, want a poke", e)
	}
	// A poke is counted once its write returned: the client may read it
	// a moment before.
	proxytest.WaitFor(t, "the delivered pokes counted", func() bool { return seriesValue(t, a, "replicache_sidecar_pokes_total") >= 3 })
	if n := seriesValue(t, a, "replicache_sidecar_pokes_total"); n != 3 {
		t.Errorf("pokes_total = %v, want 3 (a catch-up and two delivered)", n)
	}

	s.cancel()
	proxytest.WaitFor(t, "the closed stream's slot", func() bool { return a.sc.core.Hub.Count() == 1 })
	proxytest.WaitFor(t, "the closed stream counted", func() bool {
		return seriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "disconnected") == 1
	})
	if e := again.next(300 * time.Millisecond); e != "" {
		t.Errorf("the stream left open: %q, want it to go on", e)
	}
}

// TestPokeStreamsEndAtShutdown: at shutdown every stream on its own
// connection ends cleanly (the last chunk, then the connection closes), its
// opening reconnect hint standing, so EventSource comes back to another
// replica 1 to 5 s later; each is counted as ended for shutdown, Shutdown
// waits for them, and a stream asked for afterwards is refused with 503.
func TestPokeStreamsEndAtShutdown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_DRAIN_DELAY": "0s"})
	a := h.start()
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(a.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, _ = io.WriteString(conn, "GET /replicache/poke HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer bob\r\n\r\n")
	proxytest.WaitFor(t, "both streams", func() bool { return a.sc.core.Hub.Count() == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.sc.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if e := s.next(5 * time.Second); e != "end" {
		t.Errorf("stream at shutdown: %q, want its end", e)
	}
	if ms := s.retry.Load(); ms < 1000 || ms > 5000 {
		t.Errorf("reconnect hint %d ms, want the opening's 1–5 s", ms)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	raw, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the stream to its end: %v (read %q)", err, raw)
	}
	if !strings.Contains(string(raw), ": connected\nretry: ") || !strings.HasSuffix(string(raw), "\r\n0\r\n\r\n") {
		t.Errorf("the stream as sent: %q; want the opening, and the last chunk before the connection closed", raw)
	}
	// Shutdown returns once the writer holds no stream; each is counted a
	// moment after (sse.Writer.finish, then its Ended).
	waitSeriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "shutdown", 2)
	if late := openStream(t, a, "Bearer alice", nil); late.status != http.StatusServiceUnavailable {
		t.Errorf("a stream after shutdown = %d, want 503", late.status)
	}
}

// noHijack is middleware that hides the connection: its ResponseWriter
// flushes but neither hands over its connection nor unwraps.
type noHijack struct{ http.ResponseWriter }

func (w noHijack) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// TestPokeStreamWhereTheConnectionCannotBeTakenOver: over HTTP/2 (whose
// streams share one connection), and behind a ResponseWriter that cannot
// hand over its connection, the handler serves the stream itself; over
// HTTP/1.1 with TLS the connection is taken over but is no plain socket,
// so the writer writes and reads it through the TLS connection. Each way
// the stream behaves the same: opening, heartbeats, a catch-up poke, a
// delivered poke, its slot freed (disconnected) when the client goes
// away, and its end at shutdown.
func TestPokeStreamWhereTheConnectionCannotBeTakenOver(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		tls       bool
		http2     bool
		wrap      bool
		wantProto string
		wantOwn   bool
	}{
		{name: "HTTP/2", tls: true, http2: true, wantProto: "HTTP/2.0"},
		{name: "ResponseWriter without Hijack", wrap: true, wantProto: "HTTP/1.1"},
		{name: "HTTP/1.1 over TLS", tls: true, wantProto: "HTTP/1.1", wantOwn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, map[string]string{"SIDECAR_POKE_HEARTBEAT": "100ms", "SIDECAR_POKE_COALESCE": "0s"})
			a := h.start()
			handler := a.sc.Handler()
			if tc.wrap {
				inner := handler
				handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { inner.ServeHTTP(noHijack{w}, r) })
			}
			srv := httptest.NewUnstartedServer(handler)
			srv.Config = NewHTTPServer(handler, a.sc.core.Cfg.HTTPReadTimeout, 0)
			srv.EnableHTTP2 = tc.http2
			if tc.tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			client := srv.Client()

			s, how := openStreamVia(t, client, srv.URL, "Bearer alice", nil)
			if s.status != http.StatusOK || how.proto != tc.wantProto || how.own != tc.wantOwn {
				t.Fatalf("stream = %d over %s, on its own connection %t; want 200 over %s, %t", s.status, how.proto, how.own, tc.wantProto, tc.wantOwn)
			}
			s.waitOpen(t)
			s.waitPing(t)
			again, _ := openStreamVia(t, client, srv.URL, "Bearer alice", map[string]string{"Last-Event-ID": "1"})
			again.waitOpen(t)
			if e := again.next(2 * time.Second); e != "poke" {
				t.Errorf("a reopened stream got %q, want a catch-up poke", e)
			}
			a.sc.core.Hub.Poke(nil)
			if e := s.next(2 * time.Second); e != "poke" {
				t.Errorf("after a delivery: %q, want a poke", e)
			}
			if e := again.next(2 * time.Second); e != "poke" {
				t.Errorf("after a delivery, the other stream: %q, want a poke", e)
			}
			s.cancel()
			proxytest.WaitFor(t, "the closed stream's slot", func() bool { return a.sc.core.Hub.Count() == 1 })
			proxytest.WaitFor(t, "the closed stream counted", func() bool {
				return seriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "disconnected") == 1
			})
			a.sc.closePokes()
			if e := again.next(5 * time.Second); e != "end" {
				t.Errorf("stream at shutdown: %q, want its end", e)
			}
			proxytest.WaitFor(t, "the stream ended at shutdown counted", func() bool {
				return seriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "shutdown") == 1
			})
		})
	}
}

// TestManyPokeStreamsOnTheirOwnConnections: streams of many callers, all
// on their own connections, each get one poke per delivery however the
// delivery is spread (SIDECAR_POKE_SPREAD over 200 streams: batches), and
// every slot is freed when they go away.
func TestManyPokeStreamsOnTheirOwnConnections(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_COALESCE": "0s", "SIDECAR_POKE_SPREAD": "50ms"})
	a := h.start()
	const n = 200
	streams := make([]*stream, n)
	for i := range n {
		streams[i] = openStream(t, a, fmt.Sprintf("Bearer user%d", i), nil)
		streams[i].waitOpen(t)
	}
	for round := range 2 {
		a.sc.core.Hub.Poke(nil)
		for i, s := range streams {
			if e := s.next(5 * time.Second); e != "poke" {
				t.Fatalf("round %d: stream %d got %q, want a poke", round, i, e)
			}
		}
		time.Sleep(60 * time.Millisecond) // the spread is over
	}
	for _, s := range streams {
		if e := s.next(100 * time.Millisecond); e != "" {
			t.Errorf("after two deliveries a stream got %q more", e)
			break
		}
		s.cancel()
	}
	proxytest.WaitFor(t, "every slot free", func() bool { return a.sc.core.Hub.Count() == 0 })
	// A slot is freed before its stream's end is counted (streamEnded).
	waitSeriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "disconnected", n)
}
