package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// The pull engine's own tests drive it without the rest of the sidecar: a
// Core over a schema of the test's own in the real Postgres, migrated, and
// proxytest's legacy API as the upstream; pulls go straight to
// Engine.ServeHTTP. (Package proxy's tests drive it through the whole
// sidecar.)

// testEngine is a pull engine and what it reads.
type testEngine struct {
	*Engine
	up   *proxytest.LegacyAPI
	logs *proxytest.Buffer // the engine's JSON logs, at debug level
}

// newTestEngine starts a pull engine reading alice's and bob's todos from a
// legacy API of its own.
func newTestEngine(t *testing.T) *testEngine {
	t.Helper()
	up := proxytest.NewLegacyAPI(t)
	mappingFile := filepath.Join(t.TempDir(), "mapping.json")
	const mapping = `{"mutators": {"createTodo": {"method": "POST", "path": "/api/todos"}},
	  "clientView": [{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}}]}`
	if err := os.WriteFile(mappingFile, []byte(mapping), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(map[string]string{
		"SIDECAR_UPSTREAM_URL": up.Server.URL,
		"SIDECAR_DATABASE_URL": proxytest.DatabaseURL(t),
		"SIDECAR_MAPPING_FILE": mappingFile,
		"SIDECAR_DB_SCHEMA":    proxytest.NewSchema(t),
		"SIDECAR_AUTH_PATH":    "/api/me",
	})
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	pc, err := store.PoolConfig(cfg.PoolOptions())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	logs := &proxytest.Buffer{}
	// As package proxy's harness: under SIDECAR_TEST_TRACING (make test-go
	// runs the package so once more) spans are recorded, and must change
	// nothing the tests see.
	var tracer trace.Tracer
	if os.Getenv("SIDECAR_TEST_TRACING") != "" {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		tracer = tp.Tracer("test")
	}
	c := engine.New(engine.Options{Config: cfg, Pool: pool, Registerer: prometheus.NewRegistry(), Tracer: tracer,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err := c.Migrate(context.Background()); err != nil {
		t.Fatalf("migrating: %v", err)
	}
	return &testEngine{Engine: New(c), up: up, logs: logs}
}

// create adds a todo of user's straight to the API.
func (e *testEngine) create(t *testing.T, user, id string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.up.Server.URL+"/api/todos", strings.NewReader(`{"id":"`+id+`","title":"t `+id+`"}`))
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("creating %s's todo %s: %d", user, id, resp.StatusCode)
	}
}

// pullRequestOf is alice's pull of group g with cookie, under ctx.
func pullRequestOf(t *testing.T, ctx context.Context, cookie any) *http.Request {
	t.Helper()
	body, err := json.Marshal(map[string]any{"pullVersion": 1, "profileID": "p1", "clientGroupID": "g", "cookie": cookie, "schemaVersion": ""})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/replicache/pull", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Authorization", "Bearer alice")
	return r
}

// answer is a decoded PullResponse's cookie order, and the raw answer.
type answer struct {
	Cookie struct {
		Order int64 `json:"order"`
	} `json:"cookie"`
	code int
	raw  string
}

// pull sends alice's pull of g with cookie and decodes its answer.
func (e *testEngine) pull(t *testing.T, cookie any) answer {
	t.Helper()
	w := httptest.NewRecorder()
	e.ServeHTTP(w, pullRequestOf(t, context.Background(), cookie))
	return decodeAnswer(t, w)
}

func decodeAnswer(t *testing.T, w *httptest.ResponseRecorder) answer {
	t.Helper()
	a := answer{code: w.Code, raw: w.Body.String()}
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
			t.Fatalf("pull answered 200 with a body that is not a PullResponse: %v\n%s", err, w.Body)
		}
	}
	return a
}

// cookieOf is the raw cookie of a pull's answer.
func cookieOf(t *testing.T, a answer) json.RawMessage {
	t.Helper()
	var v struct {
		Cookie json.RawMessage `json:"cookie"`
	}
	if err := json.Unmarshal([]byte(a.raw), &v); err != nil || len(v.Cookie) == 0 {
		t.Fatalf("no cookie in %s (%v)", a.raw, err)
	}
	return v.Cookie
}

