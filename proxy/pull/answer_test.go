package pull

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/compress"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

func TestEncodePullResponse(t *testing.T) {
	entries := []clientview.Entry{{Key: "k\n1", Value: json.RawMessage(`{"v":[1,2]}`)}, {Key: "plain-key", Value: json.RawMessage(`1`)}}
	lmids := map[string]int64{"b": 2, "a\"x": 1}
	change := &store.ViewChange{Record: store.ViewRecord{ID: 0xabc, Version: 7, MinVersion: 2, Tag: 0xf},
		Versions: []int64{7, 3}, Tombstones: []store.Tombstone{{Key: "gone", Version: 5}, {Key: "old", Version: 3}}}
	for _, tc := range []struct {
		name string
		ans  pullAnswer
		ops  patchCounts
		want string
	}{
		{"reset mode", pullAnswer{pullView: &pullView{epoch: "e1", group: "g1", lmids: lmids, entries: entries}, order: 9}, patchCounts{put: 2},
			`{"cookie":{"order":9,"db":"e1","g":"g1"},"lastMutationIDChanges":{"a\"x":1,"b":2},"patch":[{"op":"clear"},{"op":"put","key":"k\n1","value":{"v":[1,2]}},{"op":"put","key":"plain-key","value":1}]}`},
		{"reset in diff mode", pullAnswer{pullView: &pullView{epoch: "e1", group: "g1", lmids: lmids, entries: entries, change: change}, order: 9}, patchCounts{put: 2},
			`{"cookie":{"order":9,"db":"e1","g":"g1","rec":"0000000000000abc","v":7,"t":"000000000000000f"},"lastMutationIDChanges":{"a\"x":1,"b":2},"patch":[{"op":"clear"},{"op":"put","key":"k\n1","value":{"v":[1,2]}},{"op":"put","key":"plain-key","value":1}]}`},
		{"diff since 3", pullAnswer{pullView: &pullView{epoch: "e1", group: "g1", lmids: lmids, entries: entries, change: change}, order: 9, diff: true, since: 3}, patchCounts{put: 1, del: 1},
			`{"cookie":{"order":9,"db":"e1","g":"g1","rec":"0000000000000abc","v":7,"t":"000000000000000f"},"lastMutationIDChanges":{"a\"x":1,"b":2},"patch":[{"op":"del","key":"gone"},{"op":"put","key":"k\n1","value":{"v":[1,2]}}]}`},
		{"unchanged", pullAnswer{pullView: &pullView{epoch: "e1", group: "g1", lmids: map[string]int64{}, entries: entries, change: change}, order: 10, diff: true, since: 7}, patchCounts{},
			`{"cookie":{"order":10,"db":"e1","g":"g1","rec":"0000000000000abc","v":7,"t":"000000000000000f"},"lastMutationIDChanges":{},"patch":[]}`},
	} {
		var buf bytes.Buffer
		n, ops, err := encodePullResponse(&buf, tc.ans)
		body := buf.Bytes()
		if err != nil || n != int64(len(body)) {
			t.Fatalf("%s: wrote %d bytes (%v), the buffer has %d", tc.name, n, err, len(body))
		}
		if string(body) != tc.want || ops != tc.ops {
			t.Errorf("%s: got  %s %+v\nwant %s %+v", tc.name, body, ops, tc.want, tc.ops)
		}
		if !json.Valid(body) {
			t.Errorf("%s: not valid JSON", tc.name)
		}
	}
}

// BenchmarkCompressAnswer: the cost gzip adds to writing a 10,000-entity
// reset answer (1.55 MB), next to writing it plain, in one loop.
func BenchmarkCompressAnswer(b *testing.B) {
	entries := make([]clientview.Entry, 10000)
	for i := range entries {
		v := proxytest.Item(i, 0)
		entries[i] = clientview.Entry{Key: fmt.Sprintf("item/i%06d", i), Value: v}
	}
	ans := pullAnswer{pullView: &pullView{epoch: "e", group: "g", lmids: map[string]int64{"c": 1}, entries: entries}, order: 1}
	var pool compress.Pool
	var plain, zipped time.Duration
	var wire int
	for b.Loop() {
		t0 := time.Now()
		if _, _, err := encodePullResponse(io.Discard, ans); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		rec := httptest.NewRecorder()
		cw := pool.Writer(rec)
		if _, _, err := encodePullResponse(cw, ans); err != nil {
			b.Fatal(err)
		}
		cw.Finish()
		zipped += time.Since(t1)
		plain += t1.Sub(t0)
		wire = rec.Body.Len()
	}
	b.ReportMetric(float64(plain.Nanoseconds())/float64(b.N), "plain-ns/op")
	b.ReportMetric(float64(zipped.Nanoseconds())/float64(b.N), "gzip-ns/op")
	b.ReportMetric(float64(wire), "gzip-bytes")
}
