package proxy

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPullBurstIsolation is the pool-starvation scenario: 30 pulls of
// one client group at once, its view taking 0.5 s, while another user
// pushes. It reports that push's time, the upstream view fetches and the
// failed pulls per burst. Run on the commit before the per-group turns and
// merged pulls, the same benchmark gave 5.4 s, 23.7 fetches and 6.3 failed
// pulls (503); after: about 20 ms, 1 fetch, none failed.
func BenchmarkPullBurstIsolation(b *testing.B) {
	h := newHarness(b, nil)
	sc := h.start()
	fetches := slowView(h, "alice", 500*time.Millisecond)
	var pushTime time.Duration
	var failed atomic.Int64
	id := int64(0)
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		for range 30 {
			wg.Go(func() {
				if r, _ := sc.pull(b, "alice", "g-alice", nil); r.status != 200 {
					failed.Add(1)
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
		id++
		start := time.Now()
		if r := sc.push(b, "bob", "g-bob", create("c-bob", id, fmt.Sprint("b", id))); r.status != 200 {
			b.Fatalf("bob's push = %d %s", r.status, r.raw)
		}
		pushTime += time.Since(start)
		wg.Wait()
	}
	b.ReportMetric(float64(pushTime.Nanoseconds())/float64(b.N), "other-push-ns/op")
	b.ReportMetric(float64(fetches.Load())/float64(b.N), "view-fetches/op")
	b.ReportMetric(float64(failed.Load())/float64(b.N), "failed-pulls/op")
}
