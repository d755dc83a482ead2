package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// The poke-stream figures: what an idle stream costs the sidecar, how long
// one push takes to poke them all, a poke across two replicas of an idle
// system, and 1,000 streams of one client group pulling on one push.
//
// The streams are opened by this process (the load), not the sidecar's,
// from many loopback source addresses (127.0.0.2, .3, …: a few hundred
// streams each), so no single source address runs out of ephemeral ports.
// These machines allow 20,000 open files per process, so one replica is
// measured with at most 15,000 streams.

// streamsPerSource is how many streams share one loopback source address.
const streamsPerSource = 250

// pokes runs every poke-stream figure.
func (b *bench) pokes(ctx context.Context) error {
	if err := b.idleStreams(); err != nil {
		return fmt.Errorf("idle streams: %w", err)
	}
	if err := b.pokeAcross(ctx); err != nil {
		return fmt.Errorf("across replicas: %w", err)
	}
	if err := b.groupStreams(); err != nil {
		return fmt.Errorf("one group: %w", err)
	}
	return nil
}

// streamSidecar starts a sidecar for the stream figures: streams from
// every loopback address may name their user (X-User-Id), and a process
// may hold max streams.
func (b *bench) streamSidecar(max int, env ...string) (*sidecar, error) {
	return b.sidecar(append([]string{"SIDECAR_TRUSTED_PROXIES=127.0.0.0/8",
		"SIDECAR_POKE_MAX_SUBSCRIBERS=" + strconv.Itoa(max)}, env...)...)
}

// idleStreams: resident memory per idle stream at two counts in one
// process (1,000 and 15,000; a few hundred in -quick), each stream a user
// of its own, and the time from one push to the poke on the last of them.
func (b *bench) idleStreams() error {
	small, large := 1000, 15000
	if b.o.quick {
		small, large = 100, 300
	}
	s, err := b.streamSidecar(large + 1000)
	if err != nil {
		return err
	}
	defer s.stop()
	// Warm up what a push and a pull start (pools, the breaker, the
	// listener), so that only the streams grow the process from here.
	if err := b.pushOne(s, "pusher", "idle-g", 1); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	base, err := settledRSS(s)
	if err != nil {
		return err
	}
	slab0 := slab()
	load := newStreamLoad(s.url)
	defer load.close()
	perStream := map[int]float64{}
	for _, n := range []int{small, large} {
		if err := load.open(n-len(load.streams), func(i int) string { return fmt.Sprintf("idle%d", i) }, nil); err != nil {
			return err
		}
		if err := waitSubscribers(s, n); err != nil {
			return err
		}
		rss, err := settledRSS(s)
		if err != nil {
			return err
		}
		per := float64(rss-base) / float64(n)
		perStream[n] = per
		fig := fmt.Sprintf("idle poke streams: resident memory per stream, %s streams in one replica", count(n))
		got := fmt.Sprintf("%.1f KiB (RSS %s → %s)", per/1024, mib(base), mib(rss))
		if n == large {
			fig += fmt.Sprintf(" (%.2f× the figure at %s)", per/perStream[small], count(small))
			// The kernel's side (socket, file): not the process's memory,
			// but a container's limit counts it. Both ends of each
			// connection are on this machine, and the figure is the
			// machine's: an estimate.
			if !b.o.quick {
				got += fmt.Sprintf("; kernel slab +%.1f KiB per connection, both ends", float64(slab()-slab0)/float64(n)/1024)
			}
		}
		b.add(row{fig, got, "10 KiB (the goal)", fmt.Sprintf("%.2f×", per/(10<<10)), "≤ 1×", metRatio(per/(10<<10), 1)})
	}
	if err := b.profileStreams(s, "idle-streams"); err != nil {
		return err
	}
	// One push, every stream poked (scope all): from the push sent to the
	// last stream's poke. Pushes by different users, so that no caller's
	// pacing holds one back; a quiet second between them.
	var took []time.Duration
	pokeAll := func(i int) error {
		time.Sleep(time.Second)
		load.arm()
		t0 := time.Now()
		if err := b.pushOne(s, fmt.Sprintf("pusher%d", i), fmt.Sprintf("idle-g%d", i), 1); err != nil {
			return err
		}
		last, err := load.waitAll(t0, 30*time.Second)
		if err != nil {
			return err
		}
		took = append(took, last.Sub(t0))
		return nil
	}
	for i := range b.iterations(100)/20 + 1 {
		if err := pokeAll(i); err != nil {
			return err
		}
	}
	pushers := len(took)
	err = b.profile(s, "poke-all", func() error {
		pushers++
		return pokeAll(pushers)
	})
	if err != nil {
		return err
	}
	took = took[:b.iterations(100)/20+1]
	spread := 250 * time.Millisecond // SIDECAR_POKE_SPREAD's default
	med := median(took)
	b.add(row{fmt.Sprintf("one push pokes %s idle streams: push sent → the last stream's poke", count(large)),
		fmt.Sprintf("%s (median of %d; max %s)", ms(med), len(took), ms(slices.Max(took))),
		ms(spread) + " (SIDECAR_POKE_SPREAD: the ramp the pokes are handed out over)", ratio(med, spread), "", ""})
	return nil
}

