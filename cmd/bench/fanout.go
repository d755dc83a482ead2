package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// What a change costs the API behind the sidecar (the delta-reads issue):
// N users with open clients, each pulling on every poke, as a new user's
// app would; one user's change; then the GETs and bytes the API served and
// the time until the last client had pulled after it. The API is the demo's
// (cmd/todo-api: link pages of 50, /api/lists, /api/me as the auth call and
// a source), behind a meter that counts what it serves.

// fanMapping is the demo's mapping, with or without the sources' changes
// and maxAge (without: every pull reads every page of every source).
func fanMapping(delta bool) string {
	changes, maxAge := "", ""
	if delta {
		changes = `, "changes": {"param": "updated_after", "field": "updated_at"}`
		maxAge = `, "maxAge": "1m"`
	}
	return `{
  "mutators": {"createTodo": {"method": "POST", "path": "/api/todos"}},
  "clientView": [
    {"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}` + changes + `},
    {"path": "/api/lists", "items": "lists", "key": "list/{id}", "pagination": {"type": "link"}` + changes + `},
    {"path": "/api/me", "key": "me"` + maxAge + `}
  ]
}`
}

// meter is a reverse proxy in front of the API that counts the GETs it
// forwards, the bytes of their answers, and the most in flight at once.
type meter struct {
	target string
	client *http.Client
	srv    *http.Server
	url    string

	gets, bytes, inflight, peak atomic.Int64
}

func startMeter(target string) (*meter, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &meter{target: target, url: "http://" + l.Addr().String(),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1000, DisableCompression: true}}}
	m.srv = &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = m.srv.Serve(l) }()
	return m, nil
}

func (m *meter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		m.gets.Add(1)
		n := m.inflight.Add(1)
		defer m.inflight.Add(-1)
		for {
			p := m.peak.Load()
			if n <= p || m.peak.CompareAndSwap(p, n) {
				break
			}
		}
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, m.target+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := m.client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	n, _ := io.Copy(w, resp.Body)
	if r.Method == http.MethodGet {
		m.bytes.Add(n)
	}
}

// reset starts a new count.
func (m *meter) reset() { m.gets.Store(0); m.bytes.Store(0); m.peak.Store(m.inflight.Load()) }

func (m *meter) close() { _ = m.srv.Close() }

// demoAPI is cmd/todo-api, built beside the sidecar, in its own process.
type demoAPI struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
}

func startDemoAPI(bin string) (*demoAPI, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	a := &demoAPI{url: "http://" + addr, done: make(chan struct{})}
	a.cmd = exec.Command(filepath.Join(filepath.Dir(bin), "todo-api"), "-addr", addr, "-page-size", "50")
	a.cmd.Stderr = io.Discard // a log line per request
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("todo-api (`make bench` builds it beside the sidecar): %w", err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(a.url + "/healthz"); err == nil {
			_ = resp.Body.Close()
			return a, nil
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, errors.New("todo-api did not start within 10s")
		}
	}
}

func (a *demoAPI) stop() {
	_ = a.cmd.Process.Kill()
	<-a.done
}

// send makes one call straight at the API, as user, and wants status.
func (a *demoAPI) send(client *http.Client, method, user, path, body string, status int) error {
	req, _ := http.NewRequest(method, a.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != status {
		return fmt.Errorf("seeding: %s %s answered %d", method, path, resp.StatusCode)
	}
	return nil
}

// seed gives each user n todos and one list, straight at the API.
func (a *demoAPI) seed(client *http.Client, users []string, n int) error {
	post := func(user, path, body string) error {
		return a.send(client, http.MethodPost, user, path, body, http.StatusCreated)
	}
	for _, u := range users {
		if err := post(u, "/api/lists", fmt.Sprintf(`{"id":"%s-list","name":"groceries"}`, u)); err != nil {
			return err
		}
		for i := range n {
			if err := post(u, "/api/todos", fmt.Sprintf(`{"id":"%s-%d","title":"todo %d of %s","listID":"%s-list"}`, u, i, i, u, u)); err != nil {
				return err
			}
		}
	}
	// A delta read re-reads changes.overlap (5 s by default) before the
	// newest change it has seen. Items created in one burst would all be
	// read again on every pull; a real collection's items are mostly
	// older than its newest change. So: one more change per user, later.
	time.Sleep(6 * time.Second)
	for _, u := range users {
		if err := a.send(client, http.MethodPatch, u, "/api/todos/"+u+"-0", `{"done":true}`, http.StatusOK); err != nil {
			return err
		}
	}
	return nil
}

// fanClient is one open client: a poke stream, and a pull on every poke.
type fanClient struct {
	user, group string
	sidecar     string
	http        *http.Client

	mu        sync.Mutex
	cookie    json.RawMessage
	pulls     []pullDone // since the last take
	poked     chan struct{}
	streamErr error
	mutations int // the last mutation id pushed
}

type pullDone struct {
	started, ended time.Time
	body           []byte
}

func (c *fanClient) pull(ctx context.Context) error {
	c.mu.Lock()
	cookie := c.cookie
	c.mu.Unlock()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.sidecar+"/replicache/pull", bytes.NewReader(pullBody(c.group, cookie)))
	req.Header.Set("Authorization", "Bearer "+c.user)
	req.Header.Set("Content-Type", "application/json")
	started := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return err
	}
	next, _, _, err := pulled(resp.StatusCode, raw)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.cookie = next
	c.pulls = append(c.pulls, pullDone{started, time.Now(), raw})
	c.mu.Unlock()
	return nil
}

