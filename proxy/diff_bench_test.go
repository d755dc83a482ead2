package proxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/jackc/pgx/v5"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// bigAPI is a fast in-memory upstream with one large collection, paged in
// the body (next URL), its pages pre-rendered: the upstream costs as
// little as it can, so what is measured is the sidecar.
type bigAPI struct {
	mu     sync.RWMutex
	items  [][]byte // rendered items, in order
	pages  [][]byte
	etags  []string
	served atomic.Int64 // body bytes served
	// withETags: pages answer an ETag and 304 to a matching If-None-Match.
	withETags bool
}

const bigPageSize = 1000

func newBigAPI(b testing.TB, n int) (*bigAPI, *httptest.Server) {
	a := &bigAPI{}
	for i := range n {
		a.items = append(a.items, proxytest.Item(i, 0))
	}
	a.render()
	srv := httptest.NewServer(a)
	b.Cleanup(srv.Close)
	return a, srv
}

func (a *bigAPI) render() {
	a.pages, a.etags = a.pages[:0], a.etags[:0]
	for start := 0; start < len(a.items) || start == 0; start += bigPageSize {
		var buf bytes.Buffer
		end := min(start+bigPageSize, len(a.items))
		next := "null"
		if end < len(a.items) {
			next = fmt.Sprintf(`"/items?page=%d"`, len(a.pages)+2)
		}
		fmt.Fprintf(&buf, `{"count":%d,"next":%s,"results":[`, len(a.items), next)
		for i := start; i < end; i++ {
			if i > start {
				buf.WriteByte(',')
			}
			buf.Write(a.items[i])
		}
		buf.WriteString("]}")
		a.pages = append(a.pages, buf.Bytes())
		a.etags = append(a.etags, fmt.Sprintf(`"%x"`, xxhash.Sum64(buf.Bytes())))
		if end >= len(a.items) {
			break
		}
	}
}

// change updates n random items.
func (a *bigAPI) change(rng *rand.Rand, n, rev int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for range n {
		i := rng.IntN(len(a.items))
		a.items[i] = proxytest.Item(i, rev)
	}
	a.render()
}

func (a *bigAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	page = max(page, 1)
	a.mu.RLock()
	defer a.mu.RUnlock()
	if page > len(a.pages) {
		http.NotFound(w, r)
		return
	}
	if a.withETags {
		w.Header().Set("ETag", a.etags[page-1])
		if r.Header.Get("If-None-Match") == a.etags[page-1] {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(a.pages[page-1])))
	n, _ := w.Write(a.pages[page-1])
	a.served.Add(int64(n))
}

