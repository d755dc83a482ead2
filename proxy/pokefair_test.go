package proxy

// Fairness of poke streams between callers (security round 3, finding 5). Every rule is keyed on
// identity.Caller.Key: the user when known, the client's address
// otherwise.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestAStreamlessCallerCanOpenOne (finding 5): with room for 64 streams,
// mallory opens 80 of them; she keeps at most max(8, 64/64) = 8, her
// newest. Then seven more accounts fill the process, 8 streams each, and
// dave, who holds none, still opens one: the oldest stream of whoever
// holds the most ends, told to come back in 30 s or more. Before: the
// per-user cap was a fixed 100, so mallory alone took all 64 slots and
// every later stream got 503 (which EventSource does not retry).
func TestAStreamlessCallerCanOpenOne(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_MAX_SUBSCRIBERS": "64"})
	a := h.start()
	var mallory []*stream
	refused := 0
	for range 80 {
		s := openStream(t, a, "Bearer mallory", nil)
		if s.status != http.StatusOK {
			refused++
			continue
		}
		mallory = append(mallory, s)
	}
	held := a.sc.hub.Count()
	t.Logf("mallory opened 80 streams: %d answered 200, %d refused, %d held", len(mallory), refused, held)
	if held > 8 {
		t.Errorf("mallory holds %d of the 64 slots; want at most 8", held)
	}
	for i := range 7 {
		for range 8 {
			if s := openStream(t, a, fmt.Sprint("Bearer user", i), nil); s.status != http.StatusOK {
				t.Fatalf("user%d's stream = %d", i, s.status)
			}
		}
	}
	dave := openStream(t, a, "Bearer dave", nil)
	if dave.status != http.StatusOK {
		t.Fatalf("dave, with no stream, while the process is full: %d, want 200", dave.status)
	}
	dave.waitOpen(t)
	// Every account holds 8: the oldest of them goes, mallory's oldest.
	victim := mallory[len(mallory)-8]
	if e := victim.next(5 * time.Second); e != "end" {
		t.Fatalf("mallory's oldest stream: %q, want its end", e)
	}
	if ms := victim.retry.Load(); ms < 30000 {
		t.Errorf("the evicted stream's reconnect hint is %d ms; want at least 30 s", ms)
	}
	if n := a.sc.hub.Count(); n != 64 {
		t.Errorf("%d streams after the eviction, want 64", n)
	}
	if got := seriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "evicted"); got < 1 {
		t.Errorf(`poke_streams_ended_total{reason="evicted"} = %v, want at least 1`, got)
	}
}

// TestSingleTenantStreamsArePerAddress (finding 5): in single-tenant mode
// every caller is the same user, so the cap is per client address (callers
// told apart here by a trusted proxy's X-Forwarded-For, as all test
// clients are 127.0.0.1). One address opening 20 streams of 16 keeps 8;
// another address still gets one. Before: the process's 16 slots went to
// the first address, and everyone else got 503.
func TestSingleTenantStreamsArePerAddress(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_POKE_MAX_SUBSCRIBERS": "16"})
	a := h.start()
	opened := 0
	for range 20 {
		if s := openStream(t, a, "", map[string]string{"X-Forwarded-For": "203.0.113.66"}); s.status == http.StatusOK {
			opened++
		}
	}
	held := a.sc.hub.Count()
	t.Logf("one address opened 20 streams: %d answered 200, %d held", opened, held)
	if held > 8 {
		t.Errorf("one address holds %d of the 16 slots; want at most 8", held)
	}
	other := openStream(t, a, "", map[string]string{"X-Forwarded-For": "198.51.100.7"})
	if other.status != http.StatusOK {
		t.Errorf("another address's stream = %d, want 200", other.status)
	}
}

// TestPokeStreamLifetime (finding 5): a stream ends cleanly after
// SIDECAR_POKE_MAX_LIFETIME, having told EventSource when to come back,
// and the reconnection (with the last event id) opens and catches up.
// Before: streams lived for ever.
func TestPokeStreamLifetime(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_MAX_LIFETIME": "400ms", "SIDECAR_POKE_HEARTBEAT": "100ms"})
	a := h.start()
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)
	start := time.Now()
	if e := s.next(3 * time.Second); e != "end" {
		t.Fatalf("a stream past its lifetime: %q, want its end", e)
	}
	lived := time.Since(start)
	t.Logf("the stream ended after %v (retry hint %d ms)", lived.Round(time.Millisecond), s.retry.Load())
	if lived < 300*time.Millisecond {
		t.Errorf("the stream ended after %v, before 90%% of its 400ms lifetime", lived)
	}
	if ms := s.retry.Load(); ms < 1000 || ms > 5000 {
		t.Errorf("reconnect hint %d ms, want 1–5 s", ms)
	}
	proxytest.WaitFor(t, "the ended stream's slot", func() bool { return a.sc.hub.Count() == 0 })
	again := openStream(t, a, "Bearer alice", map[string]string{"Last-Event-ID": "1"})
	again.waitOpen(t)
	if e := again.next(2 * time.Second); e != "poke" {
		t.Errorf("the reconnected stream got %q, want a catch-up poke", e)
	}
	if got := seriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "lifetime"); got != 1 {
		t.Errorf(`poke_streams_ended_total{reason="lifetime"} = %v, want 1`, got)
	}
}

// smallSendBuffers sets a small send buffer on every accepted connection,
// so a client that stops reading fills it in moments.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// TestPokeStreamThatStopsReading (finding 5): a client opens a stream and
// never reads again (its socket stays up). Once the buffers between them
// are full, the next heartbeat cannot be written, and the stream ends
// within its write deadline (the heartbeat, within 1 to 10 s: 1 s here),
// freeing the slot. Before: the deadline was 10 s whatever the heartbeat.
func TestPokeStreamThatStopsReading(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_HEARTBEAT": "1ms"})
	a := h.start()
	srv := httptest.NewUnstartedServer(a.sc.Handler())
	srv.Config = NewHTTPServer(srv.Config.Handler, a.sc.cfg.HTTPReadTimeout, 0)
	srv.Listener = smallSendBuffers{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)

	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
	}}
	conn, err := d.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, _ = io.WriteString(conn, "GET /replicache/poke HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer alice\r\nAccept: text/event-stream\r\n\r\n")
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream's start: %v", err)
		}
		if strings.HasPrefix(line, ": connected") {
			break
		}
	}
	// From here on nobody reads.
	stopped := time.Now()
	var once sync.Once
	deadline := stopped.Add(5 * time.Second)
	for a.sc.hub.Count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stream of a client that stopped reading still holds its slot after %v", time.Since(stopped).Round(time.Millisecond))
		}
		once.Do(func() { t.Log("waiting for the buffers to fill") })
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the slot of a client that stopped reading was free %v later", time.Since(stopped).Round(time.Millisecond))
}

// seriesWithLabel reads the counter or gauge name{label=value}.
func seriesWithLabel(t testing.TB, inst *instance, name, label, value string) float64 {
	t.Helper()
	for _, mf := range mustGather(t, inst) {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					if g := m.GetGauge(); g != nil {
						return g.GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
