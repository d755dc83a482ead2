// Package proxytest holds what the sidecar's tests share: the Postgres they
// run against, throwaway schemas in it, and polling with a deadline. It
// imports nothing of the sidecar's, so every package's tests can use it.
package proxytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DatabaseURL is the Postgres the tests use: SIDECAR_DATABASE_URL or
// DATABASE_URL. `make test` starts a throwaway one and sets
// REQUIRE_DATABASE=1, so there a missing database fails the test; a plain
// `go test` without one skips the tests that need it.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	for _, k := range []string{"SIDECAR_DATABASE_URL", "DATABASE_URL"} {
		if u := os.Getenv(k); u != "" {
			return u
		}
	}
	if os.Getenv("REQUIRE_DATABASE") != "" {
		t.Fatal("no database: set DATABASE_URL, or run `make test`, which starts a throwaway Postgres")
	}
	t.Skip("no database (DATABASE_URL unset): skipped; `make test` starts a throwaway Postgres")
	return ""
}

// NewSchema returns a fresh schema name, dropped when the test ends, so
// tests share one database without seeing each other.
func NewSchema(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	url := DatabaseURL(t)
	t.Cleanup(func() { DropSchema(t, url, schema) })
	return schema
}

// DropSchema drops schema and everything in it.
func DropSchema(t testing.TB, url, schema string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Errorf("dropping schema %s: %v", schema, err)
		return
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("dropping schema %s: %v", schema, err)
	}
}

// NewPool connects to DatabaseURL with pgx's defaults; it is closed when the
// test ends.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), DatabaseURL(t))
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// WaitFor polls cond every 10ms until it holds, and fails the test naming
// what when it still does not after 10 seconds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Buffer is a bytes.Buffer safe for concurrent use: a log sink for a
// process or handler that writes while the test reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
