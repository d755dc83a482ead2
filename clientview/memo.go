package clientview

import (
	"net/http"
	"strings"
	"time"
)

// PageMemo is what one page of a source answered when it was last fetched
// in full: its validators (ETag, Last-Modified) and what it produced. With
// a memo for the very URL about to be fetched, the fetch asks the upstream
// conditionally (If-None-Match, If-Modified-Since); a 304 then stands for
// the memo's entries, by key and hash, without their values.
type PageMemo struct {
	Source       string // the source's fingerprint (Result.Pages sets it)
	Page         int    // 1-based
	URL          string // the page's URL as requested
	ETag         string
	LastModified string
	Next         string // the next page's URL; "" for the last page
	Total        int    // the total the page reported, when it was checked; -1 otherwise
	Keys         []string
	Hashes       []uint64
}

// Conditional reports whether the page's answer can be asked for
// conditionally.
func (m *PageMemo) Conditional() bool { return m.ETag != "" || m.LastModified != "" }

// Digest sums what the page produced (keys, hashes) and where it leads, to
// tell whether a stored memo needs rewriting.
func (m *PageMemo) Digest() uint64 {
	var b strings.Builder
	b.WriteString(m.Next)
	b.WriteByte(0)
	for i, k := range m.Keys {
		b.WriteString(k)
		b.WriteByte(0)
		var h [8]byte
		for j := range h {
			h[j] = byte(m.Hashes[i] >> (8 * j))
		}
		b.Write(h[:])
	}
	return Hash([]byte(b.String()))
}

// PageKey names a page of a source.
type PageKey struct {
	Source string
	Page   int
}

// Result is a fetched view: its entries and, per page fetched, what it
// answered. An entry of a page answered 304 Not Modified has no Value, only
// its Key and Hash: the caller must know the client already holds it.
type Result struct {
	Entries []Entry
	Pages   []PageResult // pages of the sources read in full
	// Sources says, per source in the view's order, how it was read and
	// what the read found (watermark, soft-deleted keys, ...).
	Sources []SourceResult
}

// PageResult is one page of a fetch.
type PageResult struct {
	PageMemo
	// NotModified: the upstream answered 304 to the conditional request;
	// the memo is the stored one.
	NotModified bool
	// Conditional: the request carried validators.
	Conditional bool
}

// validatorsOf returns the validators of an answer worth remembering: an
// ETag, and a Last-Modified only when it is strong in HTTP's sense (at
// least a second before the answer's Date; a page changed again within the
// same second would otherwise be answered 304 on the date for good). Each
// must be printable ASCII of at most 256 bytes: anything else is not
// remembered, and the page is fetched in full next time.
func validatorsOf(h http.Header) (etag, lastModified string) {
	if v := h.Get("ETag"); plainHeader(v) {
		etag = v
	}
	v := h.Get("Last-Modified")
	if !plainHeader(v) {
		return etag, ""
	}
	lm, err1 := http.ParseTime(v)
	date, err2 := http.ParseTime(h.Get("Date"))
	if err1 != nil || err2 != nil || date.Sub(lm) < time.Second {
		return etag, ""
	}
	return etag, v
}

func plainHeader(v string) bool {
	if v == "" || len(v) > 256 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// validators sets the conditional request headers for memo m.
func validators(h http.Header, m *PageMemo) {
	if m.ETag != "" {
		h.Set("If-None-Match", m.ETag)
	}
	if m.LastModified != "" {
		h.Set("If-Modified-Since", m.LastModified)
	}
}