// pokeAcross: two replicas, a stream on A, a push through B, the poke
// arriving on A's stream, with the system idle in between (a push after
// the previous poke arrived and the coalescing window passed, by users
// taking turns so that no caller's pacing holds one back). From the push's
// answer to the poke; the limit is a bare NOTIFY → LISTEN on the same
// Postgres.
func (b *bench) pokeAcross(ctx context.Context) error {
	a, err := b.streamSidecar(100)
	if err != nil {
		return err
	}
	defer a.stop()
	bb, err := b.streamSidecar(100)
	if err != nil {
		return err
	}
	defer bb.stop()
	load := newStreamLoad(a.url)
	defer load.close()
	if err := load.open(1, func(int) string { return "watcher" }, nil); err != nil {
		return err
	}
	const users = 25 // each pushes at most every 25 × 60 ms: past its pacing second
	var lat []time.Duration
	next := map[string]int{} // each user's client's last mutation id
	for i := -users; i < b.iterations(200); i++ {
		time.Sleep(60 * time.Millisecond) // past the 50 ms coalescing window
		user := fmt.Sprintf("across%d", (i+users)%users)
		next[user]++
		load.arm()
		if err := b.pushOne(bb, user, "across-"+user, next[user]); err != nil {
			return err
		}
		answered := time.Now()
		last, err := load.waitAll(answered, 5*time.Second)
		if err != nil {
			return err
		}
		if i >= 0 {
			lat = append(lat, max(0, last.Sub(answered)))
		}
	}
	limit, err := b.bareNotify(ctx, b.iterations(200))
	if err != nil {
		return err
	}
	slices.Sort(lat)
	p50, p99 := quantile(lat, 0.5), quantile(lat, 0.99)
	b.add(row{"poke across replicas, idle system: push answered by B → poke on A's stream",
		fmt.Sprintf("median %s, p99 %s, max %s (%d pushes)", ms(p50), ms(p99), ms(lat[len(lat)-1]), len(lat)),
		fmt.Sprintf("median %s, p99 %s, max %s (a bare NOTIFY → LISTEN)", ms(quantile(limit, 0.5)), ms(quantile(limit, 0.99)), ms(limit[len(limit)-1])),
		ratio(p99, quantile(limit, 0.99)) + " (p99)", "p99 ≤ 15 ms", yes(p99 <= 15*time.Millisecond)})
	return nil
}

// bareNotify times n NOTIFYs from one connection to another that LISTENs,
// sorted.
func (b *bench) bareNotify(ctx context.Context, n int) ([]time.Duration, error) {
	listener, err := pgx.Connect(ctx, b.db)
	if err != nil {
		return nil, err
	}
	defer func() { _ = listener.Close(ctx) }()
	notifier, err := pgx.Connect(ctx, b.db)
	if err != nil {
		return nil, err
	}
	defer func() { _ = notifier.Close(ctx) }()
	if _, err := listener.Exec(ctx, "LISTEN bench_limit"); err != nil {
		return nil, err
	}
	var out []time.Duration
	for i := -3; i < n; i++ {
		time.Sleep(10 * time.Millisecond)
		t0 := time.Now()
		if _, err := notifier.Exec(ctx, "SELECT pg_notify('bench_limit', 'x')"); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			return nil, err
		}
		if i >= 0 {
			out = append(out, time.Since(t0))
		}
	}
	slices.Sort(out)
	return out, nil
}

// groupStreams: 1,000 streams of one user's one client group (a process
// that holds 64,000 streams lets one caller hold 1,000), each pulling on
// every poke from the cookie they all had before; one item of the view
// changes and one push pokes them. From the push sent until the last
// client's pull answered with the change, and the view reads (pages) the
// API served meanwhile, with the default settings (merged pulls have a
// bound of their own, 32 × SIDECAR_MAX_WAITING_PER_GROUP).
func (b *bench) groupStreams() error {
	n := 1000
	if b.o.quick {
		n = 50
	}
	b.api.add("crowd", 200, false)
	return b.groupStream(n, 0)
}

