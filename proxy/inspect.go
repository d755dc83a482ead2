package proxy

import (
	"context"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// What an operator can see of one client group when a user says "my edit
// vanished": the group inspected on the admin listener (GET /groups/{id},
// and `replicache-sidecar inspect`), and the change lag histogram
// (replicache_sidecar_change_lag_seconds, package lag). The push and pull
// engines each make one call here: Settle records a mutation's event
// itself (store), a pull notes its answers (notePulls) and reports its
// completion (answered).

// streamGroup is the client group a poke stream names (its clientGroupID
// query parameter; "" when none): its streams are counted for the group,
// and the lag of the changes that poke it is measured. Validated as a
// push's or pull's: a bad one answers 400.
func streamGroup(r *http.Request) (string, *problem.Error) {
	q := r.URL.Query()
	if !q.Has("clientGroupID") {
		return "", nil
	}
	group := q.Get("clientGroupID")
	if p := validID("clientGroupID", group); p != nil {
		return "", p
	}
	return group, nil
}

// notePulls notes, before the cookies are issued (store.NotePulls, written
// in the same round trip), what each pull of b is answered, for the
// group's history; and keeps when the view's read began, for the lag of
// the changes these pulls answer. In reset mode (no record) every pull is
// a reset and none is recorded.
func (s *core) notePulls(b *pullBuild) {
	b.view.readAt, b.view.before = b.started, b.beforeOrder
	if b.view.change == nil {
		return
	}
	notes := make([]store.PullNote, len(b.answers))
	for i, a := range b.answers {
		notes[i] = pullNote(b.view, a)
	}
	b.g.NotePulls(notes)
}

// pullNote is what answer a comes to: ClientStateNotFound (lost), a reset
// putting every entry, or a diff putting and deleting what changed since
// its cookie's version (as encodePullResponse writes it).
func pullNote(v *pullView, a pullAnswer) store.PullNote {
	switch {
	case a.lost:
		return store.PullNote{Outcome: store.PullLost}
	case !a.diff:
		return store.PullNote{Outcome: store.PullReset, Puts: len(v.entries)}
	}
	n := store.PullNote{Outcome: store.PullDiff, Since: a.since}
	for _, version := range v.change.Versions {
		if version > a.since {
			n.Puts++
		}
	}
	for _, t := range v.change.Tombstones {
		if t.Version > a.since {
			n.Dels++
		}
	}
	return n
}

// answered reports a pull answered (its body written) to the change lag:
// it may answer a change that poked its group's stream here.
func (s *core) answered(c *exchange, req *pullRequest, ans pullAnswer) {
	if ans.pullView == nil || ans.readAt.IsZero() {
		return
	}
	s.lag.Answered(req.ClientGroupID, c.User, ans.before, ans.order, ans.readAt, time.Now())
}

// inspectTimeout bounds the database's part of an inspection: it counts
// the group's record, which is large for a large view.
const inspectTimeout = 10 * time.Second

// handleInspect answers GET /groups/{id} on the admin listener: the group's
// GroupReport, 404 for a group the sidecar does not know.
func (s *core) handleInspect(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if p := validID("the client group id", id); p != nil {
		problem.Write(w, p)
		return
	}
	if p := s.checkServing(); p != nil && p.Code != problem.ShuttingDown {
		problem.Write(w, p)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), inspectTimeout)
	defer cancel()
	st, err := s.store.Inspect(ctx, id)
	switch {
	case errors.Is(err, store.ErrNoGroup):
		problem.Write(w, problem.Errorf(http.StatusNotFound, problem.NotFound,
			"no client group %q: the sidecar has never seen it, or it was deleted long enough ago that its tombstone is gone too", id))
		return
	case err != nil:
		s.log.Warn("inspecting a client group failed", "group", id, "error", err)
		problem.Write(w, problem.Unavailable(problem.DatabaseUnavailable, dbProbeEvery, "reading the group from the sidecar's database failed; retry"))
		return
	}
	problem.WriteJSON(w, http.StatusOK, s.groupReport(st))
}

