package proxy

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// stream is an open poke stream, read as the browser's EventSource would.
type stream struct {
	status int
	header http.Header
	events chan string // "poke", "ping", "open"; closed at the stream's end
	cancel context.CancelFunc
	retry  atomic.Int64 // the last retry: field's milliseconds
}

// openStream opens a poke stream to inst as the holder of auth, with
// extra request headers.
func openStream(t testing.TB, inst *instance, auth string, extra map[string]string) *stream {
	t.Helper()
	return openStreamURL(t, inst.srv.URL+"/replicache/poke", auth, extra)
}

// openStreamURL is openStream at url.
func openStreamURL(t testing.TB, url, auth string, extra map[string]string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("opening a poke stream: %v", err)
	}
	s := &stream{status: resp.StatusCode, header: resp.Header, events: make(chan string, 1000), cancel: cancel}
	t.Cleanup(func() { cancel(); _ = resp.Body.Close() })
	go func() {
		defer close(s.events)
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode != http.StatusOK {
			return
		}
		sc := bufio.NewScanner(resp.Body)
		event := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
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
	return s
}

// next returns the next event other than a heartbeat within d, or "" when
// none came (or the stream ended: "end").
func (s *stream) next(d time.Duration) string {
	timeout := time.After(d)
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				return "end"
			}
			if e == "ping" || e == "open" {
				continue
			}
			return e
		case <-timeout:
			return ""
		}
	}
}

// count counts the pokes that arrive within d.
func (s *stream) count(d time.Duration) int {
	n := 0
	deadline := time.Now().Add(d)
	for {
		if e := s.next(time.Until(deadline)); e != "poke" {
			return n
		}
		n++
	}
}

// waitOpen waits for the stream's first line.
func (s *stream) waitOpen(t testing.TB) {
	t.Helper()
	select {
	case e := <-s.events:
		if e != "open" {
			t.Fatalf("first event %q, want the opening comment", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the poke stream did not open")
	}
}

func TestPokeStream(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_HEARTBEAT": "100ms", "SIDECAR_POKE_MAX_SUBSCRIBERS": "2"})
	a := h.start()
	if s := openStream(t, a, "", nil); s.status != http.StatusUnauthorized {
		t.Errorf("stream without credentials = %d, want 401", s.status)
	}
	s := openStream(t, a, "Bearer alice", nil)
	if s.status != 200 || s.header.Get("Content-Type") != "text/event-stream" || s.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("stream = %d %v", s.status, s.header)
	}
	s.waitOpen(t)
	// Heartbeats keep an idle stream alive.
	select {
	case e := <-s.events:
		if e != "ping" {
			t.Errorf("idle stream sent %q, want a heartbeat", e)
		}
	case <-time.After(2 * time.Second):
		t.Error("no heartbeat within 2s (SIDECAR_POKE_HEARTBEAT=100ms)")
	}
	// At most SIDECAR_POKE_MAX_SUBSCRIBERS streams. (This asserted that
	// bob then got 503; security round 3, finding 5, reversed it: a caller
	// with no stream always gets one, and the oldest stream of whoever
	// holds the most ends, with a reconnect hint.)
	second := openStream(t, a, "Bearer alice", nil)
	second.waitOpen(t)
	if n := seriesValue(t, a, "replicache_sidecar_poke_subscribers"); n != 2 {
		t.Errorf("poke_subscribers = %v, want 2", n)
	}
	bob := openStream(t, a, "Bearer bob", nil)
	if bob.status != http.StatusOK {
		t.Errorf("bob's first stream, alice holding both slots = %d, want 200", bob.status)
	}
	if e := s.next(2 * time.Second); e != "end" || s.retry.Load() < 30000 {
		t.Errorf("alice's oldest stream: %q with reconnect hint %d ms; want its end, 30 s or more", e, s.retry.Load())
	}
	// Now alice and bob hold one each: a second of alice's would not even
	// them out, so it gets 503.
	if third := openStream(t, a, "Bearer alice", nil); third.status != http.StatusServiceUnavailable {
		t.Errorf("alice's second stream with a bound of 2, bob holding the other = %d, want 503", third.status)
	}
	if n := seriesValue(t, a, "replicache_sidecar_poke_subscribers"); n != 2 {
		t.Errorf("poke_subscribers = %v, want 2", n)
	}
	second.cancel()
	proxytest.WaitFor(t, "the closed stream to be dropped", func() bool { return a.sc.core.Hub.Count() == 1 })
	again := openStream(t, a, "Bearer carol", nil)
	if again.status != 200 {
		t.Errorf("stream after one closed = %d, want 200", again.status)
	}
}
