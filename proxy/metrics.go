package proxy

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

const namespace = "replicache_sidecar"

// Label values. Every label of the sidecar's own series takes its values
// from these small fixed sets (or from the mapping's mutator names, and
// problem.Codes), never from ids or raw paths.
const (
	// endpoint: what a request is for.
	endpointPush       = "push"
	endpointPull       = "pull"
	endpointPoke       = "poke"
	endpointInvalidate = "invalidate"
	endpointProxy      = "proxy"

	// bookkeeping_pruned_total{what}
	prunedClients    = "clients"
	prunedRejections = "rejections"
	prunedTombstones = "tombstones"

	// conditional_requests_total{result}
	conditionalHit  = "hit"
	conditionalMiss = "miss"

	// poke_notifications_total{source}
	pokeFromPush        = "push"
	pokeFromPassthrough = "passthrough"
	pokeFromInvalidate  = "invalidate"

	// poke_streams_ended_total{reason}; the hub's own reasons are
	// poke.Evicted and poke.Expired.
	streamEndDisconnected = "disconnected" // the client went away, or its connection died
	streamEndWriteFailed  = "write_failed" // a write (a heartbeat, a poke) failed or hit its deadline
	streamEndShutdown     = "shutdown"

	// poke_passthrough_skipped_total{reason}
	skippedUnidentified = "unidentified"
	skippedBusy         = "busy"

	// pull_patch_ops{op}
	opClear = "clear"
	opPut   = "put"
	opDel   = "del"

	// the mutator label of a name the mapping does not have
	unmappedMutator = "unmapped"

	// view_requests_total{read}, view_read_bytes_total{read}
	readFull  = "full"
	readDelta = "delta"
)

var endpoints = []string{endpointPush, endpointPull, endpointPoke, endpointInvalidate, endpointProxy}

// metrics are the sidecar's own series. Label values come from small fixed
// sets: endpoints, outcomes, status codes and mapped mutator names (any other
// name counts as "unmapped"), never ids or raw paths.
type metrics struct {
	requests        *prometheus.CounterVec
	requestErrors   *prometheus.CounterVec
	databaseUp      prometheus.Gauge
	requestDuration *prometheus.HistogramVec
	mutations       *prometheus.CounterVec
	pullEntries     prometheus.Histogram
	pullBytes       prometheus.Histogram

	mappingReloadErrors prometheus.Counter
	mappingInfo         *prometheus.GaugeVec
	mappingErrors       *prometheus.CounterVec
	pruned              *prometheus.CounterVec
	budgetRefusals      *prometheus.CounterVec
	groupBusy           prometheus.Counter
	pullsMerged         prometheus.Counter
	patchOps            *prometheus.HistogramVec
	recordBytes         prometheus.Histogram
	recordEvictions     prometheus.Counter
	recordStorage       prometheus.Gauge
	conditional         *prometheus.CounterVec
	viewReads           *prometheus.CounterVec
	viewReadBytes       *prometheus.CounterVec
	filterIgnored       *prometheus.CounterVec
	groupsDeleted       prometheus.Counter
	pokes               prometheus.Counter
	pokeNotifications   *prometheus.CounterVec
	pokeStreamsEnded    *prometheus.CounterVec
	pokeSkipped         *prometheus.CounterVec
	changeLag           prometheus.Histogram
	reg                 prometheus.Registerer
}

