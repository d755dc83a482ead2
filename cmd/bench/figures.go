package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// post sends body to the sidecar as user and returns the answer's status,
// its bytes as they came over the wire, and how many bytes that was.
func (b *bench) post(url, user string, body []byte, gzipped bool) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-User-Id", user)
	if gzipped {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// directPost is the push's limit, first half: the same POST sent straight
// to the API.
func (b *bench) directPost(key string) error {
	req, err := http.NewRequest(http.MethodPost, b.api.base+"/api/todos", bytes.NewReader([]byte(`{"id":"`+key+`","title":"x"}`)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("direct POST: %d", resp.StatusCode)
	}
	return nil
}

// bareTx is the push's limit, second half: a one-row transaction in three
// round trips, as any application writes one.
func bareTx(ctx context.Context, pg *pgxpool.Pool, row int) error {
	tx, err := pg.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE bench_limit SET n = n + 1 WHERE id = $1`, row); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

// directGets is a pull's limit: GET every page of user's list straight from
// the API and read it, returning the bytes read.
func (b *bench) directGets(user string) (int, error) {
	n := 0
	pages, _ := b.api.size(user)
	for p := 1; p <= pages; p++ {
		resp, err := b.client.Get(fmt.Sprintf("%s/api/%s/todos?page=%d", b.api.base, user, p))
		if err != nil {
			return 0, err
		}
		m, err := io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("direct GET: %d", resp.StatusCode)
		}
		n += int(m)
	}
	return n, nil
}

func pushBody(group, client string, first, n int) []byte {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `{"pushVersion":1,"clientGroupID":%q,"profileID":"p","schemaVersion":"","mutations":[`, group)
	for i := range n {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"id":%d,"clientID":%q,"name":"createTodo","timestamp":1,"args":{"id":"%s-%d","title":"x"}}`, first+i, client, group, first+i)
	}
	buf.WriteString("]}")
	return buf.Bytes()
}

func pullBody(group string, cookie json.RawMessage) []byte {
	if cookie == nil {
		cookie = json.RawMessage("null")
	}
	return fmt.Appendf(nil, `{"pullVersion":1,"clientGroupID":%q,"cookie":%s,"profileID":"p","schemaVersion":""}`, group, cookie)
}

// pulled checks a plain pull answer and returns its cookie and its number
// of put and del operations.
func pulled(status int, raw []byte) (cookie json.RawMessage, puts, dels int, err error) {
	if status != http.StatusOK {
		return nil, 0, 0, fmt.Errorf("pull answered %d: %.300s", status, raw)
	}
	var ans struct {
		Cookie json.RawMessage `json:"cookie"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, 0, 0, fmt.Errorf("pull answer is not JSON (%w): %.300s", err, raw)
	}
	if len(ans.Cookie) == 0 {
		return nil, 0, 0, fmt.Errorf("pull answer without a cookie: %.300s", raw)
	}
	return ans.Cookie, bytes.Count(raw, []byte(`{"op":"put"`)), bytes.Count(raw, []byte(`{"op":"del"`)), nil
}

// pushes: one push of 1, 10 and 100 mutations against the same number of
// direct calls plus one bare transaction.
func (b *bench) pushes(ctx context.Context) error {
	s, err := b.sidecar()
	if err != nil {
		return err
	}
	defer s.stop()
	for _, c := range []struct{ n, iters int }{{1, 1500}, {10, 300}, {100, 40}} {
		group := fmt.Sprintf("push-%d", c.n)
		var side, calls, txs []time.Duration
		next := 1
		for i := -3; i < b.iterations(c.iters); i++ { // three to warm up
			t0 := time.Now()
			for j := range c.n {
				if err := b.directPost(fmt.Sprintf("d-%d-%d-%d", c.n, i, j)); err != nil {
					return err
				}
			}
			t1 := time.Now()
			if err := bareTx(ctx, b.pg, 0); err != nil {
				return err
			}
			t2 := time.Now()
			status, raw, err := b.post(s.url+"/replicache/push", "pusher", pushBody(group, group+"-c", next, c.n), false)
			t3 := time.Now()
			if err != nil {
				return fmt.Errorf("push of %d: %w", c.n, err)
			}
			if status != http.StatusOK {
				return fmt.Errorf("push of %d answered %d: %.300s", c.n, status, raw)
			}
			next += c.n
			if i >= 0 {
				calls, txs, side = append(calls, t1.Sub(t0)), append(txs, t2.Sub(t1)), append(side, t3.Sub(t2))
			}
		}
		err := b.profile(s, fmt.Sprintf("push-%d", c.n), func() error {
			status, raw, err := b.post(s.url+"/replicache/push", "pusher", pushBody(group, group+"-c", next, c.n), false)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("push: %d %.300s", status, raw)
			}
			next += c.n
			return err
		})
		if err != nil {
			return err
		}
		call, tx, sc := median(calls), median(txs), median(side)
		limit := call + tx
		if c.n == 1 {
			b.add(row{"push of one mutation", ms(sc),
				fmt.Sprintf("%s (direct call %s + bare transaction %s)", ms(limit), ms(call), ms(tx)),
				ratio(sc, limit), "≤ 1.15×", met(sc, limit, 1.15)})
			continue
		}
		per := time.Duration(c.n)
		b.add(row{fmt.Sprintf("push of %d mutations, per mutation", c.n), ms(sc / per),
			fmt.Sprintf("%s (%d direct calls + one bare transaction, per mutation)", ms(limit/per), c.n),
			ratio(sc, limit), "", ""})
	}
	return nil
}

// tracedPushes: a push of one mutation with OpenTelemetry spans exported
// (OTLP/HTTP, to a collector that keeps nothing) against the same push
// without, alternating between two sidecars in one loop.
func (b *bench) tracedPushes(context.Context) error {
	plain, err := b.sidecar()
	if err != nil {
		return err
	}
	defer plain.stop()
	traced, err := b.sidecar("OTEL_EXPORTER_OTLP_ENDPOINT="+b.api.base, "OTEL_BSP_SCHEDULE_DELAY=100")
	if err != nil {
		return err
	}
	defer traced.stop()
	var without, with []time.Duration
	for i := -3; i < b.iterations(1500); i++ {
		for k, s := range []*sidecar{plain, traced} {
			group := fmt.Sprintf("traced-%d", k) // one each: the two share the database
			t0 := time.Now()
			status, raw, err := b.post(s.url+"/replicache/push", "tracer", pushBody(group, group+"-c", i+4, 1), false)
			d := time.Since(t0)
			if err != nil {
				return err
			}
			if status != http.StatusOK {
				return fmt.Errorf("push answered %d: %.300s", status, raw)
			}
			if i < 0 {
				continue
			}
			if s == plain {
				without = append(without, d)
			} else {
				with = append(with, d)
			}
		}
	}
	w, wo := median(with), median(without)
	b.add(row{"push of one mutation, OpenTelemetry spans exported", ms(w), ms(wo) + " (the same push, no exporter)", ratio(w, wo), "", ""})
	return nil
}

// resetPulls: reset pulls (SIDECAR_PATCH_MODE=reset) of 1k, 10k and 100k
// entities against GETting the same pages, and the sidecar's peak resident
// memory growth, each size in a fresh process, against the view's size.
// Each process is first warmed by pulls of a small view (warmPulls), so
// that what a process pays once (its code paged in, its connections and
// pools, the collector's first heap) is not counted as a pull's.
func (b *bench) resetPulls(context.Context) error {
	b.api.add("warm", 500, false)
	for _, c := range []struct{ n, iters int }{{1000, 500}, {10000, 100}, {100000, 15}} {
		user := fmt.Sprintf("reset%d", c.n)
		b.api.add(user, c.n, false)
		_, view := b.api.size(user)
		s, err := b.sidecar("SIDECAR_PATCH_MODE=reset")
		if err != nil {
			return err
		}
		err = b.warm(s)
		if err != nil {
			s.stop()
			return err
		}
		base, _, err := s.rss()
		if err == nil {
			err = s.resetPeak()
		}
		if err != nil {
			s.stop()
			return err
		}
		var side, direct []time.Duration
		var answer int
		for i := -1; i < b.iterations(c.iters); i++ {
			t0 := time.Now()
			if _, err := b.directGets(user); err != nil {
				s.stop()
				return err
			}
			t1 := time.Now()
			status, raw, err := b.post(s.url+"/replicache/pull", user, pullBody("g-"+user, nil), false)
			t2 := time.Now()
			if err == nil {
				var puts int
				if _, puts, _, err = pulled(status, raw); err == nil && puts != c.n {
					err = fmt.Errorf("reset of %d entities has %d puts", c.n, puts)
				}
			}
			if err != nil {
				s.stop()
				return err
			}
			answer = len(raw)
			if i >= 0 {
				direct, side = append(direct, t1.Sub(t0)), append(side, t2.Sub(t1))
			}
		}
		_, peak, err := s.rss()
		if err == nil {
			err = b.profile(s, fmt.Sprintf("reset-%d", c.n), func() error {
				status, raw, err := b.post(s.url+"/replicache/pull", user, pullBody("g-"+user, nil), false)
				if err == nil {
					_, _, _, err = pulled(status, raw)
				}
				return err
			})
		}
		if err != nil {
			s.stop()
			return err
		}
		d, sc := median(direct), median(side)
		b.add(row{fmt.Sprintf("reset pull, %s entities (%s from the API, %s answer)", count(c.n), mb(view), mb(answer)), ms(sc),
			ms(d) + " (direct GETs of the same pages)", ratio(sc, d), "≤ 3×", met(sc, d, 3)})
		growth := peak - base
		b.add(row{fmt.Sprintf("peak RSS growth during %s-entity reset pulls", count(c.n)), mb(int(growth)),
			mb(view) + " (the view)", fmt.Sprintf("%.1f×", float64(growth)/float64(view)), "≤ 3×", metRatio(float64(growth)/float64(view), 3)})
		if c.n == 10000 {
			if err := b.gzipPull(s, user, view, answer); err != nil {
				s.stop()
				return err
			}
		}
		s.stop()
	}
	return nil
}

// warmPulls is how many pulls of a 500-entity view warm a fresh sidecar
// before its memory is measured: enough to page in the pull's code and to
// bring the collector's heap to its floor (4 MB).
const warmPulls = 30

func (b *bench) warm(s *sidecar) error {
	for range b.iterations(warmPulls) {
		status, raw, err := b.post(s.url+"/replicache/pull", "warm", pullBody("g-warm", nil), false)
		if err == nil {
			_, _, _, err = pulled(status, raw)
		}
		if err != nil {
			return fmt.Errorf("warming the sidecar: %w", err)
		}
	}
	return nil
}

// gzipPull: the same reset pull with gzip accepted: bytes on the wire
// against the API's own pages compressed alike.
func (b *bench) gzipPull(s *sidecar, user string, view, plain int) error {
	var side, direct []time.Duration
	var wire int
	for i := -1; i < b.iterations(100); i++ {
		t0 := time.Now()
		if _, err := b.directGets(user); err != nil {
			return err
		}
		t1 := time.Now()
		status, raw, err := b.post(s.url+"/replicache/pull", user, pullBody("g-"+user, nil), true)
		t2 := time.Now()
		if err != nil {
			return fmt.Errorf("gzip pull: %w", err)
		}
		if status != http.StatusOK {
			return fmt.Errorf("gzip pull answered %d", status)
		}
		wire = len(raw)
		if i >= 0 {
			direct, side = append(direct, t1.Sub(t0)), append(side, t2.Sub(t1))
		}
	}
	var pages bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&pages, gzip.BestSpeed)
	pageCount, _ := b.api.size(user)
	for p := 1; p <= pageCount; p++ {
		resp, err := b.client.Get(fmt.Sprintf("%s/api/%s/todos?page=%d", b.api.base, user, p))
		if err != nil {
			return err
		}
		_, err = io.Copy(zw, resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
	}
	_ = zw.Close()
	d, sc := median(direct), median(side)
	b.add(row{"reset pull, 10,000 entities, gzip accepted", fmt.Sprintf("%s, %s on the wire (%s plain)", ms(sc), mb(wire), mb(plain)),
		fmt.Sprintf("%s direct GETs; the API's %s gzipped alike: %s", ms(d), mb(view), mb(pages.Len())),
		fmt.Sprintf("%s, bytes %.2f×", ratio(sc, d), float64(wire)/float64(pages.Len())), "", ""})
	return nil
}

// diffPulls: pulls of a 10,000-entity view in diff mode (the default) with
// the previous answer's cookie: nothing changed, 1% changed, and nothing
// changed with an API that answers ETags.
func (b *bench) diffPulls(context.Context) error {
	s, err := b.sidecar()
	if err != nil {
		return err
	}
	defer s.stop()
	b.api.add("diff", 10000, false)
	b.api.add("etag", 10000, true)
	for _, c := range []struct {
		name, user string
		step       int // change every step'th item before each pull; 0 for none
	}{
		{"diff pull, 10,000 entities, nothing changed", "diff", 0},
		{"diff pull, 10,000 entities, 1% changed", "diff", 100},
		{"diff pull, 10,000 entities, nothing changed, the API answers ETags", "etag", 0},
	} {
		group := fmt.Sprintf("g-%s-%d", c.user, c.step)
		status, raw, err := b.post(s.url+"/replicache/pull", c.user, pullBody(group, nil), false)
		if err != nil {
			return err
		}
		cookie, _, _, err := pulled(status, raw)
		if err != nil {
			return err
		}
		var side, direct []time.Duration
		var answer int
		for i := -2; i < b.iterations(100); i++ {
			changed := 0
			if c.step > 0 {
				changed = b.api.change(c.user, c.step)
			}
			t0 := time.Now()
			if _, err := b.directGets(c.user); err != nil {
				return err
			}
			t1 := time.Now()
			status, raw, err := b.post(s.url+"/replicache/pull", c.user, pullBody(group, cookie), false)
			t2 := time.Now()
			if err != nil {
				return err
			}
			var puts, dels int
			if cookie, puts, dels, err = pulled(status, raw); err != nil {
				return err
			}
			if puts != changed || dels != 0 || bytes.Contains(raw, []byte(`"clear"`)) {
				return fmt.Errorf("%s: %d puts, %d dels for %d changes: %.300s", c.name, puts, dels, changed, raw)
			}
			answer = len(raw)
			if i >= 0 {
				direct, side = append(direct, t1.Sub(t0)), append(side, t2.Sub(t1))
			}
		}
		err = b.profile(s, fmt.Sprintf("diff-%s-%d", c.user, c.step), func() error {
			if c.step > 0 {
				b.api.change(c.user, c.step)
			}
			status, raw, err := b.post(s.url+"/replicache/pull", c.user, pullBody(group, cookie), false)
			if err == nil {
				cookie, _, _, err = pulled(status, raw)
			}
			return err
		})
		if err != nil {
			return err
		}
		d, sc := median(direct), median(side)
		b.add(row{c.name, fmt.Sprintf("%s, %s answer", ms(sc), mb(answer)), ms(d) + " (direct GETs)", ratio(sc, d), "", ""})
	}
	return nil
}

// groups: 50 and 200 client groups each pushing one mutation at a time, as
// fast as answers come, against the same number of workers running bare
// transactions at once.
func (b *bench) groups(ctx context.Context) error {
	s, err := b.sidecar()
	if err != nil {
		return err
	}
	defer s.stop()
	for _, workers := range []int{50, 200} {
		var conns atomic.Int64
		sampling, stopSampling := context.WithCancel(ctx)
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for sampling.Err() == nil {
				var n int64
				if b.pg.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replicache-sidecar'`).Scan(&n) == nil && n > conns.Load() {
					conns.Store(n)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		next := make([]int, workers) // each group's last mutation id
		push := func(w, _ int) error {
			group := fmt.Sprintf("load%d-%d", workers, w)
			next[w]++
			status, raw, err := b.post(s.url+"/replicache/push", "loader", pushBody(group, group+"-c", next[w], 1), false)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("push answered %d: %.200s", status, raw)
			}
			return err
		}
		cpu0 := b.cpuTimes(s)
		side, errs := load(workers, b.duration(5*time.Second), push)
		cpuSide := cpuShare(cpu0, b.cpuTimes(s), side.wall)
		stopSampling()
		<-sampled
		err := b.profile(s, fmt.Sprintf("groups-%d", workers), func() error {
			if _, f := load(workers, time.Second, push); f.n > 0 {
				return f.first
			}
			return nil
		})
		if err != nil {
			return err
		}
		pool, err := pgxpool.New(ctx, b.db+sep(b.db)+fmt.Sprintf("pool_max_conns=%d", workers))
		if err != nil {
			return err
		}
		cpu0 = b.cpuTimes(s)
		limit, limitErrs := load(workers, b.duration(5*time.Second), func(w, _ int) error { return bareTx(ctx, pool, w%256) })
		cpuLimit := cpuShare(cpu0, b.cpuTimes(s), limit.wall)
		pool.Close()
		if limitErrs.n > 0 {
			return fmt.Errorf("bare transactions failed: %w", limitErrs.first)
		}
		tput, ltput := side.rate(), limit.rate()
		p50, p99 := side.quantile(0.5), side.quantile(0.99)
		r := row{
			figure:  fmt.Sprintf("%d client groups pushing at once", workers),
			sidecar: fmt.Sprintf("%s mutations/s, p50 %s, p99 %s, %d errors, %d Postgres connections", count(int(tput)), ms(p50), ms(p99), errs.n, conns.Load()),
			limit: fmt.Sprintf("%s transactions/s (%d connections), p50 %s, p99 %s", count(int(ltput)), workers,
				ms(limit.quantile(0.5)), ms(limit.quantile(0.99))),
			ratio: fmt.Sprintf("%.2f×, p99/p50 %.1f", tput/ltput, float64(p99)/float64(p50)),
		}
		if workers == 50 {
			r.target, r.met = "≥ 0.25×", yes(tput/ltput >= 0.25 && errs.n == 0)
		} else {
			r.target, r.met = "0 errors, p99 ≤ 5× p50", yes(errs.n == 0 && p99 <= 5*p50)
		}
		if errs.n > 0 {
			r.sidecar += fmt.Sprintf(" (first: %v)", errs.first)
		}
		b.add(r)
		b.add(row{figure: fmt.Sprintf("CPU used during the %d groups (%% of one core; %d cores)", workers, runtime.NumCPU()),
			sidecar: cpuSide, limit: cpuLimit})
	}
	return nil
}

func sep(url string) string {
	if strings.Contains(url, "?") {
		return "&"
	}
	return "?"
}

type samples struct {
	lat  []time.Duration
	wall time.Duration
}

func (s samples) rate() float64 { return float64(len(s.lat)) / s.wall.Seconds() }

func (s samples) quantile(q float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	return s.lat[min(len(s.lat)-1, int(q*float64(len(s.lat))))]
}

type failures struct {
	n     int
	first error
}

// load runs workers loops of op for d and returns every successful op's
// latency (sorted) and the failures.
func load(workers int, d time.Duration, op func(worker, i int) error) (samples, failures) {
	var mu sync.Mutex
	var all samples
	var fails failures
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var mine []time.Duration
			for i := 1; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				err := op(w, i)
				if err != nil {
					mu.Lock()
					if fails.n++; fails.first == nil {
						fails.first = err
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			all.lat = append(all.lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	all.wall = time.Since(start)
	slices.Sort(all.lat)
	return all, fails
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
