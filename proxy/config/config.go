package config

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/passthrough"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// Config is every setting of the sidecar, read from SIDECAR_* environment
// variables. config.example.env documents each one; keep them in step.
type Config struct {
	UpstreamURL string `env:"UPSTREAM_URL,required"`
	DatabaseURL string `env:"DATABASE_URL,required"`
	MappingFile string `env:"MAPPING_FILE,required"`

	MappingReloadInterval time.Duration `env:"MAPPING_RELOAD_INTERVAL" envDefault:"5s"`

	ListenAddr string `env:"LISTEN_ADDR" envDefault:":8080"`
	AdminAddr  string `env:"ADMIN_ADDR" envDefault:":9090"`
	PushPath   string `env:"PUSH_PATH" envDefault:"/replicache/push"`
	PullPath   string `env:"PULL_PATH" envDefault:"/replicache/pull"`

	// Realtime: the poke stream (Server-Sent Events) and the invalidate hook.
	PokePath           string        `env:"POKE_PATH" envDefault:"/replicache/poke"`
	PokeHeartbeat      time.Duration `env:"POKE_HEARTBEAT" envDefault:"25s"`
	PokeMaxSubscribers int           `env:"POKE_MAX_SUBSCRIBERS" envDefault:"10000"`
	PokeScope          string        `env:"POKE_SCOPE" envDefault:"all"`
	PokeCoalesce       time.Duration `env:"POKE_COALESCE" envDefault:"50ms"`
	PokeSpread         time.Duration `env:"POKE_SPREAD" envDefault:"250ms"`
	InvalidatePath     string        `env:"INVALIDATE_PATH" envDefault:"/replicache/invalidate"`
	InvalidateToken    string        `env:"INVALIDATE_TOKEN"`
	DBSchema           string        `env:"DB_SCHEMA" envDefault:"replicache"`

	// Fairness of poke streams and pokes between callers.
	// PokePassthrough: which 2xx writes through the pass-through poke:
	// identified (only those whose writer the sidecar can identify), all,
	// or off.
	PokePassthrough string `env:"POKE_PASSTHROUGH" envDefault:"identified"`
	// PokeCallerInterval: one caller's pokes go out at most this often,
	// merged (0: at once).
	PokeCallerInterval time.Duration `env:"POKE_CALLER_INTERVAL" envDefault:"1s"`
	// PokeMaxLifetime: a poke stream ends after this long; EventSource
	// reconnects by itself.
	PokeMaxLifetime time.Duration `env:"POKE_MAX_LIFETIME" envDefault:"1h"`

	ForwardHeaders    []string `env:"FORWARD_HEADERS" envDefault:"Authorization" envSeparator:","`
	UserIDHeader      string   `env:"USER_ID_HEADER"`
	TrustedProxies    []string `env:"TRUSTED_PROXIES" envDefault:"127.0.0.1/32,::1/128" envSeparator:","`
	AuthPath          string   `env:"AUTH_PATH"`
	AuthUserField     string   `env:"AUTH_USER_FIELD" envDefault:"id"`
	AuthMethod        string   `env:"AUTH_METHOD" envDefault:"GET"`
	IdempotencyHeader string   `env:"IDEMPOTENCY_HEADER" envDefault:"Idempotency-Key"`
	IdempotencySecret string   `env:"IDEMPOTENCY_SECRET"`
	// IdempotencySecretPrevious is the secret being rotated away from
	// ("generated": the one generated in the schema): mutations that may
	// have been sent keyed with it keep their key (store.PreviousKeysThrough).
	IdempotencySecretPrevious string `env:"IDEMPOTENCY_SECRET_PREVIOUS"`

	UpstreamTimeout time.Duration `env:"UPSTREAM_TIMEOUT" envDefault:"10s"`
	// UpstreamMaxInflight bounds the view and auth calls in flight at once
	// (0: no bound).
	UpstreamMaxInflight  int   `env:"UPSTREAM_MAX_INFLIGHT" envDefault:"32"`
	MaxBodyBytes         int64 `env:"MAX_BODY_BYTES" envDefault:"33554432"`
	MaxArgsBytes         int64 `env:"MAX_ARGS_BYTES" envDefault:"1048576"`
	MaxUpstreamBodyBytes int64 `env:"MAX_UPSTREAM_BODY_BYTES" envDefault:"67108864"`
	// MaxInflightBytes bounds the request and view bytes held by all pushes
	// and pulls at once; 0 derives it from GOMEMLIMIT (see inflightDefault).
	MaxInflightBytes int64         `env:"MAX_INFLIGHT_VIEW_BYTES" envDefault:"0"`
	PushTimeBudget   time.Duration `env:"PUSH_TIME_BUDGET" envDefault:"20s"`
	ShutdownTimeout  time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"25s"`
	DrainDelay       time.Duration `env:"DRAIN_DELAY" envDefault:"2s"`
	HTTPReadTimeout  time.Duration `env:"HTTP_READ_TIMEOUT" envDefault:"60s"`
	LogLevel         string        `env:"LOG_LEVEL" envDefault:"info"`
	// TraceClients continues every caller's W3C traceparent; by default
	// only a trusted proxy's (SIDECAR_TRUSTED_PROXIES) is.
	TraceClients bool `env:"TRACE_CLIENTS" envDefault:"false"`
	// Pprof serves Go's profiles under /debug/pprof/ on the admin listener.
	Pprof bool `env:"PPROF" envDefault:"false"`

	DBStatementTimeout time.Duration `env:"DB_STATEMENT_TIMEOUT" envDefault:"10s"`
	DBLockTimeout      time.Duration `env:"DB_LOCK_TIMEOUT" envDefault:"15s"`

	MaxWaitingPerGroup int `env:"MAX_WAITING_PER_GROUP" envDefault:"32"`
	MaxConnsPerGroup   int `env:"MAX_CONNS_PER_GROUP" envDefault:"2"`

	MaxClientsPerPush     int           `env:"MAX_CLIENTS_PER_PUSH" envDefault:"16"`
	MaxClientsPerGroup    int           `env:"MAX_CLIENTS_PER_GROUP" envDefault:"1000"`
	MaxRejectionsPerGroup int           `env:"MAX_REJECTIONS_PER_GROUP" envDefault:"10000"`
	RejectionTTL          time.Duration `env:"REJECTION_TTL" envDefault:"24h"`
	// MaxHistoryPerGroup: events of each group's history kept (the
	// newest), for /groups/{id} and `inspect`; 0: none recorded.
	MaxHistoryPerGroup int  `env:"MAX_HISTORY_PER_GROUP" envDefault:"50"`
	ExposeRejections   bool `env:"EXPOSE_REJECTIONS" envDefault:"false"`
	// PatchMode: diff (answer what changed since the client's cookie, from
	// the group's view record) or reset (clear + every entry, every pull).
	PatchMode string `env:"PATCH_MODE" envDefault:"diff"`
	// ViewRecordVersions: how many record versions a client may fall
	// behind and still get a diff (removed keys are kept that long).
	ViewRecordVersions int `env:"VIEW_RECORD_VERSIONS" envDefault:"64"`
	// ViewRecordCacheBytes bounds the view records kept in memory between
	// pulls (0 or less: none).
	ViewRecordCacheBytes int64 `env:"VIEW_RECORD_CACHE_BYTES" envDefault:"16777216"`
	// MaxViewRecordsPerUser: a user's (in single-tenant mode an address's)
	// client groups keep view records for at most this many groups, the
	// least recently used evicted (0: no limit).
	MaxViewRecordsPerUser int           `env:"MAX_VIEW_RECORDS_PER_USER" envDefault:"64"`
	GCInterval            time.Duration `env:"GC_INTERVAL" envDefault:"1h"`
	// ClientGroupTTL: groups unused this long are deleted by the sweep
	// (0: never).
	ClientGroupTTL time.Duration `env:"CLIENT_GROUP_TTL" envDefault:"720h"`

	GiveUpAttempts int           `env:"GIVE_UP_ATTEMPTS" envDefault:"20"`
	GiveUpAfter    time.Duration `env:"GIVE_UP_AFTER" envDefault:"10m"`

	BreakerFailures         uint32        `env:"BREAKER_FAILURES" envDefault:"5"`
	BreakerOpenTimeout      time.Duration `env:"BREAKER_OPEN_TIMEOUT" envDefault:"1s"`
	BreakerHalfOpenRequests uint32        `env:"BREAKER_HALF_OPEN_REQUESTS" envDefault:"1"`

	CORSOrigins []string `env:"CORS_ORIGINS" envSeparator:","`

	PassthroughHost string   `env:"PASSTHROUGH_HOST" envDefault:"incoming"`
	PassthroughDeny []string `env:"PASSTHROUGH_DENY" envSeparator:","`

	// Parsed forms, filled by LoadConfig.
	Upstream    *url.URL         `env:"-"`
	Mapping     *mapping.Mapping `env:"-"`
	TrustedNets []netip.Prefix   `env:"-"` // from TrustedProxies

}

// PoolOptions are the database pool's settings.
func (c Config) PoolOptions() store.PoolOptions {
	return store.PoolOptions{
		URL: c.DatabaseURL, StatementTimeout: c.DBStatementTimeout, LockTimeout: c.DBLockTimeout,
		// A transaction is idle while the upstream answers: at most one
		// push's budget plus a call, with room to spare.
		IdleInTransactionTimeout: 4 * (c.UpstreamTimeout + c.PushTimeBudget),
	}
}

// SIDECAR_POKE_PASSTHROUGH's values.
const (
	PokePassthroughIdentified = "identified"
	PokePassthroughAll        = "all"
	PokePassthroughOff        = "off"
)

// GeneratedSecret, as SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS, names the
// idempotency secret generated in the sidecar's schema (used while
// SIDECAR_IDEMPOTENCY_SECRET was unset).
const GeneratedSecret = "generated"

var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Load reads the configuration from environ (variable name → value),
// loads the mapping file, and checks everything. The error, if any, lists
// every problem found, one per line, so a bad deployment is fixed in one go.
func Load(environ map[string]string) (Config, error) {
	var cfg Config
	var errs []error
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: environ, Prefix: "SIDECAR_"}); err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			errs = append(errs, agg.Errors...)
		} else {
			errs = append(errs, err)
		}
	}
	for _, check := range []func() []error{
		cfg.parseUpstream, cfg.checkDatabase, cfg.loadMapping, cfg.checkPaths, cfg.checkHeaders,
		cfg.checkLimits, cfg.parseCORSOrigins, cfg.parseTrustedProxies, cfg.checkPassthrough, cfg.checkLogLevel,
	} {
		errs = append(errs, check()...)
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("invalid configuration:\n  %w", joinLines(errs))
	}
	return cfg, nil
}

// parseUpstream fills Upstream from UpstreamURL.
func (c *Config) parseUpstream() []error {
	if c.UpstreamURL == "" {
		return nil // required: reported by the env parser
	}
	u, err := url.Parse(c.UpstreamURL)
	switch {
	case err != nil:
		// url's message echoes the URL, which may hold a password.
		return []error{errors.New("SIDECAR_UPSTREAM_URL: not a valid URL")}
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return []error{fmt.Errorf("SIDECAR_UPSTREAM_URL %q: want http(s)://host[:port][/prefix]", u.Redacted())}
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return []error{fmt.Errorf("SIDECAR_UPSTREAM_URL %q: must not carry a query, fragment or credentials", u.Redacted())}
	}
	c.Upstream = u
	return nil
}

func (c *Config) checkDatabase() []error {
	var errs []error
	if c.DatabaseURL != "" {
		if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
			// pgx's message can echo the URL; keep credentials out of logs.
			errs = append(errs, errors.New("SIDECAR_DATABASE_URL: not a valid Postgres connection string"))
		}
	}
	if !schemaRE.MatchString(c.DBSchema) {
		errs = append(errs, fmt.Errorf("SIDECAR_DB_SCHEMA %q: want a lower-case SQL identifier ([a-z_][a-z0-9_]*)", c.DBSchema))
	}
	return errs
}

// loadMapping fills Mapping from MappingFile.
func (c *Config) loadMapping() []error {
	if c.MappingFile == "" {
		return nil // required: reported by the env parser
	}
	m, err := mapping.Load(c.MappingFile)
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var errs []error // one line each
		for _, e := range j.Unwrap() {
			errs = append(errs, fmt.Errorf("SIDECAR_MAPPING_FILE: %w", e))
		}
		return errs
	}
	if err != nil {
		return []error{fmt.Errorf("SIDECAR_MAPPING_FILE: %w", err)}
	}
	c.Mapping = m
	return nil
}

func (c *Config) checkPaths() []error {
	var errs []error
	paths := map[string]string{"SIDECAR_PUSH_PATH": c.PushPath, "SIDECAR_PULL_PATH": c.PullPath,
		"SIDECAR_POKE_PATH": c.PokePath, "SIDECAR_INVALIDATE_PATH": c.InvalidatePath}
	seen := map[string]string{}
	for _, name := range []string{"SIDECAR_PUSH_PATH", "SIDECAR_PULL_PATH", "SIDECAR_POKE_PATH", "SIDECAR_INVALIDATE_PATH"} {
		p := paths[name]
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?# ") {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path without query", name, p))
		}
		if other, dup := seen[p]; dup {
			errs = append(errs, fmt.Errorf("%s and %s must differ", other, name))
		}
		seen[p] = name
	}
	if c.AuthPath != "" && !strings.HasPrefix(c.AuthPath, "/") {
		errs = append(errs, fmt.Errorf("SIDECAR_AUTH_PATH %q: want a path starting with /", c.AuthPath))
	}
	return errs
}

// checkHeaders checks every header name and canonicalizes ForwardHeaders.
func (c *Config) checkHeaders() []error {
	var errs []error
	var fwd []string
	for _, h := range c.ForwardHeaders {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if !ValidToken(h) {
			errs = append(errs, fmt.Errorf("SIDECAR_FORWARD_HEADERS: %q is not a header name", h))
		}
		fwd = append(fwd, http.CanonicalHeaderKey(h))
	}
	c.ForwardHeaders = fwd
	for name, h := range map[string]string{"SIDECAR_USER_ID_HEADER": c.UserIDHeader, "SIDECAR_IDEMPOTENCY_HEADER": c.IdempotencyHeader} {
		if h != "" && !ValidToken(h) {
			errs = append(errs, fmt.Errorf("%s: %q is not a header name", name, h))
		}
	}
	if c.IdempotencySecret != "" && len(c.IdempotencySecret) < 32 {
		errs = append(errs, errors.New("SIDECAR_IDEMPOTENCY_SECRET must be at least 32 bytes (e.g. 64 hex characters)"))
	}
	switch prev := c.IdempotencySecretPrevious; {
	case prev == "":
	case prev == GeneratedSecret && c.IdempotencySecret == "":
		errs = append(errs, errors.New("SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS=generated needs SIDECAR_IDEMPOTENCY_SECRET: the generated secret is the current one"))
	case prev == GeneratedSecret:
	case len(prev) < 32:
		errs = append(errs, errors.New("SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS must be at least 32 bytes, or generated (the secret generated in the sidecar's schema)"))
	case prev == c.IdempotencySecret:
		errs = append(errs, errors.New("SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS must differ from SIDECAR_IDEMPOTENCY_SECRET"))
	}
	if c.IdempotencyHeader == "" {
		errs = append(errs, errors.New("SIDECAR_IDEMPOTENCY_HEADER must not be empty"))
	}
	c.AuthMethod = strings.ToUpper(c.AuthMethod)
	if c.AuthMethod != http.MethodGet && c.AuthMethod != http.MethodPost {
		errs = append(errs, fmt.Errorf("SIDECAR_AUTH_METHOD %q: want GET or POST", c.AuthMethod))
	}
	if c.AuthUserField == "" {
		errs = append(errs, errors.New("SIDECAR_AUTH_USER_FIELD must not be empty"))
	}
	return errs
}

// checkLimits checks timeouts, intervals and sizes.
func (c *Config) checkLimits() []error {
	var errs []error
	for name, d := range map[string]time.Duration{
		"SIDECAR_UPSTREAM_TIMEOUT": c.UpstreamTimeout, "SIDECAR_PUSH_TIME_BUDGET": c.PushTimeBudget,
		"SIDECAR_SHUTDOWN_TIMEOUT": c.ShutdownTimeout, "SIDECAR_HTTP_READ_TIMEOUT": c.HTTPReadTimeout,
		"SIDECAR_DB_STATEMENT_TIMEOUT": c.DBStatementTimeout, "SIDECAR_DB_LOCK_TIMEOUT": c.DBLockTimeout,
		"SIDECAR_BREAKER_OPEN_TIMEOUT": c.BreakerOpenTimeout,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	for name, n := range map[string]int{"SIDECAR_MAX_CLIENTS_PER_PUSH": c.MaxClientsPerPush,
		"SIDECAR_MAX_CLIENTS_PER_GROUP": c.MaxClientsPerGroup, "SIDECAR_MAX_REJECTIONS_PER_GROUP": c.MaxRejectionsPerGroup} {
		if n < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1", name))
		}
	}
	if c.ClientGroupTTL < 0 {
		errs = append(errs, errors.New("SIDECAR_CLIENT_GROUP_TTL must not be negative (0 keeps client groups for ever)"))
	}
	if c.GCInterval < 0 {
		errs = append(errs, errors.New("SIDECAR_GC_INTERVAL must not be negative (0 disables the sweep)"))
	}
	if c.MaxHistoryPerGroup < 0 {
		errs = append(errs, errors.New("SIDECAR_MAX_HISTORY_PER_GROUP must not be negative (0 records none)"))
	}
	if c.RejectionTTL < 0 {
		errs = append(errs, errors.New("SIDECAR_REJECTION_TTL must not be negative (0 keeps them until the count cap)"))
	}
	if c.GiveUpAttempts < 0 {
		errs = append(errs, errors.New("SIDECAR_GIVE_UP_ATTEMPTS must not be negative (0 never gives up)"))
	}
	if c.GiveUpAfter < 0 {
		errs = append(errs, errors.New("SIDECAR_GIVE_UP_AFTER must not be negative"))
	}
	if c.MappingReloadInterval < 0 {
		errs = append(errs, errors.New("SIDECAR_MAPPING_RELOAD_INTERVAL must not be negative (0 disables reloading)"))
	}
	if c.DrainDelay < 0 || c.DrainDelay >= c.ShutdownTimeout {
		errs = append(errs, errors.New("SIDECAR_DRAIN_DELAY must be at least 0 and below SIDECAR_SHUTDOWN_TIMEOUT"))
	}
	for name, n := range map[string]int64{"SIDECAR_MAX_BODY_BYTES": c.MaxBodyBytes, "SIDECAR_MAX_UPSTREAM_BODY_BYTES": c.MaxUpstreamBodyBytes,
		"SIDECAR_MAX_ARGS_BYTES": c.MaxArgsBytes} {
		if n <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	if c.UpstreamMaxInflight < 0 {
		errs = append(errs, errors.New("SIDECAR_UPSTREAM_MAX_INFLIGHT must not be negative (0: no bound)"))
	}
	if c.MaxWaitingPerGroup < 0 {
		errs = append(errs, errors.New("SIDECAR_MAX_WAITING_PER_GROUP must not be negative"))
	}
	if c.MaxConnsPerGroup < 1 {
		errs = append(errs, errors.New("SIDECAR_MAX_CONNS_PER_GROUP must be at least 1"))
	}
	switch {
	case c.MaxInflightBytes < 0 || (c.MaxInflightBytes > 0 && c.MaxInflightBytes < 1<<20):
		errs = append(errs, errors.New("SIDECAR_MAX_INFLIGHT_VIEW_BYTES must be at least 1048576 (1 MiB), or 0 to derive it from GOMEMLIMIT"))
	case c.MaxInflightBytes == 0:
		c.MaxInflightBytes = inflightDefault(debug.SetMemoryLimit(-1))
	}
	return errs
}

// inflightDefault sizes the in-flight budget from the Go memory limit: a
// byte held by a push or pull costs about three in the heap at its peak (the
// bytes, what is built from them, the answer), and the rest is the runtime's
// and every other request's. Without GOMEMLIMIT it assumes 512 MiB.
func inflightDefault(memLimit int64) int64 {
	const unset = math.MaxInt64
	if memLimit <= 0 || memLimit == unset {
		memLimit = 512 << 20
	}
	return max(memLimit/4, 1<<20)
}

// parseCORSOrigins keeps exact origins only, without a trailing slash.
func (c *Config) parseCORSOrigins() []error {
	var errs []error
	var origins []string
	for _, o := range c.CORSOrigins {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || o == "*" {
			errs = append(errs, fmt.Errorf("SIDECAR_CORS_ORIGINS: %q is not an exact origin like https://app.example.com", o))
			continue
		}
		origins = append(origins, strings.TrimSuffix(o, "/"))
	}
	c.CORSOrigins = origins
	return errs
}

// parseTrustedProxies fills TrustedNets: CIDRs, or single addresses.
func (c *Config) parseTrustedProxies() []error {
	var errs []error
	c.TrustedNets = nil
	for _, p := range c.TrustedProxies {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !strings.Contains(p, "/") {
			if a, err := netip.ParseAddr(p); err == nil {
				c.TrustedNets = append(c.TrustedNets, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
				continue
			}
		}
		n, err := netip.ParsePrefix(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("SIDECAR_TRUSTED_PROXIES: %q is not a CIDR such as 10.0.0.0/8 or an address", p))
			continue
		}
		if a := n.Addr(); a.Is4In6() && n.Bits() >= 96 {
			// Peers are compared unmapped: ::ffff:10.0.0.0/104 is 10.0.0.0/8.
			n = netip.PrefixFrom(a.Unmap(), n.Bits()-96)
		}
		c.TrustedNets = append(c.TrustedNets, n.Masked())
	}
	return errs
}

// checkPassthrough checks the pass-through settings and cleans the deny list.
func (c *Config) checkPassthrough() []error {
	var errs []error
	if c.ViewRecordVersions < 1 {
		errs = append(errs, fmt.Errorf("SIDECAR_VIEW_RECORD_VERSIONS %d: want at least 1", c.ViewRecordVersions))
	}
	if c.MaxViewRecordsPerUser < 0 {
		errs = append(errs, fmt.Errorf("SIDECAR_MAX_VIEW_RECORDS_PER_USER %d: want at least 1, or 0 for no limit", c.MaxViewRecordsPerUser))
	}
	if c.PokeScope != "all" && c.PokeScope != "user" {
		errs = append(errs, fmt.Errorf("SIDECAR_POKE_SCOPE %q: want all or user", c.PokeScope))
	}
	if c.PokeHeartbeat <= 0 {
		errs = append(errs, errors.New("SIDECAR_POKE_HEARTBEAT must be positive"))
	}
	if c.PokeMaxSubscribers < 1 {
		errs = append(errs, errors.New("SIDECAR_POKE_MAX_SUBSCRIBERS must be at least 1"))
	}
	if c.PokeCoalesce < 0 {
		errs = append(errs, errors.New("SIDECAR_POKE_COALESCE must not be negative"))
	}
	if c.PokeSpread < 0 {
		errs = append(errs, errors.New("SIDECAR_POKE_SPREAD must not be negative (0: all at once)"))
	}
	switch c.PokePassthrough {
	case PokePassthroughIdentified, PokePassthroughAll, PokePassthroughOff:
	default:
		errs = append(errs, fmt.Errorf("SIDECAR_POKE_PASSTHROUGH %q: want identified, all or off", c.PokePassthrough))
	}
	if c.PokeCallerInterval < 0 {
		errs = append(errs, errors.New("SIDECAR_POKE_CALLER_INTERVAL must not be negative (0 sends every caller's pokes at once)"))
	}
	if c.PokeMaxLifetime <= 0 {
		errs = append(errs, errors.New("SIDECAR_POKE_MAX_LIFETIME must be positive"))
	}
	if c.PatchMode != "diff" && c.PatchMode != "reset" {
		errs = append(errs, fmt.Errorf("SIDECAR_PATCH_MODE %q: want diff or reset", c.PatchMode))
	}
	if c.PassthroughHost != "incoming" && c.PassthroughHost != "upstream" {
		errs = append(errs, fmt.Errorf("SIDECAR_PASSTHROUGH_HOST %q: want incoming or upstream", c.PassthroughHost))
	}
	var deny []string
	for _, p := range c.PassthroughDeny {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		clean, ok := passthrough.CleanPath(p)
		if !strings.HasPrefix(p, "/") || !ok {
			errs = append(errs, fmt.Errorf("SIDECAR_PASSTHROUGH_DENY: %q is not an absolute path prefix", p))
			continue
		}
		deny = append(deny, strings.TrimSuffix(clean, "/"))
	}
	c.PassthroughDeny = deny
	return errs
}

func (c *Config) checkLogLevel() []error {
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
		return nil
	}
	return []error{fmt.Errorf("SIDECAR_LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel)}
}

// joinLines joins errors one per line, indented, flattening nested joins so
// every problem stands on its own line.
func joinLines(errs []error) error {
	var lines []string
	var flatten func(error)
	flatten = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				flatten(e)
			}
			return
		}
		lines = append(lines, err.Error())
	}
	for _, err := range errs {
		flatten(err)
	}
	return errors.New(strings.Join(lines, "\n  "))
}

// ValidToken reports whether s is an HTTP token (RFC 9110: a header
// name, a method).
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
