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