// GroupReport is one client group, inspected (GET /groups/{id} on the
// admin listener; `replicache-sidecar inspect`). Times are UTC; a zero one
// is left out.
type GroupReport struct {
	ClientGroupID string    `json:"clientGroupID"`
	User          string    `json:"user"` // who owns it ("" in single-tenant mode)
	CreatedAt     time.Time `json:"createdAt"`
	LastUsedAt    time.Time `json:"lastUsedAt"` // a pull, or a processed mutation (noted at most hourly by pushes)
	// DeletedAt: the sweep deleted the group's state (idle for
	// SIDECAR_CLIENT_GROUP_TTL); its clients start over.
	DeletedAt   time.Time       `json:"deletedAt,omitzero"`
	CookieOrder int64           `json:"cookieOrder"` // of the last cookie issued to it
	Clients     []ReportClient  `json:"clients"`
	Pending     []ReportPending `json:"pendingMutations"` // answered with a retryable status, still pending
	Record      ReportRecord    `json:"record"`
	PokeStreams ReportStreams   `json:"pokeStreams"`
	// Rejections are the newest rejection records (at most 20), with the
	// API's answer as recorded.
	Rejections []ReportRejection `json:"rejections"`
	// History is the newest events first; at most HistoryKept
	// (SIDECAR_MAX_HISTORY_PER_GROUP) are kept.
	History     []ReportEvent `json:"history"`
	HistoryKept int           `json:"historyKept"`
}

// ReportClient is one client of the group.
type ReportClient struct {
	ClientID       string    `json:"clientID"`
	LastMutationID int64     `json:"lastMutationID"`
	CreatedAt      time.Time `json:"createdAt"`
	UpdatedAt      time.Time `json:"updatedAt"`
}

// ReportPending is a pending mutation the API answered with a retryable
// status: its answers so far (counted: toward giving up).
type ReportPending struct {
	ClientID   string    `json:"clientID"`
	MutationID int64     `json:"mutationID"`
	Counted    int       `json:"counted"`
	Uncounted  int       `json:"uncounted"`
	LastStatus int       `json:"lastStatus"`
	FirstAt    time.Time `json:"firstAt"`
	LastAt     time.Time `json:"lastAt,omitzero"`
}

// ReportRecord is the group's view record: what its clients were last
// served.
type ReportRecord struct {
	ID         string         `json:"id,omitempty"` // none before the first pull (or in reset mode)
	Version    int64          `json:"version"`
	MinVersion int64          `json:"minVersion"` // the oldest version a diff starts from; older cookies get a reset
	Evicted    bool           `json:"evicted,omitempty"`
	Entries    int64          `json:"entries"`
	Removed    int64          `json:"removed"` // remembered removals (for diffs)
	Bytes      int64          `json:"bytes"`   // logical size: keys, hashes and versions
	Sources    []ReportSource `json:"sources"`
}

// ReportSource is one view source of the mapping in use, and what the
// record holds of it (a source the mapping no longer has, but the record
// still does, has no path).
type ReportSource struct {
	Path        string `json:"path,omitempty"`
	Fingerprint string `json:"fingerprint"`
	// Mode is how pulls read it: full (in full, every pull), delta (by
	// its changes; in full now and then), maxAge (skipped while the
	// record's copy is younger than its maxAge), shared (one read per
	// replica for every group). Only delta and maxAge sources keep a
	// state in the record (watermark, fullAt, readAt).
	Mode      string    `json:"mode,omitempty"`
	Watermark string    `json:"watermark,omitempty"` // where its next delta read starts
	FullAt    time.Time `json:"fullAt,omitzero"`     // last read in full
	ReadAt    time.Time `json:"readAt,omitzero"`     // last read at all
}

// ReportStreams counts the group's poke streams (those naming it in
// clientGroupID) open in the replica that answered: each replica holds
// its own.
type ReportStreams struct {
	Replica string `json:"replica"` // the host name of the replica that answered
	Open    int    `json:"open"`
}

// ReportRejection is a rejection record.
type ReportRejection struct {
	ClientID   string    `json:"clientID"`
	MutationID int64     `json:"mutationID"`
	Mutator    string    `json:"mutator"`
	Status     int       `json:"status,omitempty"` // none: the mapping refused it
	Reason     string    `json:"reason"`
	Body       string    `json:"body,omitempty"` // the start of the API's answer
	At         time.Time `json:"at"`
}

