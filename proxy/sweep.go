package proxy

import (
	"context"
	"time"
)

// tombstoneFactor: a deleted group's tombstone is kept this many times
// SIDECAR_CLIENT_GROUP_TTL. (After it goes, a client coming back with a
// cookie of the group still gets ClientStateNotFound: its cookie names an
// order the recreated group never issued.)
const tombstoneFactor = 4

// Sweep runs the bookkeeping sweeps every interval (SIDECAR_GC_INTERVAL)
// until ctx ends: rejection records older than SIDECAR_REJECTION_TTL (for
// groups whose pushes no longer trim them), then client groups unused for
// SIDECAR_CLIENT_GROUP_TTL and tombstones past their time. Each sweep runs
// in one replica at a time.
func (s *Sidecar) Sweep(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	every(ctx, interval, func() {
		if !s.migrated.Load() {
			return
		}
		s.sweepOnce(ctx)
	})
}

func (s *Sidecar) sweepOnce(ctx context.Context) {
	if ttl := s.cfg.RejectionTTL; ttl > 0 {
		n, err := s.store.SweepRejections(ctx, ttl, 1000)
		switch {
		case err != nil:
			s.log.Warn("sweeping expired rejection records failed", "error", err)
		case n > 0:
			s.metrics.pruned.WithLabelValues("rejections").Add(float64(n))
			s.log.Info("swept expired rejection records", "deleted", n)
		}
	}
	if ttl := s.cfg.ClientGroupTTL; ttl > 0 {
		swept, err := s.store.SweepGroups(ctx, ttl, tombstoneFactor*ttl, 100)
		s.metrics.groupsDeleted.Add(float64(swept.Groups))
		s.metrics.pruned.WithLabelValues("tombstones").Add(float64(swept.Tombstones))
		switch {
		case err != nil:
			s.log.Warn("sweeping idle client groups failed", "error", err, "deleted", swept.Groups)
		case swept.Groups > 0 || swept.Tombstones > 0:
			s.log.Info("swept idle client groups", "deleted", swept.Groups, "tombstones_expired", swept.Tombstones, "ttl", ttl)
		}
	}
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