// take returns the pulls done since the last take.
func (c *fanClient) take() []pullDone {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.pulls
	c.pulls = nil
	return out
}

// run opens the poke stream and pulls whenever it is poked, until ctx ends.
func (c *fanClient) run(ctx context.Context, opened chan<- error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.sidecar+"/replicache/poke", nil)
	req.Header.Set("Authorization", "Bearer "+c.user)
	resp, err := c.http.Do(req)
	if err == nil && resp.StatusCode != http.StatusOK {
		_ = resp.Body.Close()
		err = fmt.Errorf("poke stream answered %d", resp.StatusCode)
	}
	opened <- err
	if err != nil {
		return
	}
	defer func() { _ = resp.Body.Close() }()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.poked:
				if err := c.pull(ctx); err != nil && ctx.Err() == nil {
					c.mu.Lock()
					c.streamErr = err
					c.mu.Unlock()
				}
			}
		}
	}()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "event: poke" {
			select {
			case c.poked <- struct{}{}:
			default: // a pull is due already
			}
		}
	}
}

// fleet is many open clients of one sidecar.
type fleet struct {
	clients []*fanClient
	cancel  context.CancelFunc
}

// openFleet opens perUser clients (client groups) for each user, pulls
// each once (its reset), and waits until every stream is open.
func openFleet(sidecarURL string, users []string, perUser int) (*fleet, error) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{cancel: cancel}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4000, DisableCompression: true, IdleConnTimeout: time.Minute}}
	opened := make(chan error, len(users)*perUser)
	for _, u := range users {
		for g := range perUser {
			c := &fanClient{user: u, group: fmt.Sprintf("fan-%s-%d-%d", u, g, time.Now().UnixNano()), sidecar: sidecarURL, http: hc, poked: make(chan struct{}, 1)}
			f.clients = append(f.clients, c)
			go c.run(ctx, opened)
		}
	}
	for range f.clients {
		if err := <-opened; err != nil {
			f.close()
			return nil, err
		}
	}
	// Every client's first pull (its reset), a few at a time.
	sem := make(chan struct{}, 16)
	errs := make(chan error, len(f.clients))
	for _, c := range f.clients {
		sem <- struct{}{}
		go func() { defer func() { <-sem }(); errs <- c.pull(ctx) }()
	}
	for range f.clients {
		if err := <-errs; err != nil {
			f.close()
			return nil, fmt.Errorf("first pull: %w", err)
		}
	}
	return f, nil
}

func (f *fleet) close() { f.cancel() }

// settle waits until no client has pulled for quiet, and forgets their
// pulls.
func (f *fleet) settle(quiet time.Duration) {
	last := time.Now()
	for time.Since(last) < quiet {
		time.Sleep(quiet / 5)
		for _, c := range f.clients {
			if len(c.take()) > 0 {
				last = time.Now()
			}
		}
	}
}

// wave is what one change cost: the time until the last client pulled
// after it (the writer's groups: a pull holding the new todo).
type wave struct {
	last              time.Duration
	gets, bytes, peak int64
}