// ReportEvent is one event of the group's history: a mutation's outcome
// (applied, rejected, abandoned, pending) with the API's status, or a pull
// that changed what its client holds (diff, reset, lost) with its cookie.
type ReportEvent struct {
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"` // mutation or pull
	Outcome string    `json:"outcome"`

	ClientID   string `json:"clientID,omitempty"`
	MutationID int64  `json:"mutationID,omitempty"`
	Mutator    string `json:"mutator,omitempty"`
	Status     int    `json:"status,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Counted    *bool  `json:"counted,omitempty"` // pending: counts toward giving up

	CookieOrder int64  `json:"cookieOrder,omitempty"`
	Version     int64  `json:"version,omitempty"` // the record version the client holds afterwards
	Since       *int64 `json:"since,omitempty"`   // a diff's: from the cookie's version
	Puts        *int   `json:"puts,omitempty"`
	Dels        *int   `json:"dels,omitempty"`
}

// groupReport turns what the store holds of a group into its report.
func (s *core) groupReport(st store.GroupState) GroupReport {
	utc := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return t.UTC()
	}
	host, _ := os.Hostname()
	out := GroupReport{ClientGroupID: st.ID, User: st.User, CreatedAt: utc(st.CreatedAt), LastUsedAt: utc(st.LastUsedAt),
		DeletedAt: utc(st.DeletedAt), CookieOrder: st.CookieOrder,
		Clients: []ReportClient{}, Pending: []ReportPending{}, Rejections: []ReportRejection{}, History: []ReportEvent{},
		PokeStreams: ReportStreams{Replica: host, Open: s.lag.Streams(st.ID, st.User)},
		HistoryKept: s.cfg.MaxHistoryPerGroup,
		Record: ReportRecord{Version: st.Record.Version, MinVersion: st.Record.MinVersion, Evicted: st.Record.Evicted,
			Entries: st.Record.Entries, Removed: st.Record.Removed, Bytes: st.Record.Bytes, Sources: []ReportSource{}},
	}
	if st.Record.ID != 0 {
		out.Record.ID = store.FormatID(st.Record.ID)
	}
	for _, c := range st.Clients {
		out.Clients = append(out.Clients, ReportClient{ClientID: c.ID, LastMutationID: c.LastMutationID,
			CreatedAt: utc(c.CreatedAt), UpdatedAt: utc(c.UpdatedAt)})
	}
	for _, p := range st.Pending {
		out.Pending = append(out.Pending, ReportPending{ClientID: p.ClientID, MutationID: p.MutationID, Counted: p.Counted,
			Uncounted: p.Uncounted, LastStatus: p.LastStatus, FirstAt: utc(p.FirstAt), LastAt: utc(p.LastAt)})
	}
	states := map[string]store.SourceState{}
	for _, src := range st.Sources {
		states[src.Source] = src
	}
	source := func(path, mode string, src store.SourceState) ReportSource {
		return ReportSource{Path: path, Fingerprint: src.Source, Mode: mode, Watermark: src.Watermark, FullAt: utc(src.FullAt), ReadAt: utc(src.ReadAt)}
	}
	for _, info := range s.mapping().Sources {
		mode := "full"
		switch {
		case info.Shared:
			mode = "shared"
		case info.Delta:
			mode = "delta"
		case info.MaxAge > 0:
			mode = "maxAge"
		}
		state := states[info.ID]
		state.Source = info.ID
		delete(states, info.ID)
		out.Record.Sources = append(out.Record.Sources, source(info.Path, mode, state))
	}
	for _, src := range st.Sources {
		if _, stale := states[src.Source]; stale {
			out.Record.Sources = append(out.Record.Sources, source("", "", src))
		}
	}
	for _, r := range st.Rejections {
		out.Rejections = append(out.Rejections, ReportRejection{ClientID: r.ClientID, MutationID: r.MutationID, Mutator: r.Mutator,
			Status: r.Status, Reason: r.Reason, Body: r.Body, At: utc(r.At)})
	}
	for _, e := range st.History {
		ev := ReportEvent{At: utc(e.At), Kind: e.Kind, Outcome: e.Outcome}
		switch e.Kind {
		case store.EventMutation:
			ev.ClientID, ev.MutationID, ev.Mutator, ev.Status, ev.Reason = e.ClientID, e.MutationID, e.Mutator, e.Status, e.Reason
			if e.Outcome == store.Pending.String() {
				ev.Counted = &e.Counted
			}
		case store.EventPull:
			ev.Puts, ev.Dels = &e.Puts, &e.Dels
			if e.Outcome != store.PullLost {
				ev.CookieOrder, ev.Version = e.CookieOrder, e.Version
			}
			if e.Outcome == store.PullDiff {
				ev.Since = &e.Since
			}
		}
		out.History = append(out.History, ev)
	}
	return out
}
