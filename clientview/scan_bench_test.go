package clientview

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// benchPage is a page of 1,000 items of about 110 bytes, in DRF's shape.
func benchPage() []byte {
	var b strings.Builder
	b.WriteString(`{"count":1000,"next":null,"previous":null,"results":[`)
	for i := range 1000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"t%07d","title":"alpha bravo charlie delta echo %d","done":false,"updatedAt":"2026-11-30T04:12:33.000Z"}`, i, i)
	}
	b.WriteString("]}")
	return []byte(b.String())
}

// BenchmarkScanPage: the one pass a pull makes over each page, next to
// json.Valid alone (which the pass replaces, and does more than).
func BenchmarkScanPage(b *testing.B) {
	page := benchPage()
	b.Run("scanPage", func(b *testing.B) {
		b.SetBytes(int64(len(page)))
		var reuse pageScan
		for b.Loop() {
			p, ok := scanPage(page, []string{"results"}, []string{"id"}, &reuse)
			if !ok || len(p.items) != 1000 {
				b.Fatal("scan failed")
			}
			reuse = p
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(page)))
		for b.Loop() {
			if !json.Valid(page) {
				b.Fatal("invalid")
			}
		}
	})
}

// benchNestedPage is benchPage with each item's id inside an owner object
// and spaced out, so that keys take the walk (a nested field) and values
// are compacted.
func benchNestedPage() []byte {
	var b strings.Builder
	b.WriteString(`{"count": 1000, "next": null, "results": [`)
	for i := range 1000 {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, `{"owner": {"id": "t%07d"}, "title": "alpha bravo charlie delta echo %d", "done": false, "updatedAt": "2026-11-30T04:12:33.000Z"}`, i, i)
	}
	b.WriteString("]}")
	return []byte(b.String())
}

// BenchmarkEntries: turning a scanned page into entries, by the scan's
// fields (flat key), by the walk (nested key), and by the walk alone (no
// scan results, as when the items are not where the scan looked).
func BenchmarkEntries(b *testing.B) {
	for _, bc := range []struct {
		name, key string
		page      []byte
		noScan    bool
	}{
		{"scanned", "todo/{id}", benchPage(), false},
		{"nested-key", "todo/{owner.id}", benchNestedPage(), false},
		{"walked", "todo/{owner.id}", benchNestedPage(), true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cs, errs := compileSource(Source{Path: "/x", Items: "results", Key: bc.key})
			if len(errs) > 0 {
				b.Fatal(errs)
			}
			scan, ok := scanPage(bc.page, cs.items, cs.keyFields, nil)
			if !ok {
				b.Fatal("scan failed")
			}
			if bc.noScan {
				scan = pageScan{}
			}
			b.SetBytes(int64(len(bc.page)))
			for b.Loop() {
				es, err := cs.entries(bc.page, &scan)
				if err != nil || len(es) != 1000 {
					b.Fatal(len(es), err)
				}
			}
		})
	}
}
