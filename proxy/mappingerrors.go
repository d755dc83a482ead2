package proxy

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// mappingErrors reports upstream answers that show the mapping (or the
// auth settings) does not fit the API: a redirect to one of the sidecar's
// own calls, which is never followed, or a 404, 405 or 415 to a mutation.
// Each counts in replicache_sidecar_mapping_errors_total{kind}; the log line
// comes at most once a minute per mapping, kind, mutator or source, and
// status, so a broken mapping is loud without flooding the log. It is safe
// for concurrent use.
type mappingErrors struct {
	total *prometheus.CounterVec
	log   *slog.Logger

	mu   sync.Mutex
	last map[string]time.Time // when each key was last logged
}

const mappingErrorLogEvery = time.Minute

func newMappingErrors(total *prometheus.CounterVec, log *slog.Logger) *mappingErrors {
	return &mappingErrors{total: total, log: log, last: map[string]time.Time{}}
}

// report counts one such answer and logs it unless logged lately. what is
// the mutator's name or the source's path as mapped; method and path are
// the call as sent.
func (m *mappingErrors) report(traceID string, level slog.Level, mappingHash, kind, what, method, path string, status int, location string) {
	if m == nil {
		return // not counted (replicache-sidecar check reports it itself)
	}
	m.total.WithLabelValues(kind).Inc()
	key := mappingHash + "\x00" + kind + "\x00" + what + "\x00" + strconv.Itoa(status)
	now := time.Now()
	m.mu.Lock()
	if t, ok := m.last[key]; ok && now.Sub(t) < mappingErrorLogEvery {
		m.mu.Unlock()
		return
	}
	m.last[key] = now
	if len(m.last) > 1024 { // old mappings' keys: forget what is stale
		for k, t := range m.last {
			if now.Sub(t) >= mappingErrorLogEvery {
				delete(m.last, k)
			}
		}
	}
	m.mu.Unlock()
	args := []any{"kind", kind, "mapped", what, "method", method, "path", path, "status", status, "location", location}
	if traceID != "" {
		args = append(args, "trace_id", traceID) // the request that met it
	}
	if status >= 300 && status < 400 {
		m.log.Log(context.Background(), level, "mapping error: redirects are never followed", args...)
		return
	}
	m.log.Log(context.Background(), level, "likely mapping error", args...)
}
