// Package metrics holds the sidecar's own Prometheus series and the label
// values they take: small fixed sets (endpoints, outcomes, status codes,
// mapped mutator names, problem codes), never ids or raw paths.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Namespace prefixes every series the sidecar exports.
const Namespace = "replicache_sidecar"

// Label values. Every label of the sidecar's own series takes its values
// from these small fixed sets (or from the mapping's mutator names, and
// problem.Codes), never from ids or raw paths.
const (
	// endpoint: what a request is for.
	EndpointPush       = "push"
	EndpointPull       = "pull"
	EndpointPoke       = "poke"
	EndpointInvalidate = "invalidate"
	EndpointProxy      = "proxy"

	// bookkeeping_pruned_total{what}
	PrunedClients    = "clients"
	PrunedRejections = "rejections"
	PrunedTombstones = "tombstones"

	// conditional_requests_total{result}
	ConditionalHit  = "hit"
	ConditionalMiss = "miss"

	// poke_notifications_total{source}
	PokeFromPush        = "push"
	PokeFromPassthrough = "passthrough"
	PokeFromInvalidate  = "invalidate"

	// poke_streams_ended_total{reason}; the hub's own reasons are
	// poke.Evicted and poke.Expired.
	StreamEndDisconnected = "disconnected" // the client went away, or its connection died
	StreamEndWriteFailed  = "write_failed" // a write (a heartbeat, a poke) failed or hit its deadline
	StreamEndShutdown     = "shutdown"

	// poke_passthrough_skipped_total{reason}
	SkippedUnidentified = "unidentified"
	SkippedBusy         = "busy"

	// pull_patch_ops{op}
	OpClear = "clear"
	OpPut   = "put"
	OpDel   = "del"

	// the mutator label of a name the mapping does not have
	UnmappedMutator = "unmapped"

	// view_requests_total{read}, view_read_bytes_total{read}
	ReadFull  = "full"
	ReadDelta = "delta"
)

// Endpoints are the endpoint label's values.
var Endpoints = []string{EndpointPush, EndpointPull, EndpointPoke, EndpointInvalidate, EndpointProxy}

// Set is the sidecar's own series. Label values come from small fixed
// sets: Endpoints, outcomes, status codes and mapped mutator names (any other
// name counts as "unmapped"), never ids or raw paths.
type Set struct {
	Requests        *prometheus.CounterVec
	RequestErrors   *prometheus.CounterVec
	DatabaseUp      prometheus.Gauge
	RequestDuration *prometheus.HistogramVec
	Mutations       *prometheus.CounterVec
	PullEntries     prometheus.Histogram
	PullBytes       prometheus.Histogram

	MappingReloadErrors prometheus.Counter
	MappingInfo         *prometheus.GaugeVec
	MappingErrors       *prometheus.CounterVec
	Pruned              *prometheus.CounterVec
	BudgetRefusals      *prometheus.CounterVec
	GroupBusy           prometheus.Counter
	PullsMerged         prometheus.Counter
	PatchOps            *prometheus.HistogramVec
	RecordBytes         prometheus.Histogram
	RecordEvictions     prometheus.Counter
	RecordStorage       prometheus.Gauge
	Conditional         *prometheus.CounterVec
	ViewReads           *prometheus.CounterVec
	ViewReadBytes       *prometheus.CounterVec
	FilterIgnored       *prometheus.CounterVec
	GroupsDeleted       prometheus.Counter
	Pokes               prometheus.Counter
	PokeNotifications   *prometheus.CounterVec
	PokeStreamsEnded    *prometheus.CounterVec
	PokeSkipped         *prometheus.CounterVec
	ChangeLag           prometheus.Histogram
	reg                 prometheus.Registerer
}

