package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

func TestNewPoolSettings(t *testing.T) {
	for _, tc := range []struct {
		query    string
		maxConns int32
	}{
		{"", defaultPoolSize},
		{"pool_max_conns=3", 3},
	} {
		url := proxytest.DatabaseURL(t)
		if tc.query != "" {
			sep := "?"
			if strings.Contains(url, "?") {
				sep = "&"
			}
			url += sep + tc.query
		}
		pool, err := NewPool(context.Background(), PoolOptions{URL: url, StatementTimeout: 7 * time.Second, LockTimeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Config().MaxConns; got != tc.maxConns {
			t.Errorf("%q: MaxConns = %d, want %d", tc.query, got, tc.maxConns)
		}
		var stmt, lock, idle string
		err = pool.QueryRow(context.Background(), "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')").Scan(&stmt, &lock, &idle)
		if err != nil || stmt != "7s" || lock != "3s" || idle != "5min" {
			t.Errorf("session timeouts = %q, %q, %q (%v), want 7s, 3s and the 5min floor", stmt, lock, idle, err)
		}
		pool.Close()
	}
	if _, err := NewPool(context.Background(), PoolOptions{URL: "postgres://u:secret@h:notaport/db"}); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("bad URL: err = %v, want an error that does not echo the URL", err)
	}
}
