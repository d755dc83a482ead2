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