func New(reg prometheus.Registerer, mutatorNames []string, mem *budget.Budget, turns *gate.Gate) *Set {
	mutatorNames = append([]string(nil), mutatorNames...)
	m := &Set{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "requests_total",
			Help: "Requests answered, by endpoint (push, pull, poke, invalidate, proxy) and HTTP status code.",
		}, []string{"endpoint", "code"}),
		RequestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "request_errors_total",
			Help: "The sidecar's own error answers, by endpoint and error code (the \"error\" member of the answer: MappingError, ViewTooLarge, DatabaseUnavailable, …).",
		}, []string{"endpoint", "code"}),
		DatabaseUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "database_up",
			Help: "1 while the sidecar's own Postgres answers (and holds its schema), 0 while it is away: pushes and pulls then answer 503, the pass-through keeps serving.",
		}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "request_duration_seconds",
			Help:    "Time to answer a request, by endpoint.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"endpoint"}),
		Mutations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "mutations_total",
			Help: "Pushed mutations by mutator and outcome (applied, duplicate, rejected, transient, abandoned: given up on after repeated retryable answers).",
		}, []string{"mutator", "outcome"}),
	}
	m.PullEntries = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "pull_patch_entries",
		Help:    "Entries (put operations) in each pull response.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 9), // 1 … 65536
	})
	m.PullBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "pull_patch_bytes",
		Help:    "Size of each pull response body in bytes.",
		Buckets: prometheus.ExponentialBuckets(256, 4, 10), // 256 B … 64 MiB
	})
	m.MappingReloadErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "mapping_reload_errors_total",
		Help: "Changed mapping files that could not be loaded (the previous mapping stays in use).",
	})
	m.MappingInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "mapping_info",
		Help: "The mapping in use: 1, labelled with the SHA-256 of its file.",
	}, []string{"sha256"})
	m.MappingErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "mapping_errors_total",
		Help: "Upstream answers that show the mapping does not fit the API, by kind of call (mutation, view, auth): redirects, and 404/405/415 to mutations.",
	}, []string{"kind"})
	m.Pruned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "bookkeeping_pruned_total",
		Help: "Bookkeeping rows deleted to stay within their caps: clients (idle ones, SIDECAR_MAX_CLIENTS_PER_GROUP) and rejections (SIDECAR_MAX_REJECTIONS_PER_GROUP, SIDECAR_REJECTION_TTL).",
	}, []string{"what"})
	for _, what := range []string{PrunedClients, PrunedRejections, PrunedTombstones} {
		m.Pruned.WithLabelValues(what)
	}
	m.BudgetRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "inflight_refusals_total",
		Help: "Pushes and pulls answered 503 because the in-flight byte budget (SIDECAR_MAX_INFLIGHT_VIEW_BYTES) stayed spent, by endpoint.",
	}, []string{"endpoint"})
	m.BudgetRefusals.WithLabelValues(EndpointPush)
	m.BudgetRefusals.WithLabelValues(EndpointPull)
	m.GroupBusy = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "group_busy_total",
		Help: "Pushes and pulls answered 503 GroupBusy: too many waiting for their client group (SIDECAR_MAX_WAITING_PER_GROUP), or no turn within SIDECAR_DB_LOCK_TIMEOUT.",
	})
	m.PullsMerged = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "pulls_merged_total",
		Help: "Pulls answered from another pull's view fetch (same client group, user and credentials).",
	})
	m.PatchOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "pull_patch_ops",
		Help:    "Patch operations per pull answer, by op: clear (1 for a reset, 0 for a diff), put and del. An unchanged diff answers none.",
		Buckets: []float64{0, 1, 10, 100, 1000, 10000, 100000},
	}, []string{"op"})
	for _, op := range []string{OpClear, OpPut, OpDel} {
		m.PatchOps.WithLabelValues(op)
	}
	m.RecordBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "view_record_bytes",
		Help:    "Logical size of a client group's view record after a pull in diff mode (keys, hashes and versions of its entries and remembered removals).",
		Buckets: prometheus.ExponentialBuckets(256, 4, 10), // 256 B … 64 MiB
	})
	m.RecordEvictions = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "view_record_evictions_total",
		Help: "View records evicted to keep a user's within SIDECAR_MAX_VIEW_RECORDS_PER_USER groups (the least recently used; each such group answers its next pull with a reset).",
	})
	m.RecordStorage = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "view_record_storage_bytes",
		Help: "Bytes the view records of every client group take in the sidecar's Postgres (entries, version tags, remembered pages and holders, with indexes and TOAST), as Postgres reports them; read at start and every SIDECAR_GC_INTERVAL.",
	})
	m.Conditional = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "conditional_requests_total",
		Help: "View pages asked for conditionally (If-None-Match / If-Modified-Since), by result: hit (304, not downloaded) or miss.",
	}, []string{"result"})
	m.Conditional.WithLabelValues(ConditionalHit)
	m.Conditional.WithLabelValues(ConditionalMiss)
	m.ViewReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "view_requests_total",
		Help: "Upstream requests (pages) of view sources, by source (its path as mapped) and read (full, delta): what pulls ask of the API.",
	}, []string{"source", "read"})
	m.ViewReadBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "view_read_bytes_total",
		Help: "Bytes of view pages read from the upstream, by source (its path as mapped) and read (full, delta).",
	}, []string{"source", "read"})
	m.FilterIgnored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "view_filter_ignored_total",
		Help: "Delta reads whose answer held items older than the bound asked for, by source: the API does not honour the source's changes filter (each such read costs a full one).",
	}, []string{"source"})
	m.GroupsDeleted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "client_groups_deleted_total",
		Help: "Client groups deleted by the sweep after SIDECAR_CLIENT_GROUP_TTL unused (their clients then get ClientStateNotFound).",
	})
	m.Pokes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "pokes_total",
		Help: "Poke events written to poke streams.",
	})
	m.PokeNotifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "poke_notifications_total",
		Help: "Writes that poked subscribers, by source: push (applied or rejected mutations), passthrough (a 2xx write through the pass-through), invalidate (the hook).",
	}, []string{"source"})
	for _, src := range []string{PokeFromPush, PokeFromPassthrough, PokeFromInvalidate} {
		m.PokeNotifications.WithLabelValues(src)
	}
	reg.MustRegister(m.ViewReads, m.ViewReadBytes, m.FilterIgnored)
	m.PokeStreamsEnded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "poke_streams_ended_total",
		Help: "Poke streams that ended, by reason: disconnected (the client went away or its connection died), write_failed (a write failed or hit its deadline), evicted (ended to make room for another caller), lifetime (SIDECAR_POKE_MAX_LIFETIME), shutdown.",
	}, []string{"reason"})
	for _, r := range []string{StreamEndDisconnected, StreamEndWriteFailed, string(poke.Evicted), string(poke.Expired), StreamEndShutdown} {
		m.PokeStreamsEnded.WithLabelValues(r)
	}
	m.PokeSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "poke_passthrough_skipped_total",
		Help: "2xx writes through the pass-through that poked nobody, by reason: unidentified (the sidecar could not tell who wrote: SIDECAR_POKE_PASSTHROUGH=identified, or scope user), busy (too many auth calls for writes in flight).",
	}, []string{"reason"})
	m.PokeSkipped.WithLabelValues(SkippedUnidentified)
	m.PokeSkipped.WithLabelValues(SkippedBusy)
	m.ChangeLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "change_lag_seconds",
		Help: "From a change the sidecar knows of (a push's commit, a pass-through write, an invalidate; another replica's, dated by its clock but never later than when this replica heard of it) to the first pull that answers it, per client group poked whose stream (naming its clientGroupID) is open in this replica and whose pull this replica answers.",
		// Sub-second steps around a typical objective (p99 < 1 s), then
		// the pacing interval, the fallback pull interval and beyond.
		Buckets: []float64{.025, .05, .1, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60},
	})
	reg.MustRegister(m.ChangeLag)
	reg.MustRegister(m.PatchOps, m.RecordBytes, m.RecordEvictions, m.RecordStorage, m.Conditional, m.GroupsDeleted, m.Pokes, m.PokeNotifications, m.PokeStreamsEnded, m.PokeSkipped)
	m.reg = reg
	reg.MustRegister(m.GroupBusy, m.PullsMerged, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "group_waiting",
		Help: "Pushes and pulls waiting for their client group's turn in this process (holding no connection).",
	}, func() float64 { return float64(turns.Waiting()) }))
	reg.MustRegister(m.BudgetRefusals,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "inflight_bytes",
			Help: "Request and view bytes held by pushes and pulls now: one budget for both (SIDECAR_MAX_INFLIGHT_VIEW_BYTES).",
		}, func() float64 { return float64(mem.InUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "inflight_limit_bytes",
			Help: "The in-flight byte budget's size (SIDECAR_MAX_INFLIGHT_VIEW_BYTES, or derived from GOMEMLIMIT).",
		}, func() float64 { return float64(mem.Limit()) }))
	reg.MustRegister(m.Requests, m.RequestErrors, m.DatabaseUp, m.RequestDuration, m.Mutations, m.PullEntries, m.PullBytes, m.MappingReloadErrors, m.MappingInfo,
		m.MappingErrors, m.Pruned)
	for _, e := range Endpoints {
		m.RequestDuration.WithLabelValues(e)
	}
	for _, e := range []string{EndpointPush, EndpointPull} {
		for _, c := range problem.Codes {
			m.RequestErrors.WithLabelValues(e, string(c))
		}
	}
	m.PrecreateMutators(append(mutatorNames, UnmappedMutator))
	return m
}

