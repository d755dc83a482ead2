package clientview

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestNamesMatchAsDecoded: a path name holding a backslash matches a key
// only as encoding/json decodes the key, never because the key's raw
// spelling equals the name, in the path walk and in the page scan alike.
func TestNamesMatchAsDecoded(t *testing.T) {
	for _, c := range []struct{ doc, name string }{
		{`{"\u0069d":[{"id":"a"}]}`, `\u0069d`}, // the key is "id"
		{`{"\\":[{"id":"a"}]}`, `\\`},           // the key is one backslash
		{`{"\\":[{"id":"a"}]}`, `\`},            // …which this name is
	} {
		var m map[string]json.RawMessage
		_ = json.Unmarshal([]byte(c.doc), &m)
		_, want := m[c.name]
		got, _ := selectPath([]byte(c.doc), []string{c.name})
		scan, _ := scanPage([]byte(c.doc), []string{c.name}, []string{"id"}, nil)
		_, top := scan.topMember(c.name)
		if (got != nil) != want || (scan.selected != nil) != want || top != want {
			t.Errorf("%s, name %q: decoding finds it: %v; selectPath %s, scan %s, topMember %v", c.doc, c.name, want, got, scan.selected, top)
		}
	}
}

// refusingMemory is a process memory budget that has nothing left.
type refusingMemory struct{}

var errNoMemory = errors.New("no memory left")

type refusingReader struct{}

func (refusingReader) Read([]byte) (int, error) { return 0, errNoMemory }

func (refusingMemory) Reader(context.Context, io.Reader) io.Reader { return refusingReader{} }

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestAnnouncedLengthIsNotAllocatedAhead: an answer announcing 60 MB is
// read into a buffer that grows as bytes arrive (and are charged to the
// memory budget), not one allocated on the answer's word.
func TestAnnouncedLengthIsNotAllocatedAhead(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(60<<20))
		_, _ = w.Write([]byte("[]")) // then the connection closes: a short body
	}))
	t.Cleanup(srv.Close)
	v, err := Compile([]Source{{Path: "/x", Key: "x/{id}"}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(srv.URL)
	f := NewFetcher(FetcherOptions{Base: u, Upstream: srv.Client(), MaxBodyBytes: 64 << 20})
	var ferr error
	n := allocated(func() { _, ferr = f.Fetch(context.Background(), v, Request{Memory: refusingMemory{}}) })
	if !errors.Is(ferr, errNoMemory) {
		t.Fatalf("fetch error %v, want the memory budget's refusal", ferr)
	}
	if n > 8<<20 {
		t.Errorf("the budget refused every byte, yet the fetch allocated %d MB", n>>20)
	}
}

// TestReportedTotalSizesNothing: a tiny answer claiming a million items
// does not make the fetch allocate for them.
func TestReportedTotalSizesNothing(t *testing.T) {
	srv := fakeAPI(t, map[string]string{"/x": `{"items":[{"id":"a"}],"total":1048576}`})
	var ferr error
	n := allocated(func() {
		_, ferr = fetch(t, srv, 1000, Source{Path: "/x", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "cursor"}})
	})
	if ferr == nil || !strings.Contains(ferr.Error(), "1048576") {
		t.Errorf("fetch error %v, want the total named", ferr)
	}
	if n > 8<<20 {
		t.Errorf("a 38-byte view made the fetch allocate %d MB", n>>20)
	}
}

// TestBodyBudgetWithAndWithoutLength: the view's byte budget holds whether
// the answer announces its length or is chunked: a view one byte over it
// fails, one exactly at it passes.
func TestBodyBudgetWithAndWithoutLength(t *testing.T) {
	exact := `[{"id":"a"},{"id":"b"}]`
	for _, chunked := range []bool{false, true} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if chunked {
				w.(http.Flusher).Flush() // headers out before the body: no Content-Length
			}
			_, _ = w.Write([]byte(exact))
		}))
		t.Cleanup(srv.Close)
		es, err := fetch(t, srv, int64(len(exact)), Source{Path: "/x", Key: "x/{id}"})
		if err != nil || len(es) != 2 {
			t.Errorf("chunked %v, budget = the view: %d entries, %v", chunked, len(es), err)
		}
		_, err = fetch(t, srv, int64(len(exact))-1, Source{Path: "/x", Key: "x/{id}"})
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("chunked %v, budget one byte short: %v, want the view refused as larger", chunked, err)
		}
	}
}
