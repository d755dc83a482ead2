package pull

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// pullView is what the pulls answered from one fetch share.
type pullView struct {
	epoch   string           // the database's
	group   string           // the group's tag (store.GroupTag)
	lmids   map[string]int64 // every client of the group
	entries []clientview.Entry
	// change is the view compared with the group's record (diff mode);
	// nil in reset mode.
	change *store.ViewChange
	// reads says how each source was read ("/api/todos=delta"), for the log.
	reads []string
	// readAt is when the view's read began, before the group's cookie order
	// before these pulls (for the change lag: notePulls).
	readAt time.Time
	before int64
}

// pullAnswer is one pull's answer: the shared view, as a reset or as a
// diff from the version the pull's cookie names.
type pullAnswer struct {
	*pullView
	order int64 // the new cookie's order; 0: the pull's cookie cannot grow
	diff  bool  // answer the entries changed since version since, not a reset
	since int64
	// lost: the cookie names a version of the group's record, or an order,
	// this database never reached: it went back in time (restored from a
	// backup). The client must start over.
	lost bool
}

// writePull sends the answer and accounts for it. The body is written as it
// is encoded: a view is never held twice, once as entries and once as the
// answer's bytes.
func (s *Engine) writePull(w http.ResponseWriter, c *engine.Exchange, ans pullAnswer) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	n, ops, err := encodePullResponse(w, ans)
	if err != nil {
		c.Log.Info("client went away while the pull was written", "error", err, "bytes", n)
		return
	}
	s.pulled(c, ans, n, ops, false)
}

// pulled accounts for an answer of n bytes and ops, written whole or
// streamed (written while its view was read, stream.go).
func (s *Engine) pulled(c *engine.Exchange, ans pullAnswer, n int64, ops patchCounts, streamed bool) {
	s.Metrics.PullEntries.Observe(float64(ops.put + ops.del))
	s.Metrics.PullBytes.Observe(float64(n))
	patch, clears := "diff", 0.0
	if !ans.diff {
		patch, clears = "reset", 1
	}
	s.Metrics.PatchOps.WithLabelValues(metrics.OpClear).Observe(clears)
	s.Metrics.PatchOps.WithLabelValues(metrics.OpPut).Observe(float64(ops.put))
	s.Metrics.PatchOps.WithLabelValues(metrics.OpDel).Observe(float64(ops.del))
	c.Log.Info("pull", "entries", len(ans.entries), "patch", patch, "puts", ops.put, "dels", ops.del,
		"clients", len(ans.lmids), "bytes", n, "cookie", ans.order, "reads", ans.reads, "streamed", streamed, "duration", time.Since(c.Start))
}

type patchCounts struct{ put, del int }

// encodePullResponse writes the PullResponse by hand: entry values are
// already compact JSON and are copied, not re-encoded. The cookie names
// the database (epoch) and, in diff mode, the record version the client
// will hold. It returns the bytes written and the patch's operations.
func encodePullResponse(dst io.Writer, ans pullAnswer) (int64, patchCounts, error) {
	var ops patchCounts
	cw := &countingWriter{w: dst}
	b := bufio.NewWriterSize(cw, 32<<10)
	b.WriteString(`{"cookie":`)
	b.Write(appendCookie(b.AvailableBuffer(), ans))
	b.WriteString(`,"lastMutationIDChanges":`)
	b.Write(appendLastMutationIDs(b.AvailableBuffer(), ans.lmids))
	b.WriteString(`,"patch":[`)
	sep := false
	if !ans.diff {
		b.WriteString(`{"op":"clear"}`)
		sep = true
	} else {
		for _, t := range ans.change.Tombstones {
			if t.Version > ans.since {
				if sep {
					b.WriteByte(',')
				}
				sep = true
				b.Write(appendDel(b.AvailableBuffer(), t.Key))
				ops.del++
			}
		}
	}
	for i, e := range ans.entries {
		if ans.diff && ans.change.Versions[i] <= ans.since {
			continue
		}
		if sep {
			b.WriteByte(',')
		}
		sep = true
		if b.Available() < len(e.Key)+len(e.Value)+32 {
			// A value larger than the buffer is copied once, not twice.
			b.Write(appendJSONString(append(b.AvailableBuffer(), `{"op":"put","key":`...), e.Key))
			b.WriteString(`,"value":`)
			b.Write(e.Value)
			b.WriteByte('}')
		} else {
			b.Write(appendPut(b.AvailableBuffer(), e.Key, e.Value))
		}
		ops.put++
	}
	b.WriteString("]}")
	err := b.Flush() // the first write error sticks and shows here
	return cw.n, ops, err
}

