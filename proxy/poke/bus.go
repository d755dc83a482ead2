package poke

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Bus carries pokes between replicas: Publish pokes this process's hub at
// once and has the poke announced on the schema's NOTIFY channel
// (PublishFor does the same, paced per caller); Run sends the
// announcements (coalesced: a burst of pushes is one NOTIFY) and listens
// for the other replicas', each on a connection of its own outside the
// pool, so a busy pool never delays or drops one. Every poke carries when
// the change it is for happened, by the clock of the replica that saw it
// (OnPokes).
type Bus struct {
	hub     *Hub
	pacer   *Pacer
	connCfg *pgx.ConnConfig
	channel string
	origin  string // this process, so it skips its own announcements
	log     *slog.Logger

	mu      sync.Mutex
	all     bool
	users   map[string]bool
	since   time.Time       // the earliest change pending
	written map[string]bool // source paths written under, to announce
	deleted map[string]bool // source paths a DELETE fell under, to announce
	wake    chan struct{}

	// onMarks receives the write marks other replicas announce (all: any
	// may have been missed); set by OnMarks before Run.
	onMarks func(written, deleted []string, all bool)
	// onPokes receives every change that pokes, this replica's and the
	// others'; set by OnPokes before Run.
	onPokes func(users []string, at time.Time)
	skew    skewWarning

	listening atomic.Bool
}

// NewBus returns a bus for hub over the database of pool, on the channel of
// schema, that paces each caller's pokes to one per callerInterval
// (PublishFor; 0: no pacing).
func NewBus(hub *Hub, pool *pgxpool.Pool, schema string, callerInterval time.Duration, log *slog.Logger) *Bus {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	cfg := pool.Config().ConnConfig.Copy()
	// Both connections are idle by design: a server's idle session timeout
	// must not end them (each end would poke every subscriber).
	cfg.RuntimeParams["idle_session_timeout"] = "0"
	bus := &Bus{hub: hub, connCfg: cfg, channel: Channel(schema), origin: hex.EncodeToString(b), log: log,
		users: map[string]bool{}, written: map[string]bool{}, deleted: map[string]bool{}, wake: make(chan struct{}, 1)}
	bus.pacer = NewPacer(callerInterval, bus.publish)
	return bus
}

// Channel is the NOTIFY channel of a schema: at most 63 bytes, as
// Postgres identifiers are.
func Channel(schema string) string {
	c := "replicache_sidecar_" + schema
	if len(c) > 63 {
		c = fmt.Sprintf("replicache_sidecar_%016x", xxhash.Sum64String(schema))
	}
	return c
}

// Listening reports whether the listening connection is up.
func (b *Bus) Listening() bool { return b.listening.Load() }

// maxPayload keeps a NOTIFY payload far below Postgres' 8000 bytes: a
// longer list of users goes in several announcements.
const maxPayload = 4000

// maxPendingUsers bounds the users waiting to be announced: beyond, the
// announcement is for everyone.
const maxPendingUsers = 10000

type message struct {
	Origin string   `json:"o"`
	Users  []string `json:"u,omitempty"` // none: everyone
	// Write marks: the view source paths written under, and those a DELETE
	// fell under (for the pulls' plans). Quiet: the message pokes nobody
	// (it carries marks only); an older replica that does not know the
	// field pokes everyone, which costs pulls, never a missed change.
	Written []string `json:"w,omitempty"`
	Deleted []string `json:"d,omitempty"`
	Quiet   bool     `json:"q,omitempty"`
	// At is when the earliest change the poke is for happened, in
	// microseconds since the Unix epoch by the announcing replica's clock
	// (0: an older replica's, which does not say).
	At int64 `json:"t,omitempty"`
}

// OnMarks sets what receives the write marks other replicas announce, and
// all=true when some may have been missed (the listener was down). Call it
// before Run.
func (b *Bus) OnMarks(fn func(written, deleted []string, all bool)) { b.onMarks = fn }

// OnPokes sets what receives every change that pokes, just before it
// pokes this process's subscribers: users (none: everyone) and when the
// change happened. A change announced by another replica is dated by that
// replica's clock, but never later than when this one heard of it: a
// clock ahead of this one's is clamped (and logged), so a lag measured
// from it is never negative. Catch-up pokes (a reconnected listener) are
// no change and are not reported. Call it before Run.
func (b *Bus) OnPokes(fn func(users []string, at time.Time)) { b.onPokes = fn }