func newMetrics(reg prometheus.Registerer, mutatorNames []string, mem *budget.Budget, turns *gate.Gate) *metrics {
	mutatorNames = append([]string(nil), mutatorNames...)
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Requests answered, by endpoint (push, pull, poke, invalidate, proxy) and HTTP status code.",
		}, []string{"endpoint", "code"}),
		requestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "request_errors_total",
			Help: "The sidecar's own error answers, by endpoint and error code (the \"error\" member of the answer: MappingError, ViewTooLarge, DatabaseUnavailable, …).",
		}, []string{"endpoint", "code"}),
		databaseUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "database_up",
			Help: "1 while the sidecar's own Postgres answers (and holds its schema), 0 while it is away: pushes and pulls then answer 503, the pass-through keeps serving.",
		}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time to answer a request, by endpoint.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"endpoint"}),
		mutations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "mutations_total",
			Help: "Pushed mutations by mutator and outcome (applied, duplicate, rejected, transient, abandoned: given up on after repeated retryable answers).",
		}, []string{"mutator", "outcome"}),
	}
	m.pullEntries = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "pull_patch_entries",
		Help:    "Entries (put operations) in each pull response.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 9), // 1 … 65536
	})
	m.pullBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "pull_patch_bytes",
		Help:    "Size of each pull response body in bytes.",
		Buckets: prometheus.ExponentialBuckets(256, 4, 10), // 256 B … 64 MiB
	})
	m.mappingReloadErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "mapping_reload_errors_total",
		Help: "Changed mapping files that could not be loaded (the previous mapping stays in use).",
	})
	m.mappingInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "mapping_info",
		Help: "The mapping in use: 1, labelled with the SHA-256 of its file.",
	}, []string{"sha256"})
	m.mappingErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "mapping_errors_total",
		Help: "Upstream answers that show the mapping does not fit the API, by kind of call (mutation, view, auth): redirects, and 404/405/415 to mutations.",
	}, []string{"kind"})
	m.pruned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "bookkeeping_pruned_total",
		Help: "Bookkeeping rows deleted to stay within their caps: clients (idle ones, SIDECAR_MAX_CLIENTS_PER_GROUP) and rejections (SIDECAR_MAX_REJECTIONS_PER_GROUP, SIDECAR_REJECTION_TTL).",
	}, []string{"what"})
	for _, what := range []string{prunedClients, prunedRejections, prunedTombstones} {
		m.pruned.WithLabelValues(what)
	}
	m.budgetRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "inflight_refusals_total",
		Help: "Pushes and pulls answered 503 because the in-flight byte budget (SIDECAR_MAX_INFLIGHT_VIEW_BYTES) stayed spent, by endpoint.",
	}, []string{"endpoint"})
	m.budgetRefusals.WithLabelValues(endpointPush)
	m.budgetRefusals.WithLabelValues(endpointPull)
	m.groupBusy = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "group_busy_total",
		Help: "Pushes and pulls answered 503 GroupBusy: too many waiting for their client group (SIDECAR_MAX_WAITING_PER_GROUP), or no turn within SIDECAR_DB_LOCK_TIMEOUT.",
	})
	m.pullsMerged = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "pulls_merged_total",
		Help: "Pulls answered from another pull's view fetch (same client group, user and credentials).",
	})
	m.patchOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "pull_patch_ops",
		Help:    "Patch operations per pull answer, by op: clear (1 for a reset, 0 for a diff), put and del. An unchanged diff answers none.",
		Buckets: []float64{0, 1, 10, 100, 1000, 10000, 100000},
	}, []string{"op"})
	for _, op := range []string{opClear, opPut, opDel} {
		m.patchOps.WithLabelValues(op)
	}
	m.recordBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "view_record_bytes",
		Help:    "Logical size of a client group's view record after a pull in diff mode (keys, hashes and versions of its entries and remembered removals).",
		Buckets: prometheus.ExponentialBuckets(256, 4, 10), // 256 B … 64 MiB
	})
	m.recordEvictions = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "view_record_evictions_total",
		Help: "View records evicted to keep a user's within SIDECAR_MAX_VIEW_RECORDS_PER_USER groups (the least recently used; each such group answers its next pull with a reset).",
	})
	m.recordStorage = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "view_record_storage_bytes",
		Help: "Bytes the view records of every client group take in the sidecar's Postgres (entries, version tags, remembered pages and holders, with indexes and TOAST), as Postgres reports them; read at start and every SIDECAR_GC_INTERVAL.",
	})
	m.conditional = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "conditional_requests_total",
		Help: "View pages asked for conditionally (If-None-Match / If-Modified-Since), by result: hit (304, not downloaded) or miss.",
	}, []string{"result"})
	m.conditional.WithLabelValues(conditionalHit)
	m.conditional.WithLabelValues(conditionalMiss)
	m.viewReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "view_requests_total",
		Help: "Upstream requests (pages) of view sources, by source (its path as mapped) and read (full, delta): what pulls ask of the API.",
	}, []string{"source", "read"})
	m.viewReadBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "view_read_bytes_total",
		Help: "Bytes of view pages read from the upstream, by source (its path as mapped) and read (full, delta).",
	}, []string{"source", "read"})
	m.filterIgnored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "view_filter_ignored_total",
		Help: "Delta reads whose answer held items older than the bound asked for, by source: the API does not honour the source's changes filter (each such read costs a full one).",
	}, []string{"source"})
	m.groupsDeleted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "client_groups_deleted_total",
		Help: "Client groups deleted by the sweep after SIDECAR_CLIENT_GROUP_TTL unused (their clients then get ClientStateNotFound).",
	})
	m.pokes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "pokes_total",
		Help: "Poke events written to poke streams.",
	})
	m.pokeNotifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "poke_notifications_total",
		Help: "Writes that poked subscribers, by source: push (applied or rejected mutations), passthrough (a 2xx write through the pass-through), invalidate (the hook).",
	}, []string{"source"})
	for _, src := range []string{pokeFromPush, pokeFromPassthrough, pokeFromInvalidate} {
		m.pokeNotifications.WithLabelValues(src)
	}
	reg.MustRegister(m.viewReads, m.viewReadBytes, m.filterIgnored)
	m.pokeStreamsEnded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "poke_streams_ended_total",
		Help: "Poke streams that ended, by reason: disconnected (the client went away or its connection died), write_failed (a write failed or hit its deadline), evicted (ended to make room for another caller), lifetime (SIDECAR_POKE_MAX_LIFETIME), shutdown.",
	}, []string{"reason"})
	for _, r := range []string{streamEndDisconnected, streamEndWriteFailed, string(poke.Evicted), string(poke.Expired), streamEndShutdown} {
		m.pokeStreamsEnded.WithLabelValues(r)
	}
	m.pokeSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "poke_passthrough_skipped_total",
		Help: "2xx writes through the pass-through that poked nobody, by reason: unidentified (the sidecar could not tell who wrote: SIDECAR_POKE_PASSTHROUGH=identified, or scope user), busy (too many auth calls for writes in flight).",
	}, []string{"reason"})
	m.pokeSkipped.WithLabelValues(skippedUnidentified)
	m.pokeSkipped.WithLabelValues(skippedBusy)
	m.changeLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "change_lag_seconds",
		Help: "From a change the sidecar knows of (a push's commit, a pass-through write, an invalidate; another replica's, dated by its clock but never later than when this replica heard of it) to the first pull that answers it, per client group poked whose stream (naming its clientGroupID) is open in this replica and whose pull this replica answers.",
		// Sub-second steps around a typical objective (p99 < 1 s), then
		// the pacing interval, the fallback pull interval and beyond.
		Buckets: []float64{.025, .05, .1, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60},
	})
	reg.MustRegister(m.changeLag)
	reg.MustRegister(m.patchOps, m.recordBytes, m.recordEvictions, m.recordStorage, m.conditional, m.groupsDeleted, m.pokes, m.pokeNotifications, m.pokeStreamsEnded, m.pokeSkipped)
	m.reg = reg
	reg.MustRegister(m.groupBusy, m.pullsMerged, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "group_waiting",
		Help: "Pushes and pulls waiting for their client group's turn in this process (holding no connection).",
	}, func() float64 { return float64(turns.Waiting()) }))
	reg.MustRegister(m.budgetRefusals,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "inflight_bytes",
			Help: "Request and view bytes held by pushes and pulls now: one budget for both (SIDECAR_MAX_INFLIGHT_VIEW_BYTES).",
		}, func() float64 { return float64(mem.InUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "inflight_limit_bytes",
			Help: "The in-flight byte budget's size (SIDECAR_MAX_INFLIGHT_VIEW_BYTES, or derived from GOMEMLIMIT).",
		}, func() float64 { return float64(mem.Limit()) }))
	reg.MustRegister(m.requests, m.requestErrors, m.databaseUp, m.requestDuration, m.mutations, m.pullEntries, m.pullBytes, m.mappingReloadErrors, m.mappingInfo,
		m.mappingErrors, m.pruned)
	for _, e := range endpoints {
		m.requestDuration.WithLabelValues(e)
	}
	for _, e := range []string{endpointPush, endpointPull} {
		for _, c := range problem.Codes {
			m.requestErrors.WithLabelValues(e, string(c))
		}
	}
	m.precreateMutators(append(mutatorNames, unmappedMutator))
	return m
}

