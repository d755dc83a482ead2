// Package plan decides, for one pull, how to read each view source: in
// full, by what changed since its watermark (delta), or not at all (skip),
// from what the group's record holds of the source, whether the pull holds
// the record's current version, and the writes this replica has seen under
// the source's path. It is the one place that decision is made: the fetch,
// the diff against the record and `check` read the same Plans.
//
// # Contract
//
//   - Only a pull that holds the record's current version (and every pull
//     that shares its fetch) reads less than everything: a delta or a skip
//     brings no values for what it keeps, and a client further behind needs
//     them. So do only views whose keys tell their source
//     (clientview.View.Distinct): a key the read did not bring is kept only
//     when its source was not read in full.
//   - A delta source is read in full on the group's first read of it,
//     after SIDECAR's fullEvery, when the replica cannot know whether a
//     delete happened since the last full read (it started after it), and
//     when a DELETE the sidecar routed fell under the source's path since:
//     a modified-since filter never shows a hard delete.
//   - A maxAge source is read again after maxAge, or when a write under its
//     path, or the invalidate hook naming it, came since it was read.
//   - Times compared are the sidecar's: when a read started, and when the
//     API had answered a write (so had applied it). A write applied while
//     a read was under way is marked after the read's start, and the next
//     pull reads again. Watermarks are the API's own values.
//
// A Writes is safe for concurrent use; Decide and After are pure.
package plan

