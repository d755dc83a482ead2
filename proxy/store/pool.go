package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PoolOptions are the session settings of the sidecar's Postgres pool.
type PoolOptions struct {
	// URL is the connection string; settings it gives win over the others.
	URL string
	// StatementTimeout (statement_timeout): no bookkeeping statement should
	// take long; a stuck one fails the request with 503 instead of pinning
	// a connection.
	StatementTimeout time.Duration
	// LockTimeout (lock_timeout): how long a push or pull waits for its
	// client group's lock, held by another push or pull of the same group
	// (at most one upstream call for a push step, a view fetch for a pull).
	// Past it the request answers 503 and the client retries.
	LockTimeout time.Duration
	// IdleInTransactionTimeout (idle_in_transaction_session_timeout) is a
	// backstop. Transactions sit idle while the upstream is called, which
	// is bounded by the upstream timeout per call; if a sidecar vanishes
	// mid-transaction (network partition), Postgres frees the lock after
	// this long. At least 5 minutes.
	IdleInTransactionTimeout time.Duration
}

// NewPool opens the Postgres pool with the sidecar's session settings (see
// PoolOptions) and a connect timeout, so a blackholed database fails fast
// instead of hanging. The error never echoes the URL (it may hold a
// password).
func NewPool(ctx context.Context, o PoolOptions) (*pgxpool.Pool, error) {
	pc, err := PoolConfig(o)
	if err != nil {
		return nil, err
	}
	return pgxpool.NewWithConfig(ctx, pc)
}

// PoolConfig is NewPool's configuration (tests add a tracer to it).
func PoolConfig(o PoolOptions) (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		return nil, errors.New("not a valid Postgres connection string")
	}
	rp := pc.ConnConfig.RuntimeParams
	setDefault := func(k, v string) {
		if _, ok := rp[k]; !ok {
			rp[k] = v
		}
	}
	setDefault("statement_timeout", millis(o.StatementTimeout))
	setDefault("lock_timeout", millis(o.LockTimeout))
	setDefault("idle_in_transaction_session_timeout", millis(max(5*time.Minute, o.IdleInTransactionTimeout)))
	setDefault("application_name", "replicache-sidecar")
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	// pgx's default pool (4 connections, or one per CPU) is too small here:
	// every in-flight push step and pull holds a connection, mostly idle,
	// while it waits for the upstream.
	if !strings.Contains(o.URL, "pool_max_conns") {
		pc.MaxConns = defaultPoolSize
	}
	return pc, nil
}

// defaultPoolSize is the pool size when the connection string sets none.
const defaultPoolSize = 20

func millis(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
