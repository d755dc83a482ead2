package poke

import (
	"log/slog"
	"testing"
	"time"
)

// TestBusDatesAnnouncedChanges: a change another replica announces is
// dated by its clock, but never later than when this replica heard of it
// (a clock ahead is clamped, so no lag measured from it is negative); an
// announcement of an older replica, which does not say, is dated when
// heard.
func TestBusDatesAnnouncedChanges(t *testing.T) {
	t.Parallel()
	b := &Bus{log: slog.New(slog.DiscardHandler)}
	for _, tc := range []struct {
		name string
		at   time.Duration // the announced time, from now
		want time.Duration // the date given, from now (within the test's own slack)
	}{
		{"a replica's clock behind or in step: its time", -200 * time.Millisecond, -200 * time.Millisecond},
		{"a replica's clock ahead by 50 ms: clamped to now", 50 * time.Millisecond, 0},
		{"a replica's clock ahead by a minute: clamped to now", time.Minute, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			before := time.Now()
			got := b.heard(before.Add(tc.at).UnixMicro())
			after := time.Now()
			lo, hi := before.Add(tc.want).Add(-time.Microsecond), after.Add(tc.want)
			if got.Before(lo) || got.After(hi) {
				t.Errorf("dated %v; want between %v and %v", got, lo, hi)
			}
			if got.After(after) {
				t.Errorf("dated %v, after it was heard (%v)", got, after)
			}
		})
	}
	before := time.Now()
	if got := b.heard(0); got.Before(before) || got.After(time.Now()) {
		t.Errorf("an undated announcement dated %v; want when it was heard", got)
	}
}
