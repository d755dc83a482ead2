package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// A client group's history: the newest Options.HistoryPerGroup events of
// what its mutations came to and of the pulls that changed what its
// clients hold, for operators (Inspect). It is written with the push's or
// pull's own statements, never in a round trip of its own, and trimmed in
// the statement that adds to it (one per transaction); the sweep deletes
// it with its group. It
// holds no bodies and no credentials: a rejection's reason is the one its
// rejection record holds.

// Event kinds.
const (
	EventMutation = "mutation"
	EventPull     = "pull"
)

// Outcomes of a pull event (a mutation's are Outcome's strings, and
// OutcomeAbandoned).
const (
	PullDiff  = "diff"  // the entries changed since the cookie's version
	PullReset = "reset" // clear, then every entry
	PullLost  = "lost"  // ClientStateNotFound: the client starts over
	// OutcomeAbandoned is a Rejected mutation given up on
	// (Settlement.GaveUp).
	OutcomeAbandoned = "abandoned"
)

// Event is one entry of a group's history.
type Event struct {
	ID      int64     // ascending within the group, in the order events were recorded (read only)
	At      time.Time // by the clock of the replica that recorded it
	Kind    string    // EventMutation or EventPull
	Outcome string    // a mutation: applied, rejected, abandoned, pending; a pull: diff, reset, lost

	// A mutation's: which, the API's status (0: none, the mapping refused
	// it), the rejection's reason, and for a pending one whether the
	// answer counts toward giving up.
	ClientID   string
	MutationID int64
	Mutator    string
	Status     int
	Reason     string
	Counted    bool

	// A pull's: the cookie order issued, the record version its client
	// holds afterwards, the cookie's version a diff starts from, and what
	// the answer put and deleted.
	CookieOrder int64
	Version     int64
	Since       int64
	Puts, Dels  int
}

// PullNote is what one pull's answer came to, for NotePulls.
type PullNote struct {
	Outcome    string // PullDiff, PullReset or PullLost
	Since      int64  // a diff's: the version it starts from
	Puts, Dels int
}

// eventRow is an Event as the history statement reads it (jsonb), null
// where the kind has nothing.
type eventRow struct {
	N           int       `json:"n"`
	At          time.Time `json:"at"`
	Kind        string    `json:"kind"`
	Outcome     string    `json:"outcome"`
	ClientID    *string   `json:"client_id,omitempty"`
	MutationID  *int64    `json:"mutation_id,omitempty"`
	Mutator     *string   `json:"mutator,omitempty"`
	Status      *int      `json:"status,omitempty"`
	Reason      *string   `json:"reason,omitempty"`
	Counted     *bool     `json:"counted,omitempty"`
	CookieOrder *int64    `json:"cookie_order,omitempty"`
	Version     *int64    `json:"record_version,omitempty"`
	Since       *int64    `json:"since_version,omitempty"`
	Puts        *int      `json:"puts,omitempty"`
	Dels        *int      `json:"dels,omitempty"`
}

// historySQL adds events ($2, a jsonb array of eventRow) to group $1's
// history and deletes its oldest beyond $3 in the same statement: the
// DELETE sees the rows earlier statements added, not this one's, so it
// keeps the newest $3 of those ($3 = the cap less the events added).
const historySQL = `WITH added AS (
		INSERT INTO {schema}.group_history (client_group_id, at, kind, outcome, client_id, mutation_id, mutator, status, reason, counted,
			cookie_order, record_version, since_version, puts, dels)
		SELECT $1, e.at, e.kind, e.outcome, e.client_id, e.mutation_id, e.mutator, e.status, e.reason, e.counted,
			e.cookie_order, e.record_version, e.since_version, e.puts, e.dels
		FROM jsonb_to_recordset($2::jsonb) AS e(n int, at timestamptz, kind text, outcome text, client_id text, mutation_id bigint,
			mutator text, status int, reason text, counted boolean, cookie_order bigint, record_version bigint, since_version bigint,
			puts int, dels int)
		ORDER BY e.n
		RETURNING 1)
	DELETE FROM {schema}.group_history WHERE client_group_id = $1 AND id <= (
		SELECT id FROM {schema}.group_history WHERE client_group_id = $1 ORDER BY id DESC OFFSET $3 LIMIT 1)`