// getAll GETs every page directly, as a client of the API would.
func (a *bigAPI) getAll(b testing.TB, base string) {
	for url := base + "/items"; url != ""; {
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		var page struct {
			Next *string `json:"next"`
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err := json.Unmarshal(body, &page); err != nil {
			b.Fatal(err)
		}
		url = ""
		if page.Next != nil {
			url = base + *page.Next
		}
	}
}

// BenchmarkPull10k: pulls of a 10,000-entity view (1.29 MB, 10 pages) from
// a fast in-memory upstream, side by side with GETting the same pages
// directly: a reset pull (reset mode), a diff pull when nothing changed,
// and a diff pull after 1% of the entities changed, each without and (some)
// with gzip. Reported: bytes on the wire, sidecar and direct time,
// Postgres WAL bytes written per pull, and (diff) the stored record's size
// on disk. (The client's time to decompress is not counted.)
func BenchmarkPull10k(b *testing.B) {
	const n = 10000
	for _, tc := range []struct {
		name    string
		mode    string
		changed int  // entities changed before each pull
		gzip    bool // the client accepts gzip (answer-bytes are then wire bytes)
		etags   bool // the upstream answers ETags and 304s
	}{
		{"reset", "reset", 0, false, false},
		{"reset-gzip", "reset", 0, true, false},
		{"diff-unchanged", "diff", 0, false, false},
		{"diff-unchanged-etag", "diff", 0, false, true},
		{"diff-1pct", "diff", n / 100, false, false},
		{"diff-1pct-gzip", "diff", n / 100, true, false},
		{"diff-1pct-etag", "diff", n / 100, false, true},
		{"diff-1change-etag", "diff", 1, false, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			api, srv := newBigAPI(b, n)
			api.withETags = tc.etags
			f := filepath.Join(b.TempDir(), "m.json")
			if err := os.WriteFile(f, []byte(`{"clientView":[{"path":"/items","items":"results","key":"item/{id}","pagination":{"type":"url"}}]}`), 0o600); err != nil {
				b.Fatal(err)
			}
			h := newHarness(b, map[string]string{"SIDECAR_UPSTREAM_URL": srv.URL, "SIDECAR_MAPPING_FILE": f, "SIDECAR_AUTH_PATH": "",
				"SIDECAR_PATCH_MODE": tc.mode})
			sc := h.start()
			ctx := context.Background()
			cookie := json.RawMessage("null")
			client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
			pull := func() int64 {
				body, _ := json.Marshal(pullBody("g", cookie))
				req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/pull", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				if tc.gzip {
					req.Header.Set("Accept-Encoding", "gzip, deflate, br, zstd")
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				raw, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				wire := int64(len(raw))
				if resp.Header.Get("Content-Encoding") == "gzip" {
					zr, err := gzip.NewReader(bytes.NewReader(raw))
					if err != nil {
						b.Fatal(err)
					}
					if raw, err = io.ReadAll(zr); err != nil {
						b.Fatal(err)
					}
				}
				// The cookie leads an answer written whole and ends one
				// streamed while its view was read: read it without decoding
				// the rest (that would be the benchmark's cost, not the
				// sidecar's).
				c, ok := answerCookie(raw)
				if resp.StatusCode != 200 || !ok {
					b.Fatalf("pull = %d %.200s", resp.StatusCode, raw)
				}
				cookie = c
				return wire
			}
			pull() // the first pull is a reset in either mode
			// Autovacuum would otherwise visit the tables the first pull
			// filled during the measurement, and its WAL would count.
			for _, table := range []string{"client_groups", "clients", "view_entries", "view_versions", "view_pages"} {
				if _, err := sc.pool.Exec(ctx, "VACUUM (ANALYZE) "+pgx.Identifier{h.schema, table}.Sanitize()); err != nil {
					b.Fatal(err)
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var direct, sidecar time.Duration
			var answered, wal, upstream int64
			lsn := func() (l string) {
				if err := sc.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&l); err != nil {
					b.Fatal(err)
				}
				return l
			}
			b.ResetTimer()
			for i := range b.N {
				if tc.changed > 0 {
					b.StopTimer()
					api.change(rng, tc.changed, i+1)
					b.StartTimer()
				}
				t0 := time.Now()
				api.getAll(b, srv.URL)
				t1 := time.Now()
				before := lsn()
				served := api.served.Load()
				t2 := time.Now()
				answered += pull()
				sidecar += time.Since(t2)
				upstream += api.served.Load() - served
				var d int64
				if err := sc.pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint`, before).Scan(&d); err != nil {
					b.Fatal(err)
				}
				wal += d
				direct += t1.Sub(t0)
			}
			b.StopTimer()
			report(b, direct, sidecar, b.N)
			b.ReportMetric(float64(answered)/float64(b.N), "wire-bytes/op")
			b.ReportMetric(float64(wal)/float64(b.N), "wal-bytes/op")
			b.ReportMetric(float64(upstream)/float64(b.N), "upstream-bytes/op")
			if tc.mode == "diff" {
				var size int64
				if err := sc.pool.QueryRow(ctx, `SELECT pg_total_relation_size($1::regclass)`,
					pgx.Identifier{h.schema, "view_entries"}.Sanitize()).Scan(&size); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(size), "record-disk-bytes")
			}
		})
	}
}

// answerCookie finds a pull answer's cookie without decoding the rest: the
// first member of an answer written whole, the last of one streamed.
func answerCookie(raw []byte) (json.RawMessage, bool) {
	var v []byte
	if lead := []byte(`{"cookie":`); bytes.HasPrefix(raw, lead) {
		end := bytes.Index(raw, []byte(`,"lastMutationIDChanges"`))
		if end < 0 {
			return nil, false
		}
		v = raw[len(lead):end]
	} else {
		at := bytes.LastIndex(raw, []byte(`,"cookie":`))
		if at < 0 || !bytes.HasSuffix(raw, []byte("}")) {
			return nil, false
		}
		v = raw[at+len(`,"cookie":`) : len(raw)-1]
	}
	if !json.Valid(v) {
		return nil, false
	}
	return append(json.RawMessage(nil), v...), true
}