// change pushes a create as writer's first group and waits until every
// client has pulled after it; then until quiet, for the meter to count
// everything the change caused.
func (f *fleet) change(m *meter, writer *fanClient, id string) (wave, error) {
	time.Sleep(1100 * time.Millisecond) // past SIDECAR_POKE_CALLER_INTERVAL since the last change
	f.settle(300 * time.Millisecond)
	m.reset()
	writer.mutations++
	body := fmt.Appendf(nil, `{"pushVersion":1,"clientGroupID":%q,"profileID":"p","schemaVersion":"","mutations":[{"id":%d,"clientID":%q,"name":"createTodo","timestamp":1,"args":{"id":%q,"title":"the change"}}]}`,
		writer.group, writer.mutations, writer.group+"-c", id)
	req, _ := http.NewRequest(http.MethodPost, writer.sidecar+"/replicache/push", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+writer.user)
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := writer.http.Do(req)
	if err != nil {
		return wave{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return wave{}, fmt.Errorf("push answered %d", resp.StatusCode)
	}
	has := make([]time.Duration, len(f.clients))
	deadline := time.Now().Add(30 * time.Second)
	for missing := len(f.clients); missing > 0; {
		if time.Now().After(deadline) {
			return wave{}, fmt.Errorf("%d of %d clients had not pulled the change after 30s", missing, len(f.clients))
		}
		time.Sleep(5 * time.Millisecond)
		missing = 0
		for i, c := range f.clients {
			c.mu.Lock()
			err := c.streamErr
			c.mu.Unlock()
			if err != nil {
				return wave{}, err
			}
			if has[i] == 0 {
				for _, p := range c.take() {
					if p.started.After(t0) && (c.user != writer.user || bytes.Contains(p.body, []byte(id))) {
						has[i] = p.ended.Sub(t0)
						break
					}
				}
			}
			if has[i] == 0 {
				missing++
			}
		}
	}
	f.settle(300 * time.Millisecond)
	return wave{last: slices.Max(has), gets: m.gets.Load(), bytes: m.bytes.Load(), peak: m.peak.Load()}, nil
}

// fanSidecar starts a sidecar in front of the meter with the demo's
// identification (GET /api/me with the caller's token) and a mapping.
func (b *bench) fanSidecar(name string, m *meter, delta bool, env ...string) (*sidecar, error) {
	path := filepath.Join(b.dir, name+".json")
	if err := os.WriteFile(path, []byte(fanMapping(delta)), 0o600); err != nil {
		return nil, err
	}
	return startSidecar(b.o.bin, append([]string{
		"SIDECAR_UPSTREAM_URL=" + m.url,
		"SIDECAR_DATABASE_URL=" + b.db,
		"SIDECAR_DB_SCHEMA=" + b.schema + "_" + name,
		"SIDECAR_MAPPING_FILE=" + path,
		"SIDECAR_AUTH_PATH=/api/me",
		"SIDECAR_LOG_LEVEL=" + cmp.Or(os.Getenv("BENCH_SIDECAR_LOG_LEVEL"), "warn"),
	}, env...)...)
}

// fanout: issue 27's scenario. 40 users, one open client each, 200 todos
// each; one user's change, with and without the sources' changes; the
// limit is one user's reset pull (what a fresh client costs the API).
func (b *bench) fanout(context.Context) error {
	api, err := startDemoAPI(b.o.bin)
	if err != nil {
		return err
	}
	defer api.stop()
	m, err := startMeter(api.url)
	if err != nil {
		return err
	}
	defer m.close()
	nUsers, nTodos, rounds := 40, 200, 5
	if b.o.quick {
		nUsers, nTodos, rounds = 5, 40, 1
	}
	var users []string
	for i := range nUsers {
		users = append(users, fmt.Sprintf("u%02d", i))
	}
	if err := api.seed(b.client, users, nTodos); err != nil {
		return err
	}
	var reset wave
	for _, delta := range []bool{false, true} {
		name := "fan_full"
		if delta {
			name = "fan_delta"
		}
		s, err := b.fanSidecar(name, m, delta)
		if err != nil {
			return err
		}
		f, err := openFleet(s.url, users, 1)
		if err != nil {
			s.stop()
			return err
		}
		if !delta {
			// The limit: one user's fresh client, its first pull.
			f.settle(300 * time.Millisecond)
			m.reset()
			fresh := &fanClient{user: users[0], group: "fan-fresh", sidecar: s.url, http: b.client}
			if err := fresh.pull(context.Background()); err != nil {
				f.close()
				s.stop()
				return err
			}
			reset = wave{gets: m.gets.Load(), bytes: m.bytes.Load()}
		}
		w, err := f.waves(m, name, rounds)
		f.close()
		s.stop()
		if err != nil {
			return err
		}
		how := "every source read in full"
		if delta {
			how = "`changes` on todos and lists, `maxAge` on /api/me"
		}
		ratioBytes := float64(w.bytes) / float64(reset.bytes)
		target, ok := "", ""
		if delta {
			target, ok = "≤ 1× (bytes)", yes(ratioBytes <= 1)
		}
		b.add(row{fmt.Sprintf("one change, %d users with one open client each (%d todos each), %s: what the API serves", nUsers, nTodos, how),
			fmt.Sprintf("%s GETs, %s", count(int(w.gets)), mb(int(w.bytes))),
			fmt.Sprintf("one user's reset pull: %d GETs, %s", reset.gets, mb(int(reset.bytes))),
			fmt.Sprintf("%.1f× (bytes)", ratioBytes), target, ok})
		b.add(row{fmt.Sprintf("one change, %d users, %s: until the last client has pulled it", nUsers, how),
			ms(w.last), "the goal: every client within 1 s", "", "≤ 1 s", yes(w.last <= time.Second)})
	}
	return nil
}

// thousand: a wave of 1,000 open clients (50 users, 20 client groups
// each), all poked by one change, with delta sources; with the default
// bound on the sidecar's upstream requests in flight, and with
// SIDECAR_UPSTREAM_MAX_INFLIGHT=8.
func (b *bench) thousand(context.Context) error {
	api, err := startDemoAPI(b.o.bin)
	if err != nil {
		return err
	}
	defer api.stop()
	m, err := startMeter(api.url)
	if err != nil {
		return err
	}
	defer m.close()
	nUsers, perUser, nTodos, rounds := 50, 20, 200, 3
	if b.o.quick {
		nUsers, perUser, nTodos, rounds = 5, 10, 20, 1
	}
	var users []string
	for i := range nUsers {
		users = append(users, fmt.Sprintf("w%02d", i))
	}
	if err := api.seed(b.client, users, nTodos); err != nil {
		return err
	}
	clients := nUsers * perUser
	// The default bound (32, not set here) and a tight one.
	for _, bound := range []int{32, 8} {
		name, env := "wave_default", []string{"SIDECAR_POKE_MAX_SUBSCRIBERS=5000"}
		if bound != 32 {
			name = "wave_bound"
			env = append(env, fmt.Sprintf("SIDECAR_UPSTREAM_MAX_INFLIGHT=%d", bound))
		}
		s, err := b.fanSidecar(name, m, true, env...)
		if err != nil {
			return err
		}
		f, err := openFleet(s.url, users, perUser)
		if err != nil {
			s.stop()
			return err
		}
		w, err := f.waves(m, name, rounds)
		f.close()
		s.stop()
		if err != nil {
			return err
		}
		b.add(row{fmt.Sprintf("%s clients (%d users × %d groups) poked by one change, delta sources, SIDECAR_UPSTREAM_MAX_INFLIGHT=%d: until the last client has pulled it; the most requests the API saw at once; what it served",
			count(clients), nUsers, perUser, bound),
			fmt.Sprintf("%s; %d at once; %s GETs, %s", ms(w.last), w.peak, count(int(w.gets)), mb(int(w.bytes))),
			fmt.Sprintf("the bound: %d at once", bound), "", fmt.Sprintf("≤ %d at once", bound), yes(w.peak <= int64(bound))})
	}
	return nil
}

// waves makes rounds changes, one at a time, as the first client: each
// figure's median (the most at once: the greatest).
func (f *fleet) waves(m *meter, name string, rounds int) (wave, error) {
	var ws []wave
	for r := range rounds {
		w, err := f.change(m, f.clients[0], fmt.Sprintf("change-%s-%d", name, r))
		if err != nil {
			return wave{}, fmt.Errorf("%s: %w", name, err)
		}
		ws = append(ws, w)
	}
	return medianWave(ws), nil
}

// medianWave takes each figure's median over the waves.
func medianWave(ws []wave) wave {
	var last []time.Duration
	var gets, byts, peak []int64
	for _, w := range ws {
		last, gets, byts, peak = append(last, w.last), append(gets, w.gets), append(byts, w.bytes), append(peak, w.peak)
	}
	mid := func(v []int64) int64 { slices.Sort(v); return v[len(v)/2] }
	return wave{last: median(last), gets: mid(gets), bytes: mid(byts), peak: slices.Max(peak)}
}