func (b *bench) groupStream(n, waiting int) error {
	const user = "crowd"
	group := fmt.Sprintf("crowd-g%d", waiting)
	env := []string{}
	if waiting > 0 {
		env = append(env, fmt.Sprintf("SIDECAR_MAX_WAITING_PER_GROUP=%d", waiting))
	}
	s, err := b.streamSidecar(64000, env...)
	if err != nil {
		return err
	}
	defer s.stop()
	status, raw, err := b.post(s.url+"/replicache/pull", user, pullBody(group, nil), false)
	if err != nil {
		return err
	}
	cookie, _, _, err := pulled(status, raw)
	if err != nil {
		return err
	}
	changed := []byte(fmt.Sprintf(`"key":"todo/t%07d"`, 100+waiting%100))
	body := pullBody(group, cookie)
	var pulls, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	// A failed pull is tried again as the Replicache client does: after
	// 30 ms, doubling (up to a minute).
	pull := func(*loadStream) bool {
		for delay := 30 * time.Millisecond; ; delay = min(2*delay, time.Minute) {
			pulls.Add(1)
			status, raw, err := b.post(s.url+"/replicache/pull", user, body, false)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("pull answered %d: %.200s", status, raw)
			}
			if err == nil {
				return bytes.Contains(raw, changed)
			}
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &err)
			time.Sleep(delay)
		}
	}
	load := newStreamLoad(s.url)
	load.query = "?clientGroupID=" + group // as the README's guide has clients do
	defer load.close()
	if err := load.open(n, func(int) string { return user }, pull); err != nil {
		return err
	}
	if err := waitSubscribers(s, n); err != nil {
		return err
	}
	time.Sleep(time.Second) // the opening pokes of the listener are long gone
	load.arm()
	pulls.Store(0)
	failed.Store(0)
	gets := b.api.gets()
	b.api.changeItem(user, 100+waiting%100)
	t0 := time.Now()
	if err := b.pushOne(s, user, group, 1); err != nil {
		return err
	}
	last, err := load.waitAll(t0, 2*time.Minute)
	if err != nil {
		if e := firstErr.Load(); e != nil {
			err = fmt.Errorf("%w (first failed pull: %w)", err, *e)
		}
		return err
	}
	took, reads := last.Sub(t0), b.api.gets()-gets
	fig := fmt.Sprintf("%s streams of one client group, one push: push sent → the last client's pull has the change", count(n))
	if waiting > 0 {
		fig += fmt.Sprintf(", SIDECAR_MAX_WAITING_PER_GROUP=%s", count(waiting))
	}
	got := fmt.Sprintf("%s, %d view reads, %d pulls (%d answered 503 and were tried again)", ms(took), reads, pulls.Load(), failed.Load())
	b.add(row{fig, got, "1 s and 10 view reads (the goal)", fmt.Sprintf("%.2f×, view reads %.1f×", took.Seconds(), float64(reads)/10),
		"≤ 1 s, ≤ 10 view reads", yes(took <= time.Second && reads <= 10)})
	return nil
}

// pushOne pushes one mutation (id) to group as user through s.
func (b *bench) pushOne(s *sidecar, user, group string, id int) error {
	status, raw, err := b.post(s.url+"/replicache/push", user, pushBody(group, group+"-c", id, 1), false)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("push answered %d: %.300s", status, raw)
	}
	return err
}

