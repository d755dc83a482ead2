package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// writePull sends the answer and accounts for it. The body is written as it
// is encoded: a view is never held twice, once as entries and once as the
// answer's bytes.
func (s *Sidecar) writePull(w http.ResponseWriter, c *call, ans pullAnswer) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	n, ops, err := encodePullResponse(w, ans)
	if err != nil {
		c.log.Info("client went away while the pull was written", "error", err, "bytes", n)
		return
	}
	s.metrics.pullEntries.Observe(float64(ops.put + ops.del))
	s.metrics.pullBytes.Observe(float64(n))
	patch, clears := "diff", 0.0
	if !ans.diff {
		patch, clears = "reset", 1
	}
	s.metrics.patchOps.WithLabelValues(opClear).Observe(clears)
	s.metrics.patchOps.WithLabelValues(opPut).Observe(float64(ops.put))
	s.metrics.patchOps.WithLabelValues(opDel).Observe(float64(ops.del))
	c.log.Info("pull", "entries", len(ans.entries), "patch", patch, "puts", ops.put, "dels", ops.del,
		"clients", len(ans.lmids), "bytes", n, "cookie", ans.order, "duration", time.Since(c.start))
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
	b.WriteString(`{"cookie":{"order":`)
	b.WriteString(strconv.FormatInt(ans.order, 10))
	b.WriteString(`,"db":`)
	writeJSONString(b, ans.epoch)
	b.WriteString(`,"g":`)
	writeJSONString(b, ans.group)
	if ans.change != nil {
		b.WriteString(`,"rec":"`)
		b.WriteString(store.FormatID(ans.change.Record.ID))
		b.WriteString(`","v":`)
		b.WriteString(strconv.FormatInt(ans.change.Record.Version, 10))
		b.WriteString(`,"t":"`)
		b.WriteString(store.FormatID(ans.change.Record.Tag))
		b.WriteByte('"')
	}
	b.WriteString(`},"lastMutationIDChanges":{`)
	ids := make([]string, 0, len(ans.lmids))
	for id := range ans.lmids {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(b, id)
		b.WriteByte(':')
		b.WriteString(strconv.FormatInt(ans.lmids[id], 10))
	}
	b.WriteString(`},"patch":[`)
	sep := false
	op := func(name, key string) { // starts an operation on key
		if sep {
			b.WriteByte(',')
		}
		sep = true
		b.WriteString(`{"op":"`)
		b.WriteString(name)
		b.WriteString(`","key":`)
		writeJSONString(b, key)
	}
	if !ans.diff {
		b.WriteString(`{"op":"clear"}`)
		sep = true
	} else {
		for _, t := range ans.change.Tombstones {
			if t.Version > ans.since {
				op("del", t.Key)
				b.WriteByte('}')
				ops.del++
			}
		}
	}
	for i, e := range ans.entries {
		if ans.diff && ans.change.Versions[i] <= ans.since {
			continue
		}
		op("put", e.Key)
		b.WriteString(`,"value":`)
		b.Write(e.Value)
		b.WriteByte('}')
		ops.put++
	}
	b.WriteString("]}")
	err := b.Flush() // the first write error sticks and shows here
	return cw.n, ops, err
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

// writeJSONString writes s as a JSON string. Keys and ids are nearly always
// plain ASCII, written as they are; anything else goes through
// encoding/json's escaping.
func writeJSONString(b *bufio.Writer, s string) {
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	if plain {
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	q, _ := json.Marshal(s) // a string always encodes
	b.Write(q)
}
