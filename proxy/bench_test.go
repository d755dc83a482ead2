package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// The benchmarks measure the sidecar against calling the legacy API
// directly, side by side in one loop so machine noise hits both alike, and
// report the ratio. Run: make bench.

func postJSON(b *testing.B, url, auth string, body []byte, hdr map[string]string) int {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	drain(resp)
	return resp.StatusCode
}

// BenchmarkPushOneMutation: one createTodo per request, through the sidecar
// (auth call, bookkeeping transaction, upstream call) vs straight to the API.
func BenchmarkPushOneMutation(b *testing.B) {
	h := newHarness(b, nil)
	sc := h.start()
	var direct, sidecar time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := int64(i + 1)
		body := fmt.Appendf(nil, `{"id":"d%d","title":"x"}`, id)
		t0 := time.Now()
		if code := postJSON(b, h.up.Server.URL+"/api/todos", "Bearer bench", body, map[string]string{"Idempotency-Key": fmt.Sprint("d:", id)}); code != 201 {
			b.Fatalf("direct: %d", code)
		}
		t1 := time.Now()
		push := fmt.Appendf(nil, `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":%d,"clientID":"c","name":"createTodo","args":{"id":"s%d","title":"x"}}]}`, id, id)
		if code := postJSON(b, sc.srv.URL+"/replicache/push", "Bearer bench", push, nil); code != 200 {
			b.Fatalf("push: %d", code)
		}
		direct += t1.Sub(t0)
		sidecar += time.Since(t1)
	}
	report(b, direct, sidecar, b.N)
}

// BenchmarkPushBatch: 100 mutations in one push, as an offline client sends
// them, vs 100 direct calls. Reported per mutation.
func BenchmarkPushBatch(b *testing.B) {
	const n = 100
	h := newHarness(b, nil)
	sc := h.start()
	var direct, sidecar time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		for j := 0; j < n; j++ {
			body := fmt.Appendf(nil, `{"id":"d%d-%d","title":"x"}`, i, j)
			postJSON(b, h.up.Server.URL+"/api/todos", "Bearer bench", body, map[string]string{"Idempotency-Key": fmt.Sprint(i, ":", j)})
		}
		t1 := time.Now()
		var buf bytes.Buffer
		fmt.Fprintf(&buf, `{"pushVersion":1,"clientGroupID":"g","mutations":[`)
		for j := 0; j < n; j++ {
			if j > 0 {
				buf.WriteByte(',')
			}
			fmt.Fprintf(&buf, `{"id":%d,"clientID":"c","name":"createTodo","args":{"id":"s%d-%d","title":"x"}}`, i*n+j+1, i, j)
		}
		buf.WriteString("]}")
		if code := postJSON(b, sc.srv.URL+"/replicache/push", "Bearer bench", buf.Bytes(), nil); code != 200 {
			b.Fatalf("push: %d", code)
		}
		direct += t1.Sub(t0)
		sidecar += time.Since(t1)
	}
	report(b, direct, sidecar, b.N*n)
}

// BenchmarkPull: a pull of a 300-entity view (100 pages of the test API)
// vs GETting the same pages directly.
func BenchmarkPull(b *testing.B) {
	h := newHarness(b, nil)
	sc := h.start()
	var muts []mut
	for i := int64(1); i <= 300; i++ {
		muts = append(muts, create("c", i, fmt.Sprint("t", i)))
	}
	if r := sc.push(b, "bench", "g", muts...); r.status != 200 {
		b.Fatalf("seeding: %d %s", r.status, r.raw)
	}
	pullReq := []byte(`{"pullVersion":1,"clientGroupID":"g","cookie":null}`)
	var direct, sidecar time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		for page := 1; page <= 300/proxytest.LegacyPageSize; page++ {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprint(h.up.Server.URL, "/api/todos?page=", page), nil)
			req.Header.Set("Authorization", "Bearer bench")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			drain(resp)
		}
		t1 := time.Now()
		if code := postJSON(b, sc.srv.URL+"/replicache/pull", "Bearer bench", pullReq, nil); code != 200 {
			b.Fatalf("pull: %d", code)
		}
		direct += t1.Sub(t0)
		sidecar += time.Since(t1)
	}
	report(b, direct, sidecar, b.N)
}

// drain reads the body to the end so the connection is reused, as a real
// client's would be.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
}

func report(b *testing.B, direct, sidecar time.Duration, ops int) {
	b.ReportMetric(float64(direct.Nanoseconds())/float64(ops), "direct-ns/op")
	b.ReportMetric(float64(sidecar.Nanoseconds())/float64(ops), "sidecar-ns/op")
	b.ReportMetric(float64(sidecar)/float64(direct), "sidecar/direct")
}

// BenchmarkPushParallel: many client groups pushing at once (16 in
// flight), through the sidecar and directly, one after the other in the
// same benchmark. Reported as mutations per second.
func BenchmarkPushParallel(b *testing.B) {
	const workers = 16
	h := newHarness(b, nil)
	sc := h.start()
	run := func(send func(worker, i int)) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		per := max(b.N/workers, 1)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 1; i <= per; i++ {
					send(w, i)
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	b.ResetTimer()
	direct := run(func(w, i int) {
		body := fmt.Appendf(nil, `{"id":"d%d-%d","title":"x"}`, w, i)
		postJSON(b, h.up.Server.URL+"/api/todos", "Bearer bench", body, map[string]string{"Idempotency-Key": fmt.Sprint(w, ":", i)})
	})
	sidecar := run(func(w, i int) {
		push := fmt.Appendf(nil, `{"pushVersion":1,"clientGroupID":"g%d","mutations":[{"id":%d,"clientID":"c%d","name":"createTodo","args":{"id":"s%d-%d","title":"x"}}]}`, w, i, w, w, i)
		if code := postJSON(b, sc.srv.URL+"/replicache/push", "Bearer bench", push, nil); code != 200 {
			b.Errorf("push: %d", code)
		}
	})
	n := float64(max(b.N/workers, 1) * workers)
	b.ReportMetric(n/direct.Seconds(), "direct-mutations/s")
	b.ReportMetric(n/sidecar.Seconds(), "sidecar-mutations/s")
}