// Mark announces write marks to the other replicas, at once (pokes may be
// paced; a pull they cause must find the marks there first).
func (b *Bus) Mark(written, deleted []string) {
	if len(written) == 0 && len(deleted) == 0 {
		return
	}
	b.mu.Lock()
	for _, p := range written {
		b.written[p] = true
	}
	for _, p := range deleted {
		b.deleted[p] = true
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Publish pokes users' subscribers (none: everyone) here at once and in
// every other replica through the database, shortly (announcements are
// sent by Run, coalesced), for a change that happened now.
func (b *Bus) Publish(users []string) { b.publish(users, time.Now()) }

// publish is Publish for a change that happened at at.
func (b *Bus) publish(users []string, at time.Time) {
	if b.onPokes != nil {
		b.onPokes(users, at) // before the streams hear of it: a pull they cause must find it
	}
	b.hub.Poke(users)
	b.mu.Lock()
	b.add(len(users) == 0, users, at)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// PublishFor publishes users' poke (none: everyone's), for a change that
// happened at at, on behalf of the caller whose key is key
// (identity.Caller.Key): at once when the caller has been quiet for the
// pacing interval, else merged with the caller's other pokes at the end
// of it (see Pacer). Pokes nobody caused (the invalidate hook, a
// listener's catch-up) go through Publish.
func (b *Bus) PublishFor(key string, users []string, at time.Time) { b.pacer.Poke(key, users, at) }

// add merges a poke for a change at at into what is pending; b.mu is
// held.
func (b *Bus) add(all bool, users []string, at time.Time) {
	if (!b.all && len(b.users) == 0) || at.Before(b.since) {
		b.since = at // the first pending, or an earlier one
	}
	if all {
		b.all = true
	}
	for _, u := range users {
		b.users[u] = true
	}
	if len(b.users) > maxPendingUsers {
		b.all = true
	}
	if b.all {
		clear(b.users)
	}
}

// take returns what is pending as announcements, and clears it: the
// marks first (they must precede the pokes they explain), then the pokes.
func (b *Bus) take() []message {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []message
	if len(b.written) > 0 || len(b.deleted) > 0 {
		m := message{Origin: b.origin, Quiet: true}
		for p := range b.written {
			m.Written = append(m.Written, p)
		}
		for p := range b.deleted {
			m.Deleted = append(m.Deleted, p)
		}
		clear(b.written)
		clear(b.deleted)
		sort.Strings(m.Written)
		sort.Strings(m.Deleted)
		out = append(out, m)
	}
	if !b.all && len(b.users) == 0 {
		return out
	}
	at := b.since.UnixMicro()
	b.since = time.Time{}
	if b.all {
		b.all = false
		return append(out, message{Origin: b.origin, At: at})
	}
	users := make([]string, 0, len(b.users))
	for u := range b.users {
		users = append(users, u)
	}
	clear(b.users)
	sort.Strings(users)
	size := 0
	first := len(out)
	for _, u := range users {
		if len(out) == first || size+len(u)+4 > maxPayload {
			out = append(out, message{Origin: b.origin, At: at})
			size = 32
		}
		last := &out[len(out)-1]
		last.Users = append(last.Users, u)
		size += len(u) + 4
	}
	return out
}

// Run sends announcements and listens for the other replicas' until ctx
// ends; then it sends what is still pending (pushes that finished while
// the server shut down, and pokes a caller's pacing held back) and returns. A dropped connection is reconnected
// with backoff; once the listener is back every local subscriber is poked
// (announcements may have been missed meanwhile).
func (b *Bus) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.announce(ctx)
	}()
	b.listen(ctx)
	<-done
}

func (b *Bus) connect(ctx context.Context, name string) (*pgx.Conn, error) {
	cfg := b.connCfg.Copy()
	cfg.RuntimeParams["application_name"] = "replicache-sidecar poke " + name
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.ConnectConfig(cctx, cfg)
}

func (b *Bus) announce(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
		}
	}()
	backoff := 100 * time.Millisecond
	lastWarn := time.Time{}
	for {
		stopping := false
		select {
		case <-ctx.Done():
			stopping = true
		case <-b.wake:
		}
		if stopping {
			b.pacer.Flush() // into what is pending
		}
		msgs := b.take()
		err := b.send(ctx, &conn, msgs, stopping)
		switch {
		case err == nil:
			backoff = 100 * time.Millisecond
		case stopping:
			b.log.Warn("announcing the last pokes to the other replicas failed at shutdown", "error", err)
		default:
			// Keep them, and try again.
			b.mu.Lock()
			for _, m := range msgs {
				if m.Quiet {
					for _, p := range m.Written {
						b.written[p] = true
					}
					for _, p := range m.Deleted {
						b.deleted[p] = true
					}
					continue
				}
				b.add(len(m.Users) == 0, m.Users, time.UnixMicro(m.At))
			}
			b.mu.Unlock()
			if time.Since(lastWarn) > 10*time.Second {
				b.log.Warn("announcing pokes to the other replicas failed; retrying", "error", err, "in", backoff)
				lastWarn = time.Now()
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			select {
			case b.wake <- struct{}{}:
			default:
			}
		}
		if stopping {
			return
		}
	}
}