import (
	"strings"
	"sync"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// Writes remembers, in this replica, when a write the sidecar saw last fell
// under each view source's path, and when a DELETE did. It knows nothing
// from before it started: every read older than that is treated as if a
// write and a delete came after it.
type Writes struct {
	mu      sync.Mutex
	started time.Time
	paths   []string        // the sources' paths (Key); {userID} matches any segment
	aged    map[string]bool // the paths of sources with a maxAge: a write under one is worth telling
	last    map[string]stamp
	all     time.Time // a write under every source (the invalidate hook without sources, missed announcements)
}

type stamp struct{ write, del time.Time }

// NewWrites returns the write marks of a replica that starts now.
func NewWrites(now time.Time) *Writes {
	return &Writes{started: now, last: map[string]stamp{}}
}

// Sources sets the source paths writes are matched against (the mapping's;
// call again when it is reloaded).
func (w *Writes) Sources(infos []clientview.SourceInfo) {
	paths, aged := make([]string, 0, len(infos)), map[string]bool{}
	for _, s := range infos {
		paths = append(paths, Key(s.Path))
		if s.MaxAge > 0 {
			aged[Key(s.Path)] = true
		}
	}
	w.mu.Lock()
	w.paths, w.aged = paths, aged
	w.mu.Unlock()
}

// Key is how marks name a source: its path without query or trailing
// slash.
func Key(path string) string {
	p, _, _ := strings.Cut(path, "?")
	return strings.TrimSuffix(p, "/")
}

// Saw notes a write of method to path (the URL path as sent to the API),
// at the moment it was sent, and returns what to tell the other replicas
// (Marked) and the database (store.MarkSources): the paths of the maxAge
// sources it fell under (written: a delta source reads a write by its
// changes anyway), and for a DELETE of every source it fell under
// (deleted).
func (w *Writes) Saw(method, path string, at time.Time) (written, deleted []string) {
	path, _, _ = strings.Cut(path, "?")
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.paths {
		if !under(path, p) {
			continue
		}
		st := w.last[p]
		st.write = later(st.write, at)
		if w.aged[p] {
			written = append(written, p)
		}
		if method == "DELETE" {
			st.del = later(st.del, at)
			deleted = append(deleted, p)
		}
		w.last[p] = st
	}
	return written, deleted
}

// Marked notes marks another replica announced (Saw's paths), or, with
// all, that some may have been missed.
func (w *Writes) Marked(written, deleted []string, all bool, at time.Time) {
	if all {
		w.All(at)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range written {
		st := w.last[p]
		st.write = later(st.write, at)
		w.last[p] = st
	}
	for _, p := range deleted {
		st := w.last[p]
		st.del = later(st.del, at)
		w.last[p] = st
	}
}

// SawPath notes a write under the source path p exactly as mapped (the
// invalidate hook names sources by their path).
func (w *Writes) SawPath(p string, at time.Time) {
	p = Key(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.last[p]
	st.write, st.del = later(st.write, at), later(st.del, at)
	w.last[p] = st
}

// All notes that anything may have changed under every source, deletes
// included (an invalidate naming no source, announcements missed while the
// replicas' channel was down).
func (w *Writes) All(at time.Time) {
	w.mu.Lock()
	w.all = later(w.all, at)
	w.mu.Unlock()
}

// since returns when the last write, and the last delete, came under the
// source path p.
func (w *Writes) since(p string) (write, del time.Time) {
	p = Key(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.last[p]
	floor := later(w.started, w.all)
	return later(st.write, floor), later(st.del, floor)
}

// under reports whether path is at or below the source path p, segment by
// segment ({userID} in p matches any one segment).
func under(path, p string) bool {
	ps, ws := strings.Split(strings.Trim(p, "/"), "/"), strings.Split(strings.Trim(path, "/"), "/")
	if len(ws) < len(ps) {
		return false
	}
	for i, seg := range ps {
		if seg != ws[i] && !strings.Contains(seg, "{userID}") {
			return false
		}
	}
	return true
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Input is what Decide decides from.
type Input struct {
	Sources []clientview.SourceInfo
	View    *clientview.View
	// States is what the group's record holds of each source (by id).
	States map[string]store.SourceState
	// Current: the pull, and every pull sharing its fetch, holds the
	// record's current version.
	Current bool
	Writes  *Writes
	// Marks are the writes and deletes every replica routed, as the
	// database held them when the pull began (store.SourceStates; by Key).
	// They are another replica's clock: each counts as MarkSkew later.
	Marks map[string]store.SourceMark
	Now   time.Time
}

// MarkSkew is how far another replica's clock may be behind this one's: a
// mark from the database that this replica has not heard of counts as that
// much later than it says, so a read that began just after it, by this
// replica's clock, is not taken to have seen it (it is read once more
// instead).
const MarkSkew = time.Second

// seen returns when the last write, and the last delete, came under the
// source path p: by this replica's marks, and by the database's.
func (in Input) seen(p string) (write, del time.Time) {
	return in.Writes.Seen(p, in.Marks[Key(p)])
}

// Seen returns when the last write, and the last delete, came under the
// source path p, by this replica's marks and m, the database's. A mark of
// m this replica knows (it made it, or heard it announced: its own stamp
// is as late) is taken as it is; one it does not, as MarkSkew later.
func (w *Writes) Seen(p string, m store.SourceMark) (write, del time.Time) {
	write, del = w.since(p)
	return unheard(write, m.Write), unheard(del, m.Delete)
}

// unheard merges the database's mark m into the replica's own stamp.
func unheard(own, m time.Time) time.Time {
	if m.IsZero() || !m.After(own.Add(time.Microsecond)) { // the database keeps microseconds
		return own
	}
	return m.Add(MarkSkew)
}

// Decision is how to read each source, and why.
type Decision struct {
	Plans   map[string]clientview.Plan // by source id; Full where absent
	Reasons map[string]string          // by source id: why it is read in full, or not at all
}

// Reasons a source is read as it is.
const (
	ReasonFirst     = "first read"
	ReasonBehind    = "the pull does not hold the record's current version"
	ReasonAmbiguous = "the view's keys do not tell their source"
	ReasonFullEvery = "fullEvery passed"
	ReasonDeleted   = "a delete may have come since the last full read"
	ReasonChanges   = "changes since the watermark"
	ReasonFresh     = "fresh (maxAge), no write under it since"
	ReasonStale     = "maxAge passed, or a write under it since"
	ReasonNoPlan    = "no changes or maxAge"
)

// Decide returns how to read each source.
func Decide(in Input) Decision {
	d := Decision{Plans: map[string]clientview.Plan{}, Reasons: map[string]string{}}
	partial := in.Current && in.View.Distinct()
	for _, s := range in.Sources {
		st, known := in.States[s.ID]
		full := func(reason string) { d.Reasons[s.ID] = reason }
		switch {
		case !s.Delta && s.MaxAge == 0:
			full(ReasonNoPlan)
		case !in.Current:
			full(ReasonBehind)
		case !partial:
			full(ReasonAmbiguous)
		case !known || st.ReadAt.IsZero():
			full(ReasonFirst)
		case s.Delta:
			write, del := in.seen(s.Path)
			_ = write // a delta read sees what was written; only deletes need a full read
			switch {
			case st.FullAt.IsZero() || st.Watermark == "":
				full(ReasonFirst)
			case in.Now.Sub(st.FullAt) >= s.FullEvery:
				full(ReasonFullEvery)
			case !del.Before(st.FullAt):
				full(ReasonDeleted)
			case s.MaxAge > 0 && in.Now.Sub(st.ReadAt) < s.MaxAge && write.Before(st.ReadAt):
				d.Plans[s.ID] = clientview.Plan{Mode: clientview.Skip}
				d.Reasons[s.ID] = ReasonFresh
			default:
				d.Plans[s.ID] = clientview.Plan{Mode: clientview.Delta, Since: st.Watermark}
				d.Reasons[s.ID] = ReasonChanges
			}
		default: // maxAge
			write, _ := in.seen(s.Path)
			if in.Now.Sub(st.ReadAt) < s.MaxAge && write.Before(st.ReadAt) {
				d.Plans[s.ID] = clientview.Plan{Mode: clientview.Skip}
				d.Reasons[s.ID] = ReasonFresh
			} else {
				full(ReasonStale)
			}
		}
	}
	return d
}

// Retain reports, for a key of the group's record that reads did not
// bring, whether it stays: its source was read by its changes, or not at
// all. It goes by how each source was read, not by how it was planned: a
// source planned by its changes may have been read in full (a shared
// source is served from the replica's copy, a full read; a watermark that
// cannot be used), and a full read keeps nothing it lacks. Nil when every
// source was read in full.
func Retain(v *clientview.View, reads []clientview.SourceResult) func(key string) bool {
	partial := map[string]bool{}
	for _, r := range reads {
		if r.Mode != clientview.Full {
			partial[r.Source] = true
		}
	}
	if len(partial) == 0 {
		return nil
	}
	return func(key string) bool {
		id, ok := v.Owner(key)
		return ok && partial[id]
	}
}

// After returns the source states to write with the record after a read
// that started at started: a source read in full moves its FullAt and
// ReadAt, a maxAge source read its ReadAt, and the watermark moves to the
// greatest value read (it never goes back) when the read proves it saw
// every change up to it (proven). What did not change is left out: a delta
// read that found nothing new writes nothing.
func After(states map[string]store.SourceState, reads []clientview.SourceResult, infos []clientview.SourceInfo, started time.Time) []store.SourceState {
	info := map[string]clientview.SourceInfo{}
	for _, s := range infos {
		info[s.ID] = s
	}
	var out []store.SourceState
	for _, r := range reads {
		s := info[r.Source]
		if r.Mode == clientview.Skip || !s.Delta && s.MaxAge == 0 {
			continue
		}
		old := states[r.Source]
		st := old
		st.Source = r.Source
		if r.Mode == clientview.Full || s.MaxAge > 0 {
			st.ReadAt = started
		}
		if r.Mode == clientview.Full {
			st.FullAt = started
		}
		if r.Mode == clientview.Full || proven(r) {
			st.Watermark = clientview.MaxMark(st.Watermark, r.Watermark)
		}
		if st != old {
			out = append(out, st)
		}
	}
	return out
}

// proven reports whether a read's pages show that it missed no item: one
// answer, or pages known to fit together (clientview.SourceResult.Provable).
// Otherwise an item deleted in the API on a page already read moves the
// next one up onto it, unseen. A delta read that cannot prove this leaves
// the watermark where it was, so the next delta read asks for the same
// window again (an item read again unchanged makes no op) instead of
// skipping past a change until the next full read. A full read moves it
// regardless: it is where a group starts, and a deletion it derives is
// confirmed (pullBuild.unconfirmed).
func proven(r clientview.SourceResult) bool {
	return r.Provable || r.Requests == 1 // one request, one answer: nothing between pages to shift
}
