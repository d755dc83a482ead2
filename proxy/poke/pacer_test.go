package poke

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// sent is one poke a pacer sent: whose streams ("everyone", or users
// joined by commas), and when.
type sent struct {
	to string
	at time.Time
}

func render(users []string) string {
	if users == nil {
		return "everyone"
	}
	u := slices.Clone(users)
	slices.Sort(u)
	return strings.Join(u, ",")
}

func recorder() (chan sent, func([]string, time.Time)) {
	ch := make(chan sent, 1000)
	return ch, func(users []string, _ time.Time) { ch <- sent{render(users), time.Now()} }
}

// drain returns what ch holds now.
func drain(ch chan sent) []sent {
	var out []sent
	for {
		select {
		case s := <-ch:
			out = append(out, s)
		default:
			return out
		}
	}
}

func tos(ss []sent) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.to)
	}
	return out
}

// TestPacer: when one caller's pokes go out, and merged how.
func TestPacer(t *testing.T) {
	t.Parallel()
	const interval = 80 * time.Millisecond
	type poke struct {
		key   string
		users []string
	}
	tests := []struct {
		name     string
		interval time.Duration
		pokes    []poke   // made back to back
		atOnce   []string // sent during the calls
		later    []string // sent at the end of the interval
	}{
		{
			// The first poke of a quiet caller is not delayed.
			name: "a quiet caller: at once", interval: interval,
			pokes:  []poke{{"a", []string{"alice"}}},
			atOnce: []string{"alice"},
		},
		{
			// Finding 4: a flood from one caller costs one poke at once
			// and one at the end of the interval, with the last change in
			// it.
			name: "a flood: one now, one at the interval's end", interval: interval,
			pokes:  []poke{{"a", nil}, {"a", nil}, {"a", nil}, {"a", nil}, {"a", nil}},
			atOnce: []string{"everyone"}, later: []string{"everyone"},
		},
		{
			// Callers are paced apart: one's flood never delays another.
			name: "two callers: each at once", interval: interval,
			pokes:  []poke{{"a", []string{"alice"}}, {"b", []string{"bob"}}},
			atOnce: []string{"alice", "bob"},
		},
		{
			// Merged pokes reach every user any of them named, once.
			name: "users merge", interval: interval,
			pokes:  []poke{{"a", []string{"alice"}}, {"a", []string{"bob"}}, {"a", []string{"carol"}}, {"a", []string{"bob"}}},
			atOnce: []string{"alice"}, later: []string{"bob,carol"},
		},
		{
			// A poke for everyone covers any user's.
			name: "everyone absorbs users", interval: interval,
			pokes:  []poke{{"a", []string{"alice"}}, {"a", []string{"bob"}}, {"a", nil}, {"a", []string{"carol"}}},
			atOnce: []string{"alice"}, later: []string{"everyone"},
		},
		{
			// SIDECAR_POKE_CALLER_INTERVAL=0: no pacing.
			name: "no interval: all at once", interval: 0,
			pokes:  []poke{{"a", nil}, {"a", nil}, {"a", nil}},
			atOnce: []string{"everyone", "everyone", "everyone"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ch, send := recorder()
			p := NewPacer(tc.interval, send)
			start := time.Now()
			for _, pk := range tc.pokes {
				p.Poke(pk.key, pk.users, time.Now())
			}
			if got := tos(drain(ch)); !slices.Equal(got, tc.atOnce) {
				t.Errorf("sent at once: %q, want %q", got, tc.atOnce)
			}
			var later []sent
			for len(later) < len(tc.later) {
				select {
				case s := <-ch:
					later = append(later, s)
				case <-time.After(10 * interval):
					t.Fatalf("sent later: %q, want %q", tos(later), tc.later)
				}
			}
			if got := tos(later); !slices.Equal(got, tc.later) {
				t.Errorf("sent later: %q, want %q", got, tc.later)
			}
			for _, s := range later {
				if d := s.at.Sub(start); d < tc.interval*9/10 {
					t.Errorf("a merged poke went out after %v, before the %v interval ended", d, tc.interval)
				}
			}
			// Then nothing more, and the callers are forgotten: the next
			// poke of a quiet caller goes out at once again.
			deadline := time.Now().Add(10 * interval)
			for p.Callers() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d callers still held after a quiet interval", p.Callers())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if extra := drain(ch); len(extra) > 0 {
				t.Errorf("sent %q more", tos(extra))
			}
			p.Poke("a", []string{"alice"}, time.Now())
			if got := tos(drain(ch)); !slices.Equal(got, []string{"alice"}) {
				t.Errorf("a quiet caller's next poke: sent at once %q, want [alice]", got)
			}
		})
	}
}

