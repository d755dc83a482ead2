package proxy

// Fairness of poke streams and of the pokes that make them pull, between
// callers (security round 3, findings 4 and 5). Every rule is keyed on
// identity.Caller.Key: the user when known, the client's address
// otherwise.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// pokeWatch is what a watched stream saw.
type pokeWatch struct {
	pokes atomic.Int64
	last  atomic.Int64 // when the last poke came (unix nanoseconds)
	done  chan struct{}
}

// watch reads s's events until it ends; on each poke it pulls as user
// (when pull is set), as the app's EventSource handler does.
func watch(inst *instance, s *stream, user string, pull bool) *pokeWatch {
	w := &pokeWatch{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for e := range s.events {
			if e != "poke" {
				continue
			}
			w.pokes.Add(1)
			w.last.Store(time.Now().UnixNano())
			if pull {
				rawPull(inst, user, "g-"+user)
			}
		}
	}()
	return w
}

// rawPull pulls as a client would, off the test's goroutine: failures are
// the pull's own business here.
func rawPull(inst *instance, user, group string) {
	body, _ := json.Marshal(pullBody(group, nil))
	req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+"/replicache/pull", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+user)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
}

// TestAnonymousWritesDoNotPokeEveryone (finding 4): 20 users hold a
// stream each and pull whenever poked; an anonymous caller sends 20
// POST /api/login through the pass-through, which the API answers 200,
// 60 ms apart (beyond the coalescing window, so each could be a poke).
// Before: every write poked every stream (20 pokes and 60 upstream GETs
// per anonymous request, growing with the streams). Now a write the
// sidecar cannot identify pokes nobody, and is not even asked about (no
// credentials, no auth call); under SIDECAR_POKE_PASSTHROUGH=all (today's
// rule, chosen knowingly) one caller's flood costs a poke per
// SIDECAR_POKE_CALLER_INTERVAL per stream.
func TestAnonymousWritesDoNotPokeEveryone(t *testing.T) {
	t.Parallel()
	const streams, writes = 20, 20
	tests := []struct {
		name string
		env  map[string]string
		// maxPerStream bounds the pokes each stream may get from the
		// flood; minPerStream is what it must get (nothing lost).
		minPerStream, maxPerStream int64
	}{
		// The default: only identified writes poke.
		{"identified (default)", nil, 0, 0},
		// Pass-through pokes turned off.
		{"off", map[string]string{"SIDECAR_POKE_PASSTHROUGH": "off"}, 0, 0},
		// Today's rule, paced per caller (1 s): a poke at once and one at
		// the end of each interval the flood (about 1.3 s) reaches; at
		// least one, after the last write. -1: per the flood's length.
		{"all, paced per caller", map[string]string{"SIDECAR_POKE_PASSTHROUGH": "all"}, 1, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.env)
			var gets, asks atomic.Int64
			h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				switch {
				case r.Method == http.MethodPost && r.URL.Path == "/api/login":
					w.WriteHeader(http.StatusOK) // the API's login: anyone may call it
					return true
				case r.Method == http.MethodGet:
					gets.Add(1)
					if r.URL.Path == "/api/me" {
						asks.Add(1)
					}
				}
				return false
			})
			a := h.start()
			runPokes(t, a)
			var watches []*pokeWatch
			for i := range streams {
				user := fmt.Sprint("u", i)
				s := openStream(t, a, "Bearer "+user, nil)
				s.waitOpen(t)
				watches = append(watches, watch(a, s, user, true))
			}
			gets.Store(0)
			asks.Store(0)
			var lastWrite time.Time
			start := time.Now()
			for range writes {
				req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/api/login", strings.NewReader(`{"name":"x","password":"y"}`))
				req.Header.Set("Content-Type", "application/json")
				if r := do(t, req); r.status != http.StatusOK {
					t.Fatalf("anonymous login = %d %s", r.status, r.raw)
				}
				lastWrite = time.Now()
				time.Sleep(60 * time.Millisecond)
			}
			maxPerStream := tc.maxPerStream
			if maxPerStream < 0 {
				maxPerStream = 2 + int64(time.Since(start)/time.Second)
			}
			// Room for a poke held for the end of a caller's interval (1 s)
			// and the pulls it causes.
			time.Sleep(1500 * time.Millisecond)
			var pokes int64
			for i, w := range watches {
				n := w.pokes.Load()
				pokes += n
				if n < tc.minPerStream || n > maxPerStream {
					t.Errorf("stream %d got %d pokes from %d anonymous writes; want %d to %d", i, n, writes, tc.minPerStream, maxPerStream)
				}
				if tc.minPerStream > 0 && time.Unix(0, w.last.Load()).Before(lastWrite) {
					t.Errorf("stream %d: no poke after the last write (the last change would be lost)", i)
				}
			}
			t.Logf("%d streams, %d anonymous writes: %d pokes (%.1f per write), %d upstream GETs (%.1f per anonymous request), %d auth calls",
				streams, writes, pokes, float64(pokes)/writes, gets.Load(), float64(gets.Load())/writes, asks.Load())
			if tc.maxPerStream == 0 && (gets.Load() != 0 || asks.Load() != 0) {
				t.Errorf("anonymous writes caused %d upstream GETs (%d auth calls); want none", gets.Load(), asks.Load())
			}
		})
	}
}