// appendCookie appends the cookie of ans.
func appendCookie(b []byte, ans pullAnswer) []byte {
	b = append(b, `{"order":`...)
	b = strconv.AppendInt(b, ans.order, 10)
	b = append(b, `,"db":`...)
	b = appendJSONString(b, ans.epoch)
	b = append(b, `,"g":`...)
	b = appendJSONString(b, ans.group)
	if ans.change != nil {
		b = append(b, `,"rec":"`...)
		b = append(b, store.FormatID(ans.change.Record.ID)...)
		b = append(b, `","v":`...)
		b = strconv.AppendInt(b, ans.change.Record.Version, 10)
		b = append(b, `,"t":"`...)
		b = append(b, store.FormatID(ans.change.Record.Tag)...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// appendLastMutationIDs appends every client's last mutation id, in the
// order of the client ids.
func appendLastMutationIDs(b []byte, lmids map[string]int64) []byte {
	ids := make([]string, 0, len(lmids))
	for id := range lmids {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	b = append(b, '{')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, id)
		b = append(b, ':')
		b = strconv.AppendInt(b, lmids[id], 10)
	}
	return append(b, '}')
}

// appendPut appends a put operation; value is compact JSON.
func appendPut(b []byte, key string, value []byte) []byte {
	b = appendJSONString(append(b, `{"op":"put","key":`...), key)
	b = append(append(b, `,"value":`...), value...)
	return append(b, '}')
}

// appendDel appends a del operation.
func appendDel(b []byte, key string) []byte {
	return append(appendJSONString(append(b, `{"op":"del","key":`...), key), '}')
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// appendJSONString appends s as a JSON string. Keys and ids are nearly
// always plain ASCII, written as they are; anything else goes through
// encoding/json's escaping.
func appendJSONString(b []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	if plain {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// classify says how to answer a pull with cookie ck, given the group's
// record and last cookie order before this pull: a diff from the
// cookie's version, a reset (neither), or lost: ClientStateNotFound, for a
// cookie this group was issued by a database that is not this one, or by
// this one in a history it no longer has (restored from a backup: an order
// or record version it never reached, or one it reached differently). A
// cookie issued to another group (a forked group's hand-me-down) is never
// lost: it gets a reset. Nor is one naming a version of an evicted record
// (SIDECAR_MAX_VIEW_RECORDS_PER_USER): eviction keeps the group's cookie
// order, record id and version numbers and forgets only the rows and the
// versions' tags, so such a cookie is no sign of a lost history; it gets a
// reset. An order or version the group never reached still is.
func (v *pullView) classify(ck store.Cookie, before store.ViewRecord, beforeOrder int64) (lost, diff bool) {
	if lost, decided := v.classifyEarly(ck, beforeOrder, v.change != nil); decided {
		return lost, false
	}
	switch {
	case ck.Record != before.ID, v.change.Foreign(before, ck.Record, ck.Version, ck.Tag):
		return true, false
	case v.change.Evicted():
		return false, false
	}
	return false, v.change.Covers(ck.Record, ck.Version, ck.Tag)
}

// classifyEarly is classify before the view is read: decided when the
// cookie alone settles it (lost, or a reset whatever the view and the
// record turn out to be), which is what lets a reset's answer go out
// while the view is read (stream.go). diffMode: SIDECAR_PATCH_MODE is
// diff (classify's change is then set).
func (v *pullView) classifyEarly(ck store.Cookie, beforeOrder int64, diffMode bool) (lost, decided bool) {
	ours := ck.Group == v.group
	switch {
	case ck.Epoch != "" && ck.Epoch != v.epoch:
		return ours, true
	case !ours:
		return false, true
	case ck.Order > beforeOrder:
		return true, true
	case !diffMode || ck.Record == 0:
		return false, true
	}
	return false, false
}

// complete reports whether every entry a would put has its value (entries
// of pages answered 304 have none).
func (v *pullView) complete(a pullAnswer) bool {
	for i, e := range v.entries {
		if e.Value == nil && (!a.diff || v.change.Versions[i] > a.since) {
			return false
		}
	}
	return true
}

// notePulls notes, before the cookies are issued (store.NotePulls, written
// in the same round trip), what each pull of b is answered, for the
// group's history; and keeps when the view's read began, for the lag of
// the changes these pulls answer. In reset mode (no record) every pull is
// a reset and none is recorded.
func (s *Engine) notePulls(b *pullBuild) {
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
func (s *Engine) answered(c *engine.Exchange, req *pullRequest, ans pullAnswer) {
	if ans.pullView == nil || ans.readAt.IsZero() {
		return
	}
	s.Lag.Answered(req.ClientGroupID, c.User, ans.before, ans.order, ans.readAt, time.Now())
}