// historyArgs returns the history statement's arguments for events (the
// newest of them that fit under the cap).
func (g *GroupTx) historyArgs(events []Event) []any {
	limit := g.s.historyMax
	if len(events) > limit {
		events = events[len(events)-limit:]
	}
	rows := make([]eventRow, len(events))
	for i, e := range events {
		r := eventRow{N: i, At: e.At, Kind: e.Kind, Outcome: e.Outcome}
		switch e.Kind {
		case EventMutation:
			clientID, mutator, reason := safeText(e.ClientID, 512), safeText(e.Mutator, 512), safeText(e.Reason, 1024)
			r.ClientID, r.MutationID, r.Mutator, r.Counted = &clientID, &e.MutationID, &mutator, &e.Counted
			if e.Status != 0 {
				r.Status = &e.Status
			}
			if reason != "" {
				r.Reason = &reason
			}
		case EventPull:
			r.Puts, r.Dels = &e.Puts, &e.Dels
			if e.Outcome != PullLost {
				r.CookieOrder, r.Version = &e.CookieOrder, &e.Version
			}
			if e.Outcome == PullDiff {
				r.Since = &e.Since
			}
		}
		rows[i] = r
	}
	raw, _ := json.Marshal(rows) // plain values always encode
	return []any{g.GroupID, json.RawMessage(raw), limit - len(events)}
}

// noteSettlement adds what s came to to the group's history, written
// when the transaction commits (holdHistory).
func (g *GroupTx) noteSettlement(s Settlement) {
	if g.s.historyMax <= 0 {
		return
	}
	e := Event{At: time.Now(), Kind: EventMutation, Outcome: s.Outcome.String(), ClientID: s.ClientID, MutationID: s.MutationID,
		Mutator: s.Mutator, Status: s.Status}
	switch {
	case s.Outcome == Rejected && s.GaveUp:
		e.Outcome, e.Reason = OutcomeAbandoned, s.Reason
	case s.Outcome == Rejected:
		e.Reason = s.Reason
	case s.Outcome == Pending:
		e.Counted = s.Counts
	}
	g.settled = append(g.settled, e)
}

// holdHistory holds the statement that writes the settlements noted, all
// in one, for the COMMIT to carry: no round trip, and one statement per
// transaction however many mutations it settled.
func (g *GroupTx) holdHistory() {
	if len(g.settled) == 0 {
		return
	}
	g.dtx.hold("history", g.s.sql(historySQL), g.historyArgs(g.settled), func(_ pgconn.CommandTag, err error) error {
		if err != nil {
			return fmt.Errorf("recording the group's history: %w", err)
		}
		return nil
	})
	g.settled = nil
}

// NotePulls makes the next IssueCookies of this transaction record, for
// the i-th cookie it issues, what notes[i] says that pull's answer was, in
// the same round trip. A diff that puts and deletes nothing changed
// nothing for its client and is not recorded (an idle client's polls
// would otherwise write on every pull).
func (g *GroupTx) NotePulls(notes []PullNote) {
	if g.s.historyMax <= 0 {
		return
	}
	g.pulls = append(g.pulls[:0], notes...)
}

// pullEvents takes the pulls noted (NotePulls) for the cookies issued
// (orders, 0: none) and the record version rec the group holds after
// them, as the events to record: none when none of them changed anything.
func (g *GroupTx) pullEvents(orders []int64, rec ViewRecord) []Event {
	notes := g.pulls
	g.pulls = nil
	var events []Event
	now := time.Now()
	for i, n := range notes {
		if i >= len(orders) || orders[i] == 0 || n.Outcome == PullDiff && n.Puts == 0 && n.Dels == 0 {
			continue
		}
		events = append(events, Event{At: now, Kind: EventPull, Outcome: n.Outcome, CookieOrder: orders[i], Version: rec.Version,
			Since: n.Since, Puts: n.Puts, Dels: n.Dels})
	}
	return events
}

