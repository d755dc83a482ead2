package store

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Attempts is what RecordAttempt and Settle know of a pending mutation's
// answered, retryable attempts that count toward giving up.
type Attempts struct {
	Count int           // counted attempts so far, this one included if it counts
	Span  time.Duration // since the first counted one, by the database's clock (0: none)
}

// RecordAttempt counts one answered, retryable attempt (status: the
// upstream's answer) of the client's pending mutation and returns the count
// so far. It is durable once the transaction commits, and shared by every
// replica; the row goes when the mutation is consumed (SetLastMutationID).
// It is Settle's Pending with Counts as the previous release wrote it: it
// leaves last_at unset, and on a row begun with uncounted attempts its
// span runs from the first of those.
func (g *GroupTx) RecordAttempt(ctx context.Context, clientID string, mutationID int64, status int) (Attempts, error) {
	var a Attempts
	var seconds float64
	err := g.tx.QueryRow(ctx, g.s.sql(`INSERT INTO {schema}.mutation_attempts AS a
			(client_id, mutation_id, client_group_id, attempts, last_status) VALUES ($1, $2, $3, 1, $4)
		ON CONFLICT (client_id, mutation_id) DO UPDATE SET attempts = a.attempts + 1, last_status = excluded.last_status
		RETURNING attempts, extract(epoch FROM now() - first_at)::float8`), clientID, mutationID, g.GroupID, status).Scan(&a.Count, &seconds)
	if err != nil {
		return Attempts{}, fmt.Errorf("recording attempt: %w", err)
	}
	a.Span = time.Duration(seconds * float64(time.Second))
	return a, nil
}

// Rejection is a mutation consumed without effect.
type Rejection struct {
	ClientID   string
	MutationID int64
	Mutator    string
	Status     int // 0: refused by the mapping, not the upstream
	Reason     string
	Body       string
	At         time.Time // when it was recorded (read only)
}

// RecentRejections returns the group's rejection records younger than ttl
// (0: all), oldest first, for the clients to see.
func (g *GroupTx) RecentRejections(ctx context.Context, ttl time.Duration) ([]Rejection, error) {
	if ttl <= 0 {
		ttl = 100 * 365 * 24 * time.Hour
	}
	rows, err := g.tx.Query(ctx, g.s.sql(`SELECT client_id, mutation_id, mutator, coalesce(status, 0), reason, created_at
		FROM {schema}.mutation_rejections WHERE client_group_id = $1 AND created_at >= now() - $2::interval
		ORDER BY created_at, client_id, mutation_id`), g.GroupID, ttl)
	if err != nil {
		return nil, fmt.Errorf("reading rejections: %w", err)
	}
	var out []Rejection
	var r Rejection
	_, err = pgx.ForEachRow(rows, []any{&r.ClientID, &r.MutationID, &r.Mutator, &r.Status, &r.Reason, &r.At}, func() error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading rejections: %w", err)
	}
	return out, nil
}

// RecordRejection stores a rejected mutation for operators. Settle with
// Rejected records it together with the last mutation id, in one
// statement.
func (g *GroupTx) RecordRejection(ctx context.Context, r Rejection) error {
	var status *int
	if r.Status != 0 {
		status = &r.Status
	}
	_, err := g.tx.Exec(ctx, g.s.sql(`INSERT INTO {schema}.mutation_rejections
		(client_id, mutation_id, client_group_id, mutator, status, reason, body) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (client_id, mutation_id) DO NOTHING`),
		r.ClientID, r.MutationID, g.GroupID, safeText(r.Mutator, 512), status, safeText(r.Reason, 1024), safeText(r.Body, 4096))
	if err != nil {
		return fmt.Errorf("recording rejected mutation: %w", err)
	}
	return nil
}

// safeText makes text from outside (an upstream's answer) storable in a
// Postgres text column: invalid UTF-8 and NUL (which text cannot hold)
// become U+FFFD, and it is cut to at most max bytes on a rune boundary.
// Otherwise one odd answer would fail the transaction on every retry.
func safeText(s string, max int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// TrimRejections keeps the group's rejection records within limits: none
// older than ttl (0: no age limit) and at most max (0: no limit), the
// newest kept. It returns how many it deleted.
func (g *GroupTx) TrimRejections(ctx context.Context, max int, ttl time.Duration) (int64, error) {
	var deleted int64
	if ttl > 0 {
		tag, err := g.tx.Exec(ctx, g.s.sql(`DELETE FROM {schema}.mutation_rejections
			WHERE client_group_id = $1 AND created_at < now() - $2::interval`), g.GroupID, ttl)
		if err != nil {
			return 0, fmt.Errorf("expiring rejections: %w", err)
		}
		deleted += tag.RowsAffected()
	}
	if max > 0 {
		tag, err := g.tx.Exec(ctx, g.s.sql(`DELETE FROM {schema}.mutation_rejections WHERE (client_id, mutation_id) IN (
			SELECT client_id, mutation_id FROM {schema}.mutation_rejections WHERE client_group_id = $1
			ORDER BY created_at DESC, mutation_id DESC OFFSET $2)`), g.GroupID, max)
		if err != nil {
			return 0, fmt.Errorf("capping rejections: %w", err)
		}
		deleted += tag.RowsAffected()
	}
	return deleted, nil
}