// precreateSources makes the view sources' series read 0 rather than be
// missing.
func (m *metrics) precreateSources(infos []clientview.SourceInfo) {
	for _, s := range infos {
		for _, read := range []string{readFull, readDelta} {
			m.viewReads.WithLabelValues(s.Path, read)
			m.viewReadBytes.WithLabelValues(s.Path, read)
		}
		m.filterIgnored.WithLabelValues(s.Path)
	}
}

// precreateMutators makes every outcome series of names read 0 rather than
// be missing.
func (m *metrics) precreateMutators(names []string) {
	for _, name := range names {
		for _, o := range verdict.MutationLabels {
			m.mutations.WithLabelValues(name, o)
		}
	}
}

// instrument counts and times every request h answers as endpoint.
func (m *metrics) instrument(endpoint string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		code := sw.status
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
		if endpoint != endpointPoke || code != http.StatusOK { // a stream's lifetime is no latency
			m.requestDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
		}
	})
}

// statusWriter remembers the status code written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) { // not an informational 1xx
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// buildInfo registers replicache_sidecar_build_info: 1, labelled with the
// build's version, VCS revision and Go version.
func (m *metrics) buildInfo(version, revision string) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "1, labelled with the running build's version, VCS revision and Go version.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(version, revision, runtime.Version()).Set(1)
	m.reg.MustRegister(g)
}

// pokeSubscribers registers the gauge of open poke streams.
func (m *metrics) pokeSubscribers(count func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "poke_subscribers",
		Help: "Poke streams open in this process.",
	}, func() float64 { return float64(count()) }))
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