// ErrNoGroup: the sidecar has never seen the client group (or its
// tombstone has expired).
var ErrNoGroup = errors.New("no such client group")

// GroupState is what the bookkeeping holds of one client group, for
// operators.
type GroupState struct {
	ID          string
	User        string
	CreatedAt   time.Time
	LastUsedAt  time.Time
	DeletedAt   time.Time // zero unless the sweep deleted its state (a tombstone)
	CookieOrder int64     // the last cookie order issued to it
	Clients     []ClientState
	Pending     []PendingMutation
	Record      RecordState
	Sources     []SourceState // what the record holds of each source (by fingerprint)
	Rejections  []Rejection   // the newest first, at most InspectRejections
	History     []Event       // the newest first
}

// ClientState is one client of a group.
type ClientState struct {
	ID                   string
	LastMutationID       int64
	CreatedAt, UpdatedAt time.Time
}

// PendingMutation is a mutation the API answered with a retryable status
// and that is still pending: its answered attempts.
type PendingMutation struct {
	ClientID   string
	MutationID int64
	Counted    int // attempts that count toward giving up
	Uncounted  int // answers that do not (the API failing for everyone)
	LastStatus int
	FirstAt    time.Time
	LastAt     time.Time // zero when written by an older release
}

// RecordState is a group's view record: its header and size.
type RecordState struct {
	ID         uint64 // 0: none
	Version    int64
	MinVersion int64 // the oldest version a diff may start from
	Evicted    bool  // its rows were evicted (the next pull answers a reset)
	Entries    int64 // live keys
	Removed    int64 // remembered removals (tombstones)
	Bytes      int64 // logical size, as ViewChange.Bytes counts it
}

// InspectRejections bounds the rejection records Inspect returns.
const InspectRejections = 20

// Inspect reads what the bookkeeping holds of group id, without its lock
// (one consistent snapshot, read only, so it never waits for a push or a
// pull of the group, nor holds one up): ErrNoGroup when there is none.
// It is for operators, off the request path; its cost grows with the
// group's record (its entries are counted).
func (s *Store) Inspect(ctx context.Context, id string) (GroupState, error) {
	out := GroupState{ID: id}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var recordID int64
		var deleted *time.Time
		err := tx.QueryRow(ctx, s.sql(`SELECT user_id, created_at, last_used_at, deleted_at, cookie_order, coalesce(view_record_id, 0),
				view_version, view_min_version, view_evicted_at IS NOT NULL
			FROM {schema}.client_groups WHERE id = $1`), id).Scan(&out.User, &out.CreatedAt, &out.LastUsedAt, &deleted, &out.CookieOrder,
			&recordID, &out.Record.Version, &out.Record.MinVersion, &out.Record.Evicted)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoGroup
		}
		if err != nil {
			return err
		}
		out.Record.ID = uint64(recordID)
		if deleted != nil {
			out.DeletedAt = *deleted
		}
		b := &pgx.Batch{}
		b.Queue(s.sql(`SELECT id, last_mutation_id, created_at, updated_at FROM {schema}.clients WHERE client_group_id = $1 ORDER BY id`), id)
		b.Queue(s.sql(`SELECT client_id, mutation_id, attempts, uncounted, last_status, first_at, last_at FROM {schema}.mutation_attempts
			WHERE client_group_id = $1 ORDER BY client_id, mutation_id`), id)
		b.Queue(s.sql(`SELECT count(*) FILTER (WHERE hash IS NOT NULL), count(*) FILTER (WHERE hash IS NULL), coalesce(sum(octet_length(key)), 0)
			FROM {schema}.view_entries WHERE client_group_id = $1`), id)
		b.Queue(s.sql(`SELECT source, coalesce(watermark, ''), full_at, read_at FROM {schema}.view_sources
			WHERE client_group_id = $1 AND record_id = $2 ORDER BY source`), id, recordID)
		b.Queue(s.sql(`SELECT client_id, mutation_id, mutator, coalesce(status, 0), reason, body, created_at FROM {schema}.mutation_rejections
			WHERE client_group_id = $1 ORDER BY created_at DESC, mutation_id DESC LIMIT $2`), id, InspectRejections)
		b.Queue(s.sql(`SELECT id, at, kind, outcome, coalesce(client_id, ''), coalesce(mutation_id, 0), coalesce(mutator, ''), coalesce(status, 0),
				coalesce(reason, ''), coalesce(counted, false), coalesce(cookie_order, 0), coalesce(record_version, 0), coalesce(since_version, 0),
				coalesce(puts, 0), coalesce(dels, 0)
			FROM {schema}.group_history WHERE client_group_id = $1 ORDER BY id DESC LIMIT 1000`), id)
		br := tx.SendBatch(ctx, b)
		err = out.scanInspected(br)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil && !errors.Is(err, ErrNoGroup) {
		return GroupState{}, fmt.Errorf("inspecting client group: %w", err)
	}
	return out, err
}

