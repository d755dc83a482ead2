package verdict

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Report is an upstream answer that shows the mapping (or an auth setting)
// does not fit the API: a redirect to one of the sidecar's own calls,
// which is never followed, a 404, 405 or 415 to a mutation, a 404 or 405 to
// the auth call.
type Report struct {
	Level  slog.Level
	Kind   string // KindMutation, KindView or KindAuth
	Mapped string // the mutator's name, the source's path as mapped, the auth path
	Method string // the call as sent
	Path   string
	Status int
	// Location is a redirect's target.
	Location string
	// Reason says what did not fit when the status does not (an applied
	// create's answer without the id the mapping names).
	Reason string
}

// Reporter counts each Report in replicache_sidecar_mapping_errors_total
// {kind} and logs it at most once a minute per mapping, kind, mutator or
// source, and status, so a broken mapping is loud without flooding the
// log. It is safe for concurrent use; a nil *Reporter reports nothing
// (`replicache-sidecar check` reports problems itself).
type Reporter struct {
	total *prometheus.CounterVec
	log   *slog.Logger

	mu   sync.Mutex
	last map[string]time.Time // when each key was last logged
}

const reportEvery = time.Minute

// NewReporter returns a Reporter counting in total (labelled by kind).
func NewReporter(total *prometheus.CounterVec, log *slog.Logger) *Reporter {
	for _, k := range []string{KindMutation, KindView, KindAuth} {
		total.WithLabelValues(k)
	}
	return &Reporter{total: total, log: log, last: map[string]time.Time{}}
}

// Report counts r and logs it unless logged lately; traceID names the
// request that met it, mappingHash the mapping in use ("" for auth
// settings).
func (m *Reporter) Report(traceID, mappingHash string, r *Report) {
	if m == nil || r == nil {
		return
	}
	m.total.WithLabelValues(r.Kind).Inc()
	key := mappingHash + "\x00" + r.Kind + "\x00" + r.Mapped + "\x00" + strconv.Itoa(r.Status)
	now := time.Now()
	m.mu.Lock()
	if t, ok := m.last[key]; ok && now.Sub(t) < reportEvery {
		m.mu.Unlock()
		return
	}
	m.last[key] = now
	if len(m.last) > 1024 { // old mappings' keys: forget what is stale
		for k, t := range m.last {
			if now.Sub(t) >= reportEvery {
				delete(m.last, k)
			}
		}
	}
	m.mu.Unlock()
	args := []any{"kind", r.Kind, "mapped", r.Mapped, "method", r.Method, "path", r.Path, "status", r.Status, "location", r.Location}
	if r.Reason != "" {
		args = append(args, "reason", r.Reason)
	}
	if traceID != "" {
		args = append(args, "trace_id", traceID) // the request that met it
	}
	if r.Status >= 300 && r.Status < 400 {
		m.log.Log(context.Background(), r.Level, "mapping error: redirects are never followed", args...)
		return
	}
	m.log.Log(context.Background(), r.Level, "likely mapping error", args...)
}