// profileStreams, with -profile, writes the sidecar's heap and goroutine
// profiles as they are now (idle streams: nothing to repeat).
func (b *bench) profileStreams(s *sidecar, name string) error {
	if b.o.profile == "" {
		return nil
	}
	for _, kind := range []string{"heap", "goroutine"} {
		resp, err := http.Get(s.admin + "/debug/pprof/" + kind + "?gc=1")
		if err != nil {
			return err
		}
		raw, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(b.o.profile, name+"-"+kind+".pprof"), raw, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// settledRSS reads s's resident set once it has stopped moving: the
// smallest of a few readings a moment apart.
func settledRSS(s *sidecar) (int64, error) {
	var least int64
	for range 5 {
		time.Sleep(200 * time.Millisecond)
		now, _, err := s.rss()
		if err != nil {
			return 0, err
		}
		if least == 0 || now < least {
			least = now
		}
	}
	return least, nil
}

var subscribersLine = regexp.MustCompile(`(?m)^replicache_sidecar_poke_subscribers (\d+)`)

// waitSubscribers waits until s holds n poke streams.
func waitSubscribers(s *sidecar, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.admin + "/metrics")
		if err != nil {
			return err
		}
		raw, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		got := -1
		if m := subscribersLine.FindSubmatch(raw); m != nil {
			got, _ = strconv.Atoi(string(m[1]))
		}
		if got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the sidecar holds %d poke streams, want %d", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slab is the kernel's slab memory now, in bytes (/proc/meminfo).
func slab() int64 {
	raw, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "Slab:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func quantile(sorted []time.Duration, q float64) time.Duration {
	return samples{lat: sorted}.quantile(q)
}

// streamLoad holds poke streams open to one sidecar, as EventSource would,
// each on its own connection from one of many loopback source addresses.
type streamLoad struct {
	host     string // host:port
	query    string // of the stream's URL ("?clientGroupID=…": the streams name their group)
	streams  []*loadStream
	armed    atomic.Int64 // arrivals before this (unix nanoseconds) do not count
	arrivals atomic.Int64 // streams that arrived since armed
	wg       sync.WaitGroup
}

// loadStream is one open stream. arrived is when its client last had what
// it waits for: the last poke, or (with a pull) the pull that had the
// change.
type loadStream struct {
	conn    net.Conn
	arrived atomic.Int64
}

func newStreamLoad(url string) *streamLoad {
	return &streamLoad{host: strings.TrimPrefix(url, "http://")}
}

// open opens n more streams, the i'th (counted over the load's life) as
// userOf(i). With pull, a poke is followed by pull(stream), and the stream
// has arrived when it reports true. It returns once every stream has its
// opening line.
func (l *streamLoad) open(n int, userOf func(i int) string, pull func(*loadStream) bool) error {
	first := len(l.streams)
	opened := make([]*loadStream, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for k := range n {
		i := first + k
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			st, err := l.dial(i, userOf(i), pull)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			opened[k] = st
		})
	}
	wg.Wait()
	close(errs)
	for _, st := range opened {
		if st != nil {
			l.streams = append(l.streams, st)
		}
	}
	return <-errs // nil when none failed
}

func (l *streamLoad) dial(i int, user string, pull func(*loadStream) bool) (*loadStream, error) {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, byte(i/streamsPerSource/250), byte(2+i/streamsPerSource%250))}
	d := net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", l.host)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*loadStream, error) { _ = conn.Close(); return nil, err }
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /replicache/poke%s HTTP/1.1\r\nHost: %s\r\nX-User-Id: %s\r\nAccept: text/event-stream\r\n\r\n", l.query, l.host, user); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 512), nil)
	if err != nil {
		return fail(err)
	}
	// The body is read until the stream ends, and closed with the
	// connection (close).
	defer func() {
		if err != nil {
			_ = resp.Body.Close()
		}
	}()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fail(fmt.Errorf("answered %d: %s", resp.StatusCode, raw))
	}
	body := bufio.NewReaderSize(resp.Body, 256)
	line, err := body.ReadString('\n')
	if err != nil {
		return fail(fmt.Errorf("reading the first line: %w", err))
	}
	if line != ": connected\n" {
		return fail(fmt.Errorf("first line %q, want the opening comment", line))
	}
	_ = conn.SetDeadline(time.Time{})
	st := &loadStream{conn: conn}
	l.wg.Go(func() { l.read(st, body, pull) })
	return st, nil
}

// read reads st's events until it ends.
func (l *streamLoad) read(st *loadStream, body *bufio.Reader, pull func(*loadStream) bool) {
	for {
		line, err := body.ReadSlice('\n')
		if err != nil {
			return
		}
		if !bytes.Equal(line, []byte("event: poke\n")) {
			continue
		}
		if pull != nil && !pull(st) {
			continue
		}
		if now := time.Now().UnixNano(); st.arrived.Swap(now) < l.armed.Load() {
			l.arrivals.Add(1)
		}
	}
}

// arm forgets the arrivals so far (call it while nothing arrives).
func (l *streamLoad) arm() {
	l.armed.Store(time.Now().UnixNano())
	l.arrivals.Store(0)
}

// waitAll waits until every stream has arrived since arm, and returns when
// the last did.
func (l *streamLoad) waitAll(since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	n := int64(len(l.streams))
	for l.arrivals.Load() < n {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%d of %d streams had nothing %v after %v", n-l.arrivals.Load(), n, timeout, since.Format(time.StampMilli))
		}
		time.Sleep(time.Millisecond)
	}
	var last int64
	for _, st := range l.streams {
		last = max(last, st.arrived.Load())
	}
	return time.Unix(0, last), nil
}

// close closes every stream and waits for their readers.
func (l *streamLoad) close() {
	for _, st := range l.streams {
		_ = st.conn.Close()
	}
	l.wg.Wait()
}