// TestIdentifiedWritesPoke: a pass-through write poke follows who the
// sidecar says wrote it. With SIDECAR_AUTH_PATH the auth call is made
// after the API's 2xx, for writes that carry credentials; scope rules then
// apply to the writer as for pushes.
func TestIdentifiedWritesPoke(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		env       map[string]string
		hdr       map[string]string // the write's headers
		wantAlice bool              // alice's stream is poked
		wantBob   bool              // bob's stream is poked
	}{
		// Identified by the auth call, scope all: everyone is poked.
		{"auth call, scope all", nil, map[string]string{"Authorization": "Bearer alice"}, true, true},
		// Identified by the auth call, scope user: the writer only.
		{"auth call, scope user", map[string]string{"SIDECAR_POKE_SCOPE": "user"}, map[string]string{"Authorization": "Bearer alice"}, true, false},
		// Credentials the auth endpoint refuses: not identified, nobody.
		{"refused credentials", nil, map[string]string{"Authorization": "Bearer refused"}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.env)
			h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("Authorization") == "Bearer refused" && r.URL.Path == "/api/me" {
					w.WriteHeader(http.StatusUnauthorized)
					return true
				}
				if r.Method == http.MethodPost && r.URL.Path == "/api/login" {
					w.WriteHeader(http.StatusOK)
					return true
				}
				return false
			})
			a := h.start()
			runPokes(t, a)
			alice, bob := openStream(t, a, "Bearer alice", nil), openStream(t, a, "Bearer bob", nil)
			alice.waitOpen(t)
			bob.waitOpen(t)
			req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/api/login", strings.NewReader(`{}`))
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			if r := do(t, req); r.status != http.StatusOK {
				t.Fatalf("write = %d %s", r.status, r.raw)
			}
			wait := time.Second // for a poke that must not come
			if tc.wantAlice {
				wait = 5 * time.Second // for one that must: under load it may be late
			}
			if got := alice.next(wait) == "poke"; got != tc.wantAlice {
				t.Errorf("alice poked: %v, want %v", got, tc.wantAlice)
			}
			if got := bob.next(300*time.Millisecond) == "poke"; got != tc.wantBob {
				t.Errorf("bob poked: %v, want %v", got, tc.wantBob)
			}
		})
	}
}