// scanInspected reads Inspect's batch, in its order.
func (out *GroupState) scanInspected(br pgx.BatchResults) error {
	rows, _ := br.Query()
	var c ClientState
	if _, err := pgx.ForEachRow(rows, []any{&c.ID, &c.LastMutationID, &c.CreatedAt, &c.UpdatedAt}, func() error {
		out.Clients = append(out.Clients, c)
		return nil
	}); err != nil {
		return err
	}
	rows, _ = br.Query()
	var p PendingMutation
	var last *time.Time
	if _, err := pgx.ForEachRow(rows, []any{&p.ClientID, &p.MutationID, &p.Counted, &p.Uncounted, &p.LastStatus, &p.FirstAt, &last}, func() error {
		p.LastAt = time.Time{}
		if last != nil {
			p.LastAt = *last
		}
		out.Pending = append(out.Pending, p)
		return nil
	}); err != nil {
		return err
	}
	var keyBytes int64
	if err := br.QueryRow().Scan(&out.Record.Entries, &out.Record.Removed, &keyBytes); err != nil {
		return err
	}
	out.Record.Bytes = keyBytes + (out.Record.Entries+out.Record.Removed)*recordRowBytes
	rows, _ = br.Query()
	var st SourceState
	var full, read *time.Time
	if _, err := pgx.ForEachRow(rows, []any{&st.Source, &st.Watermark, &full, &read}, func() error {
		st.FullAt, st.ReadAt = time.Time{}, time.Time{}
		if full != nil {
			st.FullAt = *full
		}
		if read != nil {
			st.ReadAt = *read
		}
		out.Sources = append(out.Sources, st)
		return nil
	}); err != nil {
		return err
	}
	rows, _ = br.Query()
	var r Rejection
	if _, err := pgx.ForEachRow(rows, []any{&r.ClientID, &r.MutationID, &r.Mutator, &r.Status, &r.Reason, &r.Body, &r.At}, func() error {
		out.Rejections = append(out.Rejections, r)
		return nil
	}); err != nil {
		return err
	}
	rows, _ = br.Query()
	var e Event
	_, err := pgx.ForEachRow(rows, []any{&e.ID, &e.At, &e.Kind, &e.Outcome, &e.ClientID, &e.MutationID, &e.Mutator, &e.Status,
		&e.Reason, &e.Counted, &e.CookieOrder, &e.Version, &e.Since, &e.Puts, &e.Dels}, func() error {
		out.History = append(out.History, e)
		return nil
	})
	return err
}