// refusedRider boards a flight the test leads (its leader never reads a
// count of routed changes, so the seal refuses every rider), as a pull of
// alice's group g with cookie sent through the pull handler with ctx, and
// returns the flight and a channel that yields the handler's answer once
// it has returned.
func (e *testEngine) refusedRider(t *testing.T, ctx context.Context, cookie any) (*flight.Flight[pullMeta, *pullRider], <-chan *httptest.ResponseRecorder) {
	t.Helper()
	// The flight's key, as the pull will make it.
	var req pullRequest
	c, ok := e.Begin(httptest.NewRecorder(), pullRequestOf(t, context.Background(), cookie), metrics.EndpointPull, &req, nil)
	if !ok {
		t.Fatal("the pull was refused before its work")
	}
	key := e.flightKey(req.ClientGroupID, c)
	c.Mem.Release()
	meta := pullMeta{gen: e.Hub.Generation("alice"), changes: new(atomic.Int64)}
	meta.changes.Store(-1)
	f, leader, err := e.flights.Join(key, meta, nil, nil)
	if err != nil || !leader {
		t.Fatalf("the test does not lead the flight (leader %v, %v)", leader, err)
	}
	out := make(chan *httptest.ResponseRecorder, 1)
	before := e.Turns.Waiting()
	go func() {
		w := httptest.NewRecorder()
		e.ServeHTTP(w, pullRequestOf(t, ctx, cookie))
		out <- w
	}()
	proxytest.WaitFor(t, "the pull to board the flight", func() bool { return e.Turns.Waiting() > before })
	return f, out
}

// noCount is a leader's count of routed changes that cannot be read.
func noCount() (int64, error) { return 0, errors.New("no count in this test") }

// TestRefusedRiderLeadsItsOwnFetch: a rider the leader refuses at the
// seal (a change was routed while it boarded) is answered once, from a
// fetch of its own: the view as it is, under a cookie no lower than its
// own (the same one here: nothing changed since it was issued).
func TestRefusedRiderLeadsItsOwnFetch(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t)
	e.create(t, "alice", "one")
	a0 := e.pull(t, nil)
	if a0.code != 200 {
		t.Fatalf("pull = %d %s", a0.code, a0.raw)
	}
	f, out := e.refusedRider(t, context.Background(), cookieOf(t, a0))
	if riders := (leading{f}).seal(noCount); len(riders) != 0 {
		t.Fatalf("the seal answers %d riders from a fetch that read no count; want none", len(riders))
	}
	var reads atomic.Int64 // the view's reads from here on
	e.up.SetHook(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" {
			reads.Add(1)
		}
		return false
	})
	f.Land(nil)
	got := decodeAnswer(t, <-out)
	if reads.Load() == 0 {
		t.Error("the refused rider was answered without reading the view; want a fetch of its own")
	}
	if got.code != 200 || strings.Contains(got.raw, "ClientStateNotFound") {
		t.Fatalf("the refused rider was answered %d %s; want its own pull's answer", got.code, got.raw)
	}
	if got.Cookie.Order < a0.Cookie.Order {
		t.Errorf("the refused rider's cookie order is %d, below its own %d", got.Cookie.Order, a0.Cookie.Order)
	}
}

// TestRefusedRiderWhoseClientLeft: a rider refused at the seal whose
// client leaves as the flight lands was taken for a pull whose cookie
// cannot grow (it has no answer, and its context had ended by the time it
// looked): the handler warned "the group's cookie cannot grow any further"
// and answered ClientStateNotFound, which tells a client that is still
// there to start over. (The same switch read the rider's refusal when its
// context had ended before the flight landed, while the leader could still
// be writing it: a data race.) A rider whose client left ends as one:
// nothing answered, nothing warned.
func TestRefusedRiderWhoseClientLeft(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t)
	a0 := e.pull(t, nil)
	if a0.code != 200 {
		t.Fatalf("pull = %d %s", a0.code, a0.raw)
	}
	cookie := cookieOf(t, a0)
	// The client leaves right after the flight lands: whether the rider
	// looks at its context before or after that is up to the scheduler, so
	// the case is tried a number of times (every order is correct once
	// fixed; on the old code most end as described).
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		f, out := e.refusedRider(t, ctx, cookie)
		(leading{f}).seal(noCount)
		f.Land(nil)
		cancel()
		w := <-out
		if strings.Contains(w.Body.String(), "ClientStateNotFound") {
			t.Fatalf("try %d: a refused rider whose client left was answered %d %s; want nothing (or its own pull's answer)", i, w.Code, w.Body)
		}
	}
	if strings.Contains(e.logs.String(), "cannot grow any further") {
		t.Error("a refused rider whose client left was logged as a cookie that cannot grow")
	}
}