// TestOneCallersPokesArePaced (finding 4): one identified user floods
// writes, 25 of them 60 ms apart (beyond the coalescing window); another
// user's stream is poked at most once per SIDECAR_POKE_CALLER_INTERVAL
// (500 ms here) and still after the last write: the flood's pokes are
// merged, none is lost. Before: a poke per write. The invalidate hook is
// trusted and not paced.
func TestOneCallersPokesArePaced(t *testing.T) {
	t.Parallel()
	const writes = 25
	tests := []struct {
		name  string
		write func(t *testing.T, a *instance, i int)
		// the range of pokes bob's stream gets; max -1: paced, a poke at
		// once and one at the end of each interval the flood (about
		// 1.6 s) reaches
		min, max int64
	}{
		// alice pushes: paced by her key, user:alice.
		{"pushes", func(t *testing.T, a *instance, i int) {
			if r := a.push(t, "alice", "g", create("c1", int64(i+1), fmt.Sprint("t", i))); r.status != 200 {
				t.Fatalf("push = %d %s", r.status, r.raw)
			}
		}, 1, -1},
		// alice writes through the pass-through, identified by the auth
		// call: paced by the same key.
		{"pass-through writes", func(t *testing.T, a *instance, i int) {
			req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/api/todos", strings.NewReader(fmt.Sprintf(`{"id":"p%d","title":"x"}`, i)))
			req.Header.Set("Authorization", "Bearer alice")
			if r := do(t, req); r.status != http.StatusCreated {
				t.Fatalf("pass-through write = %d %s", r.status, r.raw)
			}
		}, 1, -1},
		// The hook is the legacy service's own voice: every call pokes
		// (coalesced per window only).
		{"invalidate hook", func(t *testing.T, a *instance, i int) {
			req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/replicache/invalidate", nil)
			req.Header.Set("Authorization", "Bearer s3cret")
			if r := do(t, req); r.status != http.StatusAccepted {
				t.Fatalf("invalidate = %d %s", r.status, r.raw)
			}
		}, writes - 5, writes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, map[string]string{"SIDECAR_POKE_CALLER_INTERVAL": "500ms", "SIDECAR_INVALIDATE_TOKEN": "s3cret"})
			a := h.start()
			runPokes(t, a)
			bob := openStream(t, a, "Bearer bob", nil)
			bob.waitOpen(t)
			w := watch(a, bob, "bob", false)
			start := time.Now()
			var lastWrite time.Time
			for i := range writes {
				lastWrite = time.Now() // a poke it causes may come before the call returns
				tc.write(t, a, i)
				time.Sleep(60 * time.Millisecond)
			}
			flood := time.Since(start)
			time.Sleep(time.Second) // the last interval's poke
			n, most := w.pokes.Load(), tc.max
			if most < 0 {
				most = 2 + int64(flood/(500*time.Millisecond))
			}
			t.Logf("%s: %d writes over %v: bob's stream got %d pokes", tc.name, writes, flood.Round(time.Millisecond), n)
			if n < tc.min || n > most {
				t.Errorf("%d pokes; want %d to %d", n, tc.min, most)
			}
			if time.Unix(0, w.last.Load()).Before(lastWrite) {
				t.Error("no poke after the last write: its change would wait for the pull interval")
			}
		})
	}
}

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
	held := a.sc.core.Hub.Count()
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
	if n := a.sc.core.Hub.Count(); n != 64 {
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
	held := a.sc.core.Hub.Count()
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
	// Timed from before the stream is asked for: its lifetime runs from
	// when the hub took it, before its client reads the opening (a moment
	// that may come late on a loaded machine), and ends in its last tenth.
	start := time.Now()
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)
	if e := s.next(3 * time.Second); e != "end" {
		t.Fatalf("a stream past its lifetime: %q, want its end", e)
	}
	lived := time.Since(start)
	t.Logf("the stream ended after %v (retry hint %d ms)", lived.Round(time.Millisecond), s.retry.Load())
	if lived < 360*time.Millisecond {
		t.Errorf("the stream ended after %v, before 90%% of its 400ms lifetime", lived)
	}
	if ms := s.retry.Load(); ms < 1000 || ms > 5000 {
		t.Errorf("reconnect hint %d ms, want 1–5 s", ms)
	}
	proxytest.WaitFor(t, "the ended stream's slot", func() bool { return a.sc.core.Hub.Count() == 0 })
	// Counted here, before the reconnection, which lives 400 ms too: its
	// own end would count as well.
	waitSeriesWithLabel(t, a, "replicache_sidecar_poke_streams_ended_total", "reason", "lifetime", 1)
	again := openStream(t, a, "Bearer alice", map[string]string{"Last-Event-ID": "1"})
	again.waitOpen(t)
	if e := again.next(2 * time.Second); e != "poke" {
		t.Errorf("the reconnected stream got %q, want a catch-up poke", e)
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
	srv.Config = NewHTTPServer(srv.Config.Handler, a.sc.core.Cfg.HTTPReadTimeout, 0)
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
	for a.sc.core.Hub.Count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stream of a client that stopped reading still holds its slot after %v", time.Since(stopped).Round(time.Millisecond))
		}
		once.Do(func() { t.Log("waiting for the buffers to fill") })
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the slot of a client that stopped reading was free %v later", time.Since(stopped).Round(time.Millisecond))
}

// waitSeriesWithLabel waits until the counter name{label=value} reaches
// want, and fails when it went past it. A stream's end is counted after
// its connection closed and its slot was freed (sse.Writer.finish, then
// pokeServer.streamEnded): its client, or Hub.Count, sees the end a moment
// before the counter moves.
func waitSeriesWithLabel(t testing.TB, inst *instance, name, label, value string, want float64) {
	t.Helper()
	var got float64
	proxytest.WaitFor(t, fmt.Sprintf("%s{%s=%q} to reach %v", name, label, value, want), func() bool {
		got = seriesWithLabel(t, inst, name, label, value)
		return got >= want
	})
	if got != want {
		t.Errorf("%s{%s=%q} = %v, want %v", name, label, value, got, want)
	}
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
