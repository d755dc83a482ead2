package proxy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// testMapping maps the legacy test API. updateTodo uses optional
// placeholders so partial updates work.
const testMapping = `{
  "mutators": {
    "createTodo": {"method": "POST", "path": "/api/todos"},
    "updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}",
                   "body": {"title": "{args.title?}", "done": "{args.done?}"}},
    "deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}"},
    "tagTodo": {"method": "POST", "path": "/api/todos/{args.id}/tags?tag={args.tag}"}
  },
  "clientView": [
    {"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}},
    {"path": "/api/me", "key": "me"}
  ]
}`

// writeFile writes content to a mapping file of the test's own.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// instance is one running sidecar.
type instance struct {
	sc   *Sidecar
	srv  *httptest.Server // public listener
	reg  *prometheus.Registry
	pool *pgxpool.Pool
}

// harness is a legacy upstream plus sidecars sharing one schema.
type harness struct {
	t      testing.TB
	up     *proxytest.LegacyAPI
	schema string
	env    map[string]string
	logs   *proxytest.Buffer // every instance's JSON logs, at debug level
	// streamAfter, when set, is the view bytes after which a sidecar
	// started from here streams a reset answer (pull.Engine.StreamAfter).
	streamAfter int64
	// tracer, when set, records spans as OTEL_EXPORTER_OTLP_ENDPOINT would
	// have them exported. SIDECAR_TEST_TRACING=1 sets one for every test
	// (make test-go runs the package so once more): tracing must change
	// nothing the tests see.
	tracer trace.Tracer
	// pgTracer, when set, traces every statement the instances send to
	// Postgres (pgx.QueryTracer, and pgx.BatchTracer if it is one).
	pgTracer pgx.QueryTracer
}

// newHarness starts the legacy API and returns a harness; env overrides the
// sidecar's settings (SIDECAR_* names).
func newHarness(t testing.TB, env map[string]string) *harness {
	t.Helper()
	h := &harness{t: t, up: proxytest.NewLegacyAPI(t), schema: proxytest.NewSchema(t), logs: &proxytest.Buffer{}}
	mappingFile := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(mappingFile, []byte(testMapping), 0o600); err != nil {
		t.Fatal(err)
	}
	h.env = map[string]string{
		"SIDECAR_UPSTREAM_URL": h.up.Server.URL,
		"SIDECAR_DATABASE_URL": proxytest.DatabaseURL(t),
		"SIDECAR_MAPPING_FILE": mappingFile,
		"SIDECAR_DB_SCHEMA":    h.schema,
		"SIDECAR_AUTH_PATH":    "/api/me",
		// A known secret, so tests can tell which mutation a call is for
		// (keyOf); TestIdempotencyKeys covers the generated one.
		"SIDECAR_IDEMPOTENCY_SECRET": testSecret,
	}
	for k, v := range env {
		h.env[k] = v
	}
	return h
}

// start starts a sidecar on the harness's schema, migrated and serving.
func (h *harness) start() *instance {
	h.t.Helper()
	inst := h.startUnmigrated()
	if err := inst.sc.Migrate(context.Background()); err != nil {
		h.t.Fatalf("migrating: %v", err)
	}
	return inst
}

func (h *harness) startUnmigrated() *instance {
	h.t.Helper()
	cfg, err := LoadConfig(h.env)
	if err != nil {
		h.t.Fatalf("LoadConfig: %v", err)
	}
	reg := prometheus.NewRegistry()
	pc, err := store.PoolConfig(cfg.PoolOptions())
	if err != nil {
		h.t.Fatalf("PoolConfig: %v", err)
	}
	pc.ConnConfig.Tracer = h.pgTracer
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		h.t.Fatalf("NewPool: %v", err)
	}
	h.t.Cleanup(pool.Close)
	var out io.Writer = h.logs
	if os.Getenv("TEST_LOG") != "" {
		out = io.MultiWriter(h.logs, os.Stderr)
	}
	logger := slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tracer := h.tracer
	if tracer == nil && os.Getenv("SIDECAR_TEST_TRACING") != "" {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		h.t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		tracer = tp.Tracer("test")
	}
	sc := New(Options{Config: cfg, Pool: pool, Logger: logger, Registerer: reg, Tracer: tracer})
	sc.pulls.StreamAfter = h.streamAfter
	// The production server settings (timeouts), and a guard that fails the
	// test on any handler panic: net/http would otherwise swallow it.
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = NewHTTPServer(panicGuard(h.t, sc.Handler()), cfg.HTTPReadTimeout, 0)
	srv.Start()
	h.t.Cleanup(srv.Close)
	return &instance{sc: sc, srv: srv, reg: reg, pool: pool}
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	raw    []byte
	json   map[string]any
}

