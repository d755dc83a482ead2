// Package inspection is what an operator sees of one client group when a user
// says "my edit vanished" (GET /groups/{id} on the admin listener, and
// `replicache-sidecar inspect`): its clients, pending mutations, view
// record and sources, rejections and recent history, as JSON.
package inspection

import (
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// Group is one client group, inspected (GET /groups/{id} on the
// admin listener; `replicache-sidecar inspect`). Times are UTC; a zero one
// is left out.
type Group struct {
	ClientGroupID string    `json:"clientGroupID"`
	User          string    `json:"user"` // who owns it ("" in single-tenant mode)
	CreatedAt     time.Time `json:"createdAt"`
	LastUsedAt    time.Time `json:"lastUsedAt"` // a pull, or a processed mutation (noted at most hourly by pushes)
	// DeletedAt: the sweep deleted the group's state (idle for
	// SIDECAR_CLIENT_GROUP_TTL); its clients start over.
	DeletedAt   time.Time `json:"deletedAt,omitzero"`
	CookieOrder int64     `json:"cookieOrder"` // of the last cookie issued to it
	Clients     []Client  `json:"clients"`
	Pending     []Pending `json:"pendingMutations"` // answered with a retryable status, still pending
	Record      Record    `json:"record"`
	PokeStreams Streams   `json:"pokeStreams"`
	// Rejections are the newest rejection records (at most 20), with the
	// API's answer as recorded.
	Rejections []Rejection `json:"rejections"`
	// History is the newest events first; at most HistoryKept
	// (SIDECAR_MAX_HISTORY_PER_GROUP) are kept.
	History     []Event `json:"history"`
	HistoryKept int     `json:"historyKept"`
}

// Client is one client of the group.
type Client struct {
	ClientID       string    `json:"clientID"`
	LastMutationID int64     `json:"lastMutationID"`
	CreatedAt      time.Time `json:"createdAt"`
	UpdatedAt      time.Time `json:"updatedAt"`
}

// Pending is a pending mutation the API answered with a retryable
// status: its answers so far (counted: toward giving up).
type Pending struct {
	ClientID   string    `json:"clientID"`
	MutationID int64     `json:"mutationID"`
	Counted    int       `json:"counted"`
	Uncounted  int       `json:"uncounted"`
	LastStatus int       `json:"lastStatus"`
	FirstAt    time.Time `json:"firstAt"`
	LastAt     time.Time `json:"lastAt,omitzero"`
}

// Record is the group's view record: what its clients were last
// served.
type Record struct {
	ID         string   `json:"id,omitempty"` // none before the first pull (or in reset mode)
	Version    int64    `json:"version"`
	MinVersion int64    `json:"minVersion"` // the oldest version a diff starts from; older cookies get a reset
	Evicted    bool     `json:"evicted,omitempty"`
	Entries    int64    `json:"entries"`
	Removed    int64    `json:"removed"` // remembered removals (for diffs)
	Bytes      int64    `json:"bytes"`   // logical size: keys, hashes and versions
	Sources    []Source `json:"sources"`
}

// Source is one view source of the mapping in use, and what the
// record holds of it (a source the mapping no longer has, but the record
// still does, has no path).
type Source struct {
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

// Streams counts the group's poke streams (those naming it in
// clientGroupID) open in the replica that answered: each replica holds
// its own.
type Streams struct {
	Replica string `json:"replica"` // the host name of the replica that answered
	Open    int    `json:"open"`
}

// Rejection is a rejection record.
type Rejection struct {
	ClientID   string    `json:"clientID"`
	MutationID int64     `json:"mutationID"`
	Mutator    string    `json:"mutator"`
	Status     int       `json:"status,omitempty"` // none: the mapping refused it
	Reason     string    `json:"reason"`
	Body       string    `json:"body,omitempty"` // the start of the API's answer
	At         time.Time `json:"at"`
}

// Event is one event of the group's history: a mutation's outcome
// (applied, rejected, abandoned, pending) with the API's status, or a pull
// that changed what its client holds (diff, reset, lost) with its cookie.
type Event struct {
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

// Build turns what the store holds of a group into its report: sources
// are the mapping's view sources, streams the group's poke streams open in
// this replica, historyKept SIDECAR_MAX_HISTORY_PER_GROUP.
func Build(st store.GroupState, sources []clientview.SourceInfo, streams Streams, historyKept int) Group {
	utc := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return t.UTC()
	}
	out := Group{ClientGroupID: st.ID, User: st.User, CreatedAt: utc(st.CreatedAt), LastUsedAt: utc(st.LastUsedAt),
		DeletedAt: utc(st.DeletedAt), CookieOrder: st.CookieOrder,
		Clients: []Client{}, Pending: []Pending{}, Rejections: []Rejection{}, History: []Event{},
		PokeStreams: streams,
		HistoryKept: historyKept,
		Record: Record{Version: st.Record.Version, MinVersion: st.Record.MinVersion, Evicted: st.Record.Evicted,
			Entries: st.Record.Entries, Removed: st.Record.Removed, Bytes: st.Record.Bytes, Sources: []Source{}},
	}
	if st.Record.ID != 0 {
		out.Record.ID = store.FormatID(st.Record.ID)
	}
	for _, c := range st.Clients {
		out.Clients = append(out.Clients, Client{ClientID: c.ID, LastMutationID: c.LastMutationID,
			CreatedAt: utc(c.CreatedAt), UpdatedAt: utc(c.UpdatedAt)})
	}
	for _, p := range st.Pending {
		out.Pending = append(out.Pending, Pending{ClientID: p.ClientID, MutationID: p.MutationID, Counted: p.Counted,
			Uncounted: p.Uncounted, LastStatus: p.LastStatus, FirstAt: utc(p.FirstAt), LastAt: utc(p.LastAt)})
	}
	states := map[string]store.SourceState{}
	for _, src := range st.Sources {
		states[src.Source] = src
	}
	source := func(path, mode string, src store.SourceState) Source {
		return Source{Path: path, Fingerprint: src.Source, Mode: mode, Watermark: src.Watermark, FullAt: utc(src.FullAt), ReadAt: utc(src.ReadAt)}
	}
	for _, info := range sources {
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
		out.Rejections = append(out.Rejections, Rejection{ClientID: r.ClientID, MutationID: r.MutationID, Mutator: r.Mutator,
			Status: r.Status, Reason: r.Reason, Body: r.Body, At: utc(r.At)})
	}
	for _, e := range st.History {
		ev := Event{At: utc(e.At), Kind: e.Kind, Outcome: e.Outcome}
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
