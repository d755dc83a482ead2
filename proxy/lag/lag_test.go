package lag

import (
	"slices"
	"testing"
	"time"
)

// recorder collects observations.
type recorder struct{ seen []float64 }

func (r *recorder) observe(s float64) { r.seen = append(r.seen, s) }

// TestTracker: each case is a sequence of steps on one tracker, and the
// observations it must make (in seconds, exactly: the steps give every
// time).
func TestTracker(t *testing.T) {
	t.Parallel()
	t0 := time.Now().Add(-time.Hour) // every time in the past: Changed clamps the future
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type step func(tr *Tracker)
	open := func(group, user string) step { return func(tr *Tracker) { tr.Open(group, user) } }
	changed := func(ms int, users ...string) step { return func(tr *Tracker) { tr.Changed(users, at(ms)) } }
	pulled := func(group, user string, before, issued int64, readMS, doneMS int) step {
		return func(tr *Tracker) { tr.Answered(group, user, before, issued, at(readMS), at(doneMS)) }
	}
	for _, tc := range []struct {
		name  string
		steps []step
		want  []float64
	}{
		{
			// The common case: the stream's client pulled once (the
			// replica knows its cookie order), a change, the poked pull
			// reads after it: completion − change.
			name:  "a poked pull answers the change",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), changed(100), pulled("g", "alice", 1, 2, 150, 250)},
			want:  []float64{0.150},
		},
		{
			// A pull that read before the change does not answer it, the
			// next one does; a pull after that has nothing to observe.
			name: "a pull that read before the change does not answer it",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), changed(100),
				pulled("g", "alice", 1, 2, 90, 120), pulled("g", "alice", 2, 3, 130, 200), pulled("g", "alice", 3, 4, 300, 400)},
			want: []float64{0.100},
		},
		{
			// Changes answered by one pull: one observation, from the
			// earliest, whatever order they were heard in.
			name: "several changes, one pull: the earliest",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), changed(200), changed(100), changed(300),
				pulled("g", "alice", 1, 2, 400, 500)},
			want: []float64{0.400},
		},
		{
			// Scope user: bob's change does not poke alice's group.
			name:  "a change for other users",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), changed(100, "bob"), pulled("g", "alice", 1, 2, 150, 250)},
			want:  nil,
		},
		{
			name:  "a change for the stream's user",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), changed(100, "bob", "alice"), pulled("g", "alice", 1, 2, 150, 250)},
			want:  []float64{0.150},
		},
		{
			// Mallory's stream names alice's group: her pulls of it would
			// be refused, alice's pulls do not see mallory's entry.
			name:  "another user's stream naming the group",
			steps: []step{open("g", "mallory"), pulled("g", "mallory", 0, 1, 0, 10), changed(100), pulled("g", "alice", 1, 2, 150, 250)},
			want:  nil,
		},
		{
			// The client pulled through another replica (the order moved
			// past what this one issued): that pull may have answered the
			// change; forgotten, not observed late.
			name: "answered elsewhere",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), changed(100),
				pulled("g", "alice", 2, 3, 60_000, 60_100)},
			want: nil,
		},
		{
			// A change before any pull this replica answered since the
			// stream opened: whether one elsewhere answered it is unknown.
			name:  "a change before the first pull here",
			steps: []step{open("g", "alice"), changed(100), pulled("g", "alice", 5, 6, 150, 250), changed(300), pulled("g", "alice", 6, 7, 350, 400)},
			want:  []float64{0.100},
		},
		{
			// Pulls answered here out of order (one locked before the
			// other and finished after it): no pull elsewhere.
			name: "pulls of this replica finishing out of order",
			steps: []step{open("g", "alice"), pulled("g", "alice", 0, 1, 0, 10), pulled("g", "alice", 2, 3, 20, 30), changed(100),
				pulled("g", "alice", 1, 2, 5, 150), pulled("g", "alice", 3, 4, 200, 300)},
			want: []float64{0.200},
		},
		{
			// The group's last stream ends: its pending change goes, and
			// a later pull observes nothing.
			name: "the stream ends",
			steps: []step{func(tr *Tracker) {
				stop := tr.Open("g", "alice")
				tr.Answered("g", "alice", 0, 1, at(0), at(10))
				tr.Changed(nil, at(100))
				stop()
				stop() // twice: nothing more
				tr.Open("g", "alice")
				tr.Answered("g", "alice", 1, 2, at(150), at(250))
			}},
			want: nil,
		},
		{
			// A stream without a group is not tracked.
			name:  "no group",
			steps: []step{open("", "alice"), pulled("", "alice", 0, 1, 0, 10), changed(100), pulled("", "alice", 1, 2, 150, 250)},
			want:  nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var r recorder
			tr := New(r.observe)
			for _, s := range tc.steps {
				s(tr)
			}
			if !slices.EqualFunc(r.seen, tc.want, func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }) {
				t.Errorf("observed %v, want %v", r.seen, tc.want)
			}
		})
	}
}

// TestTrackerClampsTheFuture: a change dated after now (a clock ahead) is
// taken as now, so its lag is never negative.
func TestTrackerClampsTheFuture(t *testing.T) {
	t.Parallel()
	var r recorder
	tr := New(r.observe)
	tr.Open("g", "u")
	tr.Answered("g", "u", 0, 1, time.Now(), time.Now())
	before := time.Now()
	tr.Changed(nil, before.Add(time.Hour))
	tr.Answered("g", "u", 1, 2, time.Now(), time.Now())
	if len(r.seen) != 1 || r.seen[0] < 0 || r.seen[0] > time.Since(before).Seconds() {
		t.Errorf("observed %v; want one lag between 0 and the test's own %v", r.seen, time.Since(before))
	}
}

// TestTrackerIsBoundedByItsStreams: entries live only while their streams
// do; many groups opened and closed leave nothing behind.
func TestTrackerIsBoundedByItsStreams(t *testing.T) {
	t.Parallel()
	tr := New(func(float64) {})
	var stops []func()
	for i := range 1000 {
		stops = append(stops, tr.Open(string(rune('a'+i%26))+string(rune(i)), "u"))
		stops = append(stops, tr.Open(string(rune('a'+i%26))+string(rune(i)), "u"))
	}
	tr.Changed(nil, time.Now())
	if n := tr.Streams("a"+string(rune(0)), "u"); n != 2 {
		t.Errorf("streams of one group = %d, want 2", n)
	}
	for _, stop := range stops {
		stop()
	}
	if len(tr.entries) != 0 || len(tr.byUser) != 0 {
		t.Errorf("after every stream ended: %d entries, %d users held", len(tr.entries), len(tr.byUser))
	}
}