func (r response) str(key string) string { s, _ := r.json[key].(string); return s }

// post sends body (a []byte, string, or value to encode) to path.
func (inst *instance) post(t testing.TB, path, auth string, body any) response {
	t.Helper()
	var b []byte
	switch x := body.(type) {
	case []byte:
		b = x
	case string:
		b = []byte(x)
	default:
		var err error
		if b, err = json.Marshal(x); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	req.Header.Set("X-Replicache-RequestID", "test-req")
	return do(t, req)
}

func do(t testing.TB, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.json)
	return r
}

type mut struct {
	client string
	id     int64
	name   string
	args   any
}

func pushBody(group string, muts ...mut) map[string]any {
	ms := make([]map[string]any, 0, len(muts))
	for _, m := range muts {
		ms = append(ms, map[string]any{"id": m.id, "clientID": m.client, "name": m.name, "args": m.args, "timestamp": 12.5})
	}
	return map[string]any{"pushVersion": 1, "profileID": "p1", "clientGroupID": group, "schemaVersion": "", "mutations": ms}
}

func pullBody(group string, cookie any) map[string]any {
	return map[string]any{"pullVersion": 1, "profileID": "p1", "clientGroupID": group, "cookie": cookie, "schemaVersion": ""}
}

func create(client string, id int64, todoID string) mut {
	return mut{client, id, "createTodo", map[string]any{"id": todoID, "title": "t " + todoID}}
}

func (inst *instance) push(t testing.TB, user, group string, muts ...mut) response {
	t.Helper()
	return inst.post(t, "/replicache/push", "Bearer "+user, pushBody(group, muts...))
}

// pullResult is a decoded PullResponse.
type pullResult struct {
	Cookie struct {
		Order int64 `json:"order"`
	} `json:"cookie"`
	LastMutationIDChanges map[string]int64 `json:"lastMutationIDChanges"`
	Patch                 []struct {
		Op    string          `json:"op"`
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	} `json:"patch"`
}

func (inst *instance) pull(t testing.TB, user, group string, cookie any) (response, pullResult) {
	t.Helper()
	r := inst.post(t, "/replicache/pull", "Bearer "+user, pullBody(group, cookie))
	var pr pullResult
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.raw, &pr); err != nil {
			t.Fatalf("pull answered 200 with a body that is not a PullResponse: %v\n%s", err, r.raw)
		}
	}
	return r, pr
}

// keys returns the put keys of a patch, checking it starts with clear.
func (p pullResult) keys(t testing.TB) []string {
	t.Helper()
	if len(p.Patch) == 0 || p.Patch[0].Op != "clear" {
		t.Fatalf("patch does not start with clear: %+v", p.Patch)
	}
	var ks []string
	for _, op := range p.Patch[1:] {
		if op.Op != "put" {
			t.Fatalf("reset patch has op %q", op.Op)
		}
		ks = append(ks, op.Key)
	}
	return ks
}

// lmid reads a client's last mutation id straight from the database.
func (h *harness) lmid(t testing.TB, pool *pgxpool.Pool, client string) int64 {
	t.Helper()
	var v int64
	err := pool.QueryRow(context.Background(), "SELECT last_mutation_id FROM "+pgx.Identifier{h.schema}.Sanitize()+".clients WHERE id = $1", client).Scan(&v)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
	return v
}

func panicGuard(t testing.TB, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(p)
				}
				t.Errorf("handler panicked on %s %s: %v", r.Method, r.URL.Path, p)
				panic(p)
			}
		}()
		h.ServeHTTP(w, r)
	})
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const testSecret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// keyOf is the idempotency key of mutation id of client in group, sent by
// user, under testSecret: computed here on its own, as a check.
func keyOf(user, group, client string, id int64) string {
	mac := hmac.New(sha256.New, []byte(testSecret))
	mac.Write([]byte(user + "\x00" + group + "\x00" + client + "\x00" + strconv.FormatInt(id, 10) + "\x00"))
	return hex.EncodeToString(mac.Sum(nil))
}

// waitRideOrWait waits until a pull sent to inst has chosen: it rides on
// the group's running fetch (waiting for the group's turn there) or waits
// for the group's row lock to lead a fetch of its own.
func (h *harness) waitRideOrWait(t testing.TB, inst *instance, what string) {
	t.Helper()
	proxytest.WaitFor(t, what, func() bool {
		var locked int
		err := inst.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0`, h.schema).Scan(&locked)
		return err == nil && locked > 0 || inst.sc.core.Turns.Waiting() > 0
	})
}
