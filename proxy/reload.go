package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"time"
)

// WatchMapping re-reads the mapping file every interval until ctx ends.
// When its content changes, the new mapping is validated and swapped in
// atomically for new requests (requests already running keep the mapping
// they started with). An invalid file keeps the old mapping, is logged, and
// counts in replicache_sidecar_mapping_reload_errors_total once per distinct
// content.
//
// Polling rather than file events: Kubernetes updates a mounted ConfigMap
// by swapping a symlink, which file watchers report inconsistently, and a
// small file read every few seconds costs nothing.
func (s *Sidecar) WatchMapping(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	lastBad := ""
	every(ctx, interval, func() {
		raw, err := os.ReadFile(s.cfg.MappingFile)
		if err != nil {
			if lastBad != "unreadable" {
				lastBad = "unreadable"
				s.metrics.mappingReloadErrors.Inc()
				s.log.Error("mapping file unreadable; keeping the loaded mapping", "file", s.cfg.MappingFile, "error", err)
			}
			return
		}
		sum := sha256.Sum256(raw)
		hash := hex.EncodeToString(sum[:])
		if hash == s.mapping().Hash || hash == lastBad {
			return
		}
		m, err := parseMapping(raw)
		if err != nil {
			lastBad = hash
			s.metrics.mappingReloadErrors.Inc()
			s.log.Error("new mapping is invalid; keeping the loaded mapping", "file", s.cfg.MappingFile,
				"sha256", hash, "loaded_sha256", s.mapping().Hash, "error", err)
			return
		}
		lastBad = ""
		s.useMapping(m)
		s.log.Info("mapping reloaded", "file", s.cfg.MappingFile, "sha256", m.Hash,
			"mutators", len(m.Mutators.Names()), "view_sources", m.View.Len())
	})
}
