package proxy

import (
	"context"
	"time"
)

// SweepRejections deletes rejection records older than SIDECAR_REJECTION_TTL
// every interval (SIDECAR_GC_INTERVAL) until ctx ends, for the groups whose
// pushes no longer trim them. One replica sweeps at a time.
func (s *Sidecar) SweepRejections(ctx context.Context, interval time.Duration) {
	if interval <= 0 || s.cfg.RejectionTTL <= 0 {
		return
	}
	every(ctx, interval, func() {
		if !s.migrated.Load() {
			return
		}
		n, err := s.store.SweepRejections(ctx, s.cfg.RejectionTTL, 1000)
		switch {
		case err != nil:
			s.log.Warn("sweeping expired rejection records failed", "error", err)
		case n > 0:
			s.metrics.pruned.WithLabelValues("rejections").Add(float64(n))
			s.log.Info("swept expired rejection records", "deleted", n)
		}
	})
}

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}