// send announces msgs on *conn, connecting it first if needed; a failed
// connection is closed and forgotten. At shutdown (stopping) it gets a few
// seconds of its own.
func (b *Bus) send(ctx context.Context, conn **pgx.Conn, msgs []message, stopping bool) error {
	if len(msgs) == 0 {
		return nil
	}
	if stopping {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
	}
	if *conn == nil {
		c, err := b.connect(ctx, "announcer")
		if err != nil {
			return err
		}
		*conn = c
	}
	for _, m := range msgs {
		payload, _ := json.Marshal(m) // strings always encode
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := (*conn).Exec(sctx, `SELECT pg_notify($1, $2)`, b.channel, string(payload))
		cancel()
		if err != nil {
			_ = (*conn).Close(context.WithoutCancel(ctx))
			*conn = nil
			return err
		}
	}
	return nil
}

func (b *Bus) listen(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		listened, err := b.listenOnce(ctx)
		b.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		if listened {
			backoff = 100 * time.Millisecond
			b.log.Warn("the poke listener's connection dropped; reconnecting", "error", err, "in", backoff)
		} else {
			b.log.Warn("the poke listener could not connect; retrying", "error", err, "in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// livenessInterval: a listener that heard nothing for this long checks
// that its connection still answers (a dead path behind a proxy may not be
// noticed by TCP for many minutes).
const livenessInterval = 30 * time.Second

// listenOnce connects, listens and delivers until the connection fails.
// listened: it got as far as listening. Once listening, every local
// subscriber is poked once: announcements made before (at start, or while
// the connection was down) may have been missed.
func (b *Bus) listenOnce(ctx context.Context) (listened bool, err error) {
	conn, err := b.connect(ctx, "listener")
	if err != nil {
		return false, err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{b.channel}.Sanitize()); err != nil {
		return false, err
	}
	b.listening.Store(true)
	if b.onMarks != nil {
		b.onMarks(nil, nil, true) // marks may have been missed, as pokes
	}
	b.hub.Poke(nil)
	for {
		wctx, cancel := context.WithTimeout(ctx, livenessInterval)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil && wctx.Err() != nil && ctx.Err() == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return true, fmt.Errorf("liveness check: %w", err)
			}
			continue
		}
		if err != nil {
			return true, err
		}
		var msg message
		unreadable := json.Unmarshal([]byte(n.Payload), &msg) != nil
		if unreadable {
			msg = message{} // poke everyone, and assume any write
		}
		if msg.Origin == b.origin {
			continue // poked and marked here already
		}
		if b.onMarks != nil && (unreadable || len(msg.Written) > 0 || len(msg.Deleted) > 0) {
			b.onMarks(msg.Written, msg.Deleted, unreadable)
		}
		if !msg.Quiet {
			if b.onPokes != nil {
				b.onPokes(msg.Users, b.heard(msg.At))
			}
			b.hub.Poke(msg.Users)
		}
	}
}

// heard dates a change another replica announced (at: its microseconds
// since the epoch by that replica's clock; 0: not said): never later than
// now, when this replica heard of it, so a clock ahead of this one's does
// not make a change look as if it happened in the future.
func (b *Bus) heard(at int64) time.Time {
	now := time.Now()
	if at == 0 {
		return now // an older replica: when heard is the best there is
	}
	t := time.UnixMicro(at)
	if ahead := t.Sub(now); ahead > 0 {
		if ahead > maxQuietSkew && b.skew.due(now) {
			b.log.Warn("another replica's clock is ahead of this one's; the change lag it announces is counted from when this replica heard of it",
				"ahead", ahead.Round(time.Millisecond))
		}
		return now
	}
	return t
}

// maxQuietSkew is how far ahead another replica's clock may be before it
// is logged (NTP keeps clocks within milliseconds; a second is a broken
// clock).
const maxQuietSkew = time.Second

// skewWarning says a clock-skew warning is due: at most one in 10 minutes.
type skewWarning struct {
	mu   sync.Mutex
	last time.Time
}

func (w *skewWarning) due(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.last.IsZero() && now.Sub(w.last) < 10*time.Minute {
		return false
	}
	w.last = now
	return true
}
