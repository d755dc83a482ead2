package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// NewPool opens the Postgres pool with the sidecar's session settings.
// Settings given in the connection string win over these defaults.
//
//   - statement_timeout (SIDECAR_DB_STATEMENT_TIMEOUT): no bookkeeping
//     statement should take long; a stuck one fails the request with 503
//     instead of pinning a connection.
//   - lock_timeout (SIDECAR_DB_LOCK_TIMEOUT): how long a push or pull waits
//     for its client group's lock, held by another push or pull of the same
//     group (at most one upstream call for a push step, a view fetch for a
//     pull). Past it the request answers 503 and the client retries.
//   - idle_in_transaction_session_timeout: a backstop. Transactions sit idle
//     while the upstream is called, which is bounded by the upstream timeout
//     per call; if a sidecar vanishes mid-transaction (network partition),
//     Postgres frees the lock after this long.
//   - connect timeout: a blackholed database fails fast instead of hanging.
func NewPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("SIDECAR_DATABASE_URL: not a valid Postgres connection string")
	}
	rp := pc.ConnConfig.RuntimeParams
	setDefault := func(k, v string) {
		if _, ok := rp[k]; !ok {
			rp[k] = v
		}
	}
	setDefault("statement_timeout", millis(cfg.DBStatementTimeout))
	setDefault("lock_timeout", millis(cfg.DBLockTimeout))
	setDefault("idle_in_transaction_session_timeout", millis(max(5*time.Minute, 4*(cfg.UpstreamTimeout+cfg.PushTimeBudget))))
	setDefault("application_name", "replicache-sidecar")
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	// pgx's default pool (4 connections, or one per CPU) is too small here:
	// every in-flight push step and pull holds a connection, mostly idle,
	// while it waits for the upstream.
	if !strings.Contains(cfg.DatabaseURL, "pool_max_conns") {
		pc.MaxConns = defaultPoolSize
	}
	return pgxpool.NewWithConfig(ctx, pc)
}

// defaultPoolSize is the pool size when the connection string sets none.
const defaultPoolSize = 20

func millis(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
