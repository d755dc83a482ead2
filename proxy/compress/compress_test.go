package compress

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
)

// TestAcceptsGzip: gzip by name or by *, unless its q-value is 0.
func TestAcceptsGzip(t *testing.T) {
	for in, want := range map[string]bool{
		"gzip, deflate, br, zstd": true,
		"br;q=1.0, gzip;q=0.8":    true,
		"GZIP":                    true,
		"gzip;q=0":                false,
		"identity":                false,
		"":                        false,
		"*":                       true,
		"*;q=0":                   false,
		"gzip;q=0, *":             false,
		"deflate, x-gzip":         true,
	} {
		if got := acceptsGzip([]string{in}); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestHandlerEncodes: a body of 1 KiB or more goes out gzip-encoded and
// decodes to itself, again with a writer reused from the pool; a shorter
// one, or one to a client that does not accept gzip, goes out as it is.
func TestHandlerEncodes(t *testing.T) {
	var p Pool
	long := strings.Repeat(`{"op":"put","key":"todo/1","value":{"title":"milk"}},`, 200)
	for _, c := range []struct {
		accept, body, coding string
	}{
		{"gzip", long, "gzip"},
		{"gzip, deflate, br, zstd", long, "gzip"}, // a pooled writer, reset
		{"gzip", `{"short":true}`, ""},
		{"identity", long, ""},
	} {
		h := p.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, c.body) }))
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/", nil)
		req.Header.Set("Accept-Encoding", c.accept)
		h.ServeHTTP(rec, req)
		if got := rec.Header().Get("Content-Encoding"); got != c.coding || rec.Header().Get("Vary") != "Accept-Encoding" {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q, Vary %q; want %q", c.accept, got, rec.Header().Get("Vary"), c.coding)
		}
		var body io.Reader = rec.Body
		wire := rec.Body.Len()
		if c.coding == "gzip" {
			zr, err := gzip.NewReader(rec.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		}
		got, err := io.ReadAll(body)
		if err != nil || !bytes.Equal(got, []byte(c.body)) {
			t.Fatalf("Accept-Encoding %q: decoded %d bytes (%v), want the %d written", c.accept, len(got), err, len(c.body))
		}
		if c.coding != "" && wire*5 > len(c.body) {
			t.Errorf("%d bytes on the wire for %d", wire, len(c.body))
		}
	}
}

// TestFlushedAnswer: an answer flushed piece by piece (a streamed pull,
// through http.ResponseController) goes out gzip-encoded from its first
// piece, even one shorter than 1 KiB, and decodes to what was written.
// Without the Writer's own Flush the first flush sent the headers without
// Content-Encoding, and the gzip bytes that followed could not be read.
func TestFlushedAnswer(t *testing.T) {
	var p Pool
	first := `{"lastMutationIDChanges":{},"patch":[{"op":"clear"}`
	rest := strings.Repeat(`,{"op":"put","key":"todo/1","value":{"title":"milk"}}`, 100) + `]}`
	srv := httptest.NewServer(p.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for _, piece := range []string{first, rest} {
			if _, err := io.WriteString(w, piece); err != nil {
				t.Error(err)
			}
			if err := rc.Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
		}
	})))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if got := resp.Header.Get("Content-Encoding"); got != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", got)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil || string(got) != first+rest {
		t.Fatalf("decoded %d bytes (%v), want the %d written", len(got), err, len(first+rest))
	}
}
