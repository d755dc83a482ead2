package clientview

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// recordingSink is a PageSink that notes what it is given.
type recordingSink struct {
	release bool
	sent    bool  // Again's answer
	fail    error // Page's error, from the second page on
	pages   [][]string
	values  int // entries given with a value
	agains  []string
}

func (s *recordingSink) Page(_ string, es []Entry) (bool, error) {
	if s.fail != nil && len(s.pages) > 0 {
		return false, s.fail
	}
	var ks []string
	for _, e := range es {
		ks = append(ks, e.Key)
		if e.Value != nil {
			s.values++
		}
	}
	s.pages = append(s.pages, ks)
	return s.release, nil
}

func (s *recordingSink) Again(source string) bool {
	s.agains = append(s.agains, source)
	return s.sent
}

func sinkFetch(t *testing.T, srv string, src string, sink PageSink) (Result, error) {
	t.Helper()
	v, _ := compileOne(t, src)
	base, _ := url.Parse(srv)
	f := NewFetcher(FetcherOptions{Base: base, Upstream: http.DefaultClient, MaxBodyBytes: 1 << 20})
	return f.FetchResult(context.Background(), v, Request{Pages: sink})
}

func resultKeys(res Result) (keys string, values int) {
	var ks []string
	for _, e := range res.Entries {
		ks = append(ks, e.Key)
		if e.Value != nil {
			values++
		}
	}
	slices.Sort(ks)
	return strings.Join(ks, " "), values
}

// TestPageSink: a sink is given each page as it is read, in order, with
// its values; when it releases them the result keeps keys and hashes
// only. Soft-deleted items never reach it. A sink's error ends the fetch.
func TestPageSink(t *testing.T) {
	drf := `{"path": "/drf/", "items": "results", "key": "x/{id}", "pagination": {"type": "url"}}`
	for _, release := range []bool{false, true} {
		t.Run(fmt.Sprint("release=", release), func(t *testing.T) {
			api := newPagedAPI(t, 7)
			sink := &recordingSink{release: release}
			res, err := sinkFetch(t, api.srv.URL, drf, sink)
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprint(sink.pages)
			if want := "[[x/i00 x/i01 x/i02] [x/i03 x/i04 x/i05] [x/i06]]"; got != want || sink.values != 7 {
				t.Errorf("sink was given %s (%d values); want %s, every value", got, sink.values, want)
			}
			keys, values := resultKeys(res)
			wantValues := 7
			if release {
				wantValues = 0
			}
			if keys != "x/i00 x/i01 x/i02 x/i03 x/i04 x/i05 x/i06" || values != wantValues {
				t.Errorf("result %s with %d values; want all 7 keys, %d values", keys, values, wantValues)
			}
			for _, e := range res.Entries {
				if e.Hash == 0 {
					t.Errorf("%s has no hash in the result", e.Key)
				}
			}
		})
	}

	t.Run("soft-deleted", func(t *testing.T) {
		api, srv := newChangingAPI(t)
		for i := range 6 {
			api.put(fmt.Sprint("t", i), "todo", i%3 == 1) // t1 and t4 soft-deleted
		}
		sink := &recordingSink{release: true}
		res, err := sinkFetch(t, srv.URL, `{"path": "/todos", "items": "items", "key": "todo/{id}", "pagination": {"type": "link"},
			"changes": {"param": "updated_after", "field": "updated_at", "deleted": "deleted"}}`, sink)
		if err != nil {
			t.Fatal(err)
		}
		keys, _ := resultKeys(res)
		if got := fmt.Sprint(sink.pages); got != "[[todo/t0 todo/t2 todo/t3] [todo/t5]]" || keys != "todo/t0 todo/t2 todo/t3 todo/t5" {
			t.Errorf("sink was given %s, result %s; want neither to hold t1 and t4", got, keys)
		}
		r := res.Sources[0]
		if !slices.Equal(r.Deleted, []string{"todo/t1", "todo/t4"}) || r.Entries != 4 || r.Watermark != "2026-12-01T10:00:06Z" {
			t.Errorf("read: %+v; want t1 and t4 deleted, 4 entries, the watermark of t5", r)
		}
	})

	t.Run("error", func(t *testing.T) {
		api := newPagedAPI(t, 7)
		boom := errors.New("the client went away")
		_, err := sinkFetch(t, api.srv.URL, drf, &recordingSink{fail: boom})
		if !errors.Is(err, boom) {
			t.Errorf("err = %v; want the sink's", err)
		}
	})
}

// TestPageSinkAgain: a source whose pages shift is read again. What the
// first read gave the sink and the second lacks (i01, deleted while the
// pages were read) stays in the result when the sink sent it on, since
// its client holds it; when it did not, the result is the second read's.
func TestPageSinkAgain(t *testing.T) {
	for _, sent := range []bool{false, true} {
		t.Run(fmt.Sprint("sent=", sent), func(t *testing.T) {
			api := newPagedAPI(t, 7)
			api.onPage = func(n int) {
				if n == 1 { // after the first page: another writer deletes i01
					api.set(func() { api.items = slices.Delete(api.items, 1, 2) })
				}
			}
			sink := &recordingSink{release: true, sent: sent}
			res, err := sinkFetch(t, api.srv.URL,
				`{"path": "/drf/", "items": "results", "key": "x/{id}", "pagination": {"type": "url"}}`, sink)
			if err != nil {
				t.Fatal(err)
			}
			if len(sink.agains) != 1 {
				t.Fatalf("Again called %d times; want once", len(sink.agains))
			}
			keys, _ := resultKeys(res)
			want := "x/i00 x/i02 x/i03 x/i04 x/i05 x/i06"
			if sent {
				want = "x/i00 x/i01 x/i02 x/i03 x/i04 x/i05 x/i06"
			}
			if keys != want || res.Sources[0].Entries != len(res.Entries) {
				t.Errorf("result %s (%d counted); want %s", keys, res.Sources[0].Entries, want)
			}
		})
	}
}