// PrecreateSources makes the view sources' series read 0 rather than be
// missing.
func (m *Set) PrecreateSources(infos []clientview.SourceInfo) {
	for _, s := range infos {
		for _, read := range []string{ReadFull, ReadDelta} {
			m.ViewReads.WithLabelValues(s.Path, read)
			m.ViewReadBytes.WithLabelValues(s.Path, read)
		}
		m.FilterIgnored.WithLabelValues(s.Path)
	}
}

// PrecreateMutators makes every outcome series of names read 0 rather than
// be missing.
func (m *Set) PrecreateMutators(names []string) {
	for _, name := range names {
		for _, o := range verdict.MutationLabels {
			m.Mutations.WithLabelValues(name, o)
		}
	}
}

// Instrument counts and times every request h answers as endpoint.
func (m *Set) Instrument(endpoint string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &StatusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		code := sw.Status
		if code == 0 {
			code = http.StatusOK
		}
		m.Requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
		if endpoint != EndpointPoke || code != http.StatusOK { // a stream's lifetime is no latency
			m.RequestDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
		}
	})
}

// StatusWriter remembers the status code written through it.
type StatusWriter struct {
	http.ResponseWriter
	Status int // the status written, 0 before any
}

func (s *StatusWriter) WriteHeader(code int) {
	if s.Status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) { // not an informational 1xx
		s.Status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *StatusWriter) Write(b []byte) (int, error) {
	if s.Status == 0 {
		s.Status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// BuildInfo registers replicache_sidecar_build_info: 1, labelled with the
// build's version, VCS revision and Go version.
func (m *Set) BuildInfo(version, revision string) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "1, labelled with the running build's version, VCS revision and Go version.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(version, revision, runtime.Version()).Set(1)
	m.reg.MustRegister(g)
}

// PokeSubscribers registers the gauge of open poke streams.
func (m *Set) PokeSubscribers(count func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "poke_subscribers",
		Help: "Poke streams open in this process.",
	}, func() float64 { return float64(count()) }))
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (s *StatusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