// TestPacerSteadyFlood: a caller poking every 5 ms for 400 ms, with an
// interval of 80 ms, costs about a poke per interval, and the last poke
// goes out after the last call.
func TestPacerSteadyFlood(t *testing.T) {
	t.Parallel()
	ch, send := recorder()
	p := NewPacer(80*time.Millisecond, send)
	var last time.Time
	for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		p.Poke("mallory", nil, time.Now())
		last = time.Now()
	}
	var got []sent
	for {
		s, ok := nextSent(ch, 500*time.Millisecond)
		if !ok {
			break
		}
		got = append(got, s)
	}
	t.Logf("%d pokes sent for a 400 ms flood", len(got))
	if len(got) < 4 || len(got) > 7 {
		t.Errorf("%d pokes sent; want about one per 80 ms interval (4 to 7)", len(got))
	}
	if len(got) > 0 && got[len(got)-1].at.Before(last) {
		t.Error("nothing went out after the last poke: its change would be lost")
	}
}

func nextSent(ch chan sent, within time.Duration) (sent, bool) {
	select {
	case s := <-ch:
		return s, true
	case <-time.After(within):
		return sent{}, false
	}
}

// TestPacerFlush: at shutdown what is merged goes out at once, and nothing
// is left to go out later.
func TestPacerFlush(t *testing.T) {
	t.Parallel()
	ch, send := recorder()
	p := NewPacer(time.Hour, send)
	p.Poke("a", []string{"alice"}, time.Now())
	p.Poke("a", []string{"bob"}, time.Now())
	p.Poke("b", []string{"carol"}, time.Now())
	if got := tos(drain(ch)); !slices.Equal(got, []string{"alice", "carol"}) {
		t.Fatalf("sent at once: %q", got)
	}
	p.Flush()
	if got := tos(drain(ch)); !slices.Equal(got, []string{"bob"}) {
		t.Errorf("flushed: %q, want [bob]", got)
	}
	if n := p.Callers(); n != 0 {
		t.Errorf("%d callers held after Flush", n)
	}
}

// TestPacerCarriesWhenTheChangeHappened: a poke goes out dated by its
// change; pokes merged within an interval go out dated by the earliest of
// them (the change that waited longest), whatever order they came in.
func TestPacerCarriesWhenTheChangeHappened(t *testing.T) {
	t.Parallel()
	type dated struct {
		to string
		at time.Time
	}
	ch := make(chan dated, 10)
	p := NewPacer(time.Hour, func(users []string, at time.Time) { ch <- dated{render(users), at} })
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	p.Poke("a", []string{"alice"}, t0)
	if got := <-ch; got.at != t0 {
		t.Errorf("the first poke went out dated %v, want %v", got.at, t0)
	}
	p.Poke("a", []string{"bob"}, t0.Add(3*time.Second))
	p.Poke("a", []string{"carol"}, t0.Add(time.Second)) // came later, happened earlier
	p.Poke("a", nil, t0.Add(2*time.Second))
	p.Flush()
	if got := <-ch; got.to != "everyone" || got.at != t0.Add(time.Second) {
		t.Errorf("merged pokes went out as %+v; want everyone's, dated by the earliest change (%v)", got, t0.Add(time.Second))
	}
}
