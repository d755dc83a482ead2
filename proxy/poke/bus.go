package poke

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Bus carries pokes between replicas: Publish pokes this process's hub at
// once and announces the poke on the schema's NOTIFY channel; Listen, on a
// connection of its own, pokes the hub for every announcement of another
// replica. Announcements are coalesced too: a burst of pushes is one
// NOTIFY.
type Bus struct {
	hub     *Hub
	pool    *pgxpool.Pool
	channel string
	origin  string // this process, so it skips its own announcements
	log     *slog.Logger

	mu    sync.Mutex
	all   bool
	users map[string]bool
	wake  chan struct{}

	listening atomic.Bool
}

// NewBus returns a bus for hub over the database of pool, on the channel of
// schema.
func NewBus(hub *Hub, pool *pgxpool.Pool, schema string, log *slog.Logger) *Bus {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &Bus{hub: hub, pool: pool, channel: Channel(schema), origin: hex.EncodeToString(b), log: log,
		users: map[string]bool{}, wake: make(chan struct{}, 1)}
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
// longer list of users becomes "everyone".
const maxPayload = 4000

type message struct {
	Origin string   `json:"o"`
	Users  []string `json:"u,omitempty"` // none: everyone
}

// Publish pokes users' subscribers (none: everyone) here at once and in
// every other replica through the database, shortly (announcements are
// sent by a background goroutine, coalesced).
func (b *Bus) Publish(users []string) {
	b.hub.Poke(users)
	b.mu.Lock()
	if len(users) == 0 {
		b.all = true
	}
	for _, u := range users {
		b.users[u] = true
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Run sends announcements and listens for the other replicas' until ctx
// ends. The listening connection is its own (outside the pool); when it
// drops it is reconnected with backoff, and once back every local
// subscriber is poked (announcements may have been missed meanwhile).
func (b *Bus) Run(ctx context.Context) {
	go b.announce(ctx)
	b.listen(ctx)
}

func (b *Bus) announce(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		}
		b.mu.Lock()
		msg := message{Origin: b.origin}
		if !b.all {
			for u := range b.users {
				msg.Users = append(msg.Users, u)
			}
		}
		b.all, b.users = false, map[string]bool{}
		b.mu.Unlock()
		payload, _ := json.Marshal(msg) // strings always encode
		if len(payload) > maxPayload {
			payload, _ = json.Marshal(message{Origin: b.origin})
		}
		nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := b.pool.Exec(nctx, `SELECT pg_notify($1, $2)`, b.channel, string(payload))
		cancel()
		if err != nil && ctx.Err() == nil {
			b.log.Warn("announcing a poke to the other replicas failed; their clients pull at their next interval", "error", err)
		}
	}
}

func (b *Bus) listen(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for first := true; ctx.Err() == nil; first = false {
		err := b.listenOnce(ctx, !first)
		b.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		b.log.Warn("the poke listener's connection dropped; reconnecting", "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listenOnce connects, listens and delivers until the connection fails.
// catchUp: this is a reconnection, so every local subscriber is poked
// once listening again.
func (b *Bus) listenOnce(ctx context.Context, catchUp bool) error {
	cfg := b.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = "replicache-sidecar poke listener"
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{b.channel}.Sanitize()); err != nil {
		return err
	}
	b.listening.Store(true)
	if catchUp {
		b.log.Info("the poke listener is back; poking every local subscriber once")
		b.hub.Poke(nil)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		var msg message
		if json.Unmarshal([]byte(n.Payload), &msg) != nil {
			msg = message{} // unreadable: poke everyone
		}
		if msg.Origin == b.origin {
			continue // poked here already
		}
		b.hub.Poke(msg.Users)
	}
}
