// Command bench measures what the sidecar costs, next to the physical limit
// of the same work measured in the same run, and prints one table (Markdown,
// for BENCHMARKS.md).
//
// It runs the built sidecar binary as its own process (so its resident
// memory can be read from /proc) in front of a fast in-memory legacy API
// written for the measurement, against the Postgres of DATABASE_URL (or
// SIDECAR_DATABASE_URL), everything on loopback. `make bench` builds both
// and starts a throwaway Postgres around it.
//
// The physical limits: for a push, calling the API directly (the same POST)
// plus a bare one-row Postgres transaction (BEGIN, UPDATE, COMMIT); for a
// pull, GETting the same pages directly and reading them; for memory, the
// view's size; for load, the same number of bare transactions at once.
// Times are medians; ratios are sidecar / limit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "upstream" {
		if err := serveUpstream(); err != nil {
			fmt.Fprintln(os.Stderr, "bench upstream:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	bin   string
	quick bool
	only  string

	profile        string
	profileSeconds int
	profileKind    string
}

func run() error {
	var o options
	flag.StringVar(&o.bin, "sidecar", "bin/replicache-sidecar", "the built sidecar binary")
	flag.BoolVar(&o.quick, "quick", false, "a few iterations of each figure: checks that the bench works (CI), measures nothing")
	flag.StringVar(&o.only, "only", "", "run only the figures whose name holds this text (push, pull, diff, memory, groups)")
	flag.StringVar(&o.profile, "profile", "", "write CPU profiles of the sidecar to this directory (figures repeat while profiled)")
	flag.IntVar(&o.profileSeconds, "profile-seconds", 5, "length of each profile")
	flag.StringVar(&o.profileKind, "profile-kind", "profile", "what -profile takes: profile (CPU), allocs, trace, mutex or block")
	flag.Parse()
	db := os.Getenv("DATABASE_URL")
	if db == "" {
		db = os.Getenv("SIDECAR_DATABASE_URL")
	}
	if db == "" {
		return errors.New("DATABASE_URL is not set (`make bench` starts a throwaway Postgres)")
	}
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("the sidecar binary: %w (`make bench` builds it)", err)
	}
	ctx := context.Background()
	b, err := newBench(ctx, o, db)
	if err != nil {
		return err
	}
	defer b.close()
	start := time.Now()
	for _, f := range figures {
		if o.only != "" && !strings.Contains(f.name, o.only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s…\n", f.name)
		if err := f.run(b, ctx); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return b.print(os.Stdout, time.Since(start))
}

// figures are run in this order; each starts the sidecars it needs.
var figures = []struct {
	name string
	run  func(*bench, context.Context) error
}{
	{"push", (*bench).pushes},
	{"push with spans exported", (*bench).tracedPushes},
	{"pull reset and memory", (*bench).resetPulls},
	{"diff pull", (*bench).diffPulls},
	{"groups pushing at once", (*bench).groups},
	{"fanout of one change", (*bench).fanout},
	{"1,000-client wave", (*bench).thousand},
	{"history", (*bench).history},
	{"poke streams", (*bench).pokes},
	{"pull that changed nothing", (*bench).unchangedPulls},
}

type bench struct {
	o      options
	api    *apiProcess
	db     string
	schema string
	pg     *pgxpool.Pool
	client *http.Client
	dir    string
	rows   []row
}

func newBench(ctx context.Context, o options, db string) (*bench, error) {
	b := &bench{o: o, db: db, schema: fmt.Sprintf("bench_%d", time.Now().UnixNano())}
	b.client = &http.Client{Transport: &http.Transport{
		MaxIdleConns: 2000, MaxIdleConnsPerHost: 1000, DisableCompression: true, IdleConnTimeout: time.Minute,
	}}
	var err error
	if b.api, err = startAPI(b.client); err != nil {
		return nil, err
	}
	if b.pg, err = pgxpool.New(ctx, db); err != nil {
		return nil, err
	}
	// Rows for the bare transactions of the physical limit: one per worker.
	if _, err := b.pg.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench_limit (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		INSERT INTO bench_limit (id) SELECT generate_series(0, 255) ON CONFLICT DO NOTHING`); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if b.dir, err = os.MkdirTemp("", "bench"); err != nil {
		return nil, err
	}
	mapping := `{
  "mutators": {"createTodo": {"method": "POST", "path": "/api/todos"}},
  "clientView": [{"path": "/api/{userID}/todos", "items": "results", "key": "todo/{id}", "pagination": {"type": "url"}}]
}`
	if err := os.WriteFile(filepath.Join(b.dir, "mapping.json"), []byte(mapping), 0o600); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *bench) close() {
	_, _ = b.pg.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+b.schema+` CASCADE; DROP TABLE IF EXISTS bench_limit`)
	b.pg.Close()
	b.api.stop()
	_ = os.RemoveAll(b.dir)
}

// sidecar starts a sidecar in front of the fast API with the bench's
// mapping, trusting an X-User-Id header (no auth call), plus env.
func (b *bench) sidecar(env ...string) (*sidecar, error) {
	return startSidecar(b.o.bin, append([]string{
		"SIDECAR_UPSTREAM_URL=" + b.api.base,
		"SIDECAR_DATABASE_URL=" + b.db,
		"SIDECAR_DB_SCHEMA=" + b.schema,
		"SIDECAR_MAPPING_FILE=" + filepath.Join(b.dir, "mapping.json"),
		"SIDECAR_USER_ID_HEADER=X-User-Id",
	}, env...)...)
}

// iterations scales a count down in quick mode.
func (b *bench) iterations(n int) int {
	if b.o.quick {
		return max(1, n/20)
	}
	return n
}

func (b *bench) duration(d time.Duration) time.Duration {
	if b.o.quick {
		return d / 10
	}
	return d
}
