package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestMemoryUnderHostileLoad starts the sidecar (built without the race
// detector, which multiplies memory) with a GOMEMLIMIT and the deploy
// defaults, and at once sends 4 anonymous huge pushes, 2 authenticated
// pushes whose one mutation has huge args, and 8 pulls of a large view. Every
// request is answered (200, 401, 413 or 503), the process stays alive, and
// its peak RSS stays below the memory limit that deploy/ gives the
// container (in the small run: a smaller GOMEMLIMIT, with the manifest's
// headroom between GOMEMLIMIT and the limit).
//
// `make test` runs it small (8 MiB bodies, GOMEMLIMIT 64MiB); with
// MEMORY_TEST=full (`make bench`) it runs at the size: 32 MiB
// anonymous pushes, 16 MiB args, a 16 MiB view, and the manifest's own
// GOMEMLIMIT and limit.
func TestMemoryUnderHostileLoad(t *testing.T) {
	limit, goMemLimit := manifestMemory(t)
	anonBody, argsBytes, viewBytes := 8<<20, 4<<20, 4<<20
	if os.Getenv("MEMORY_TEST") == "full" {
		anonBody, argsBytes, viewBytes = 32<<20, 16<<20, 16<<20
	} else {
		// A 64 MiB heap limit, with the manifest's headroom above it for
		// what is not heap (the binary, stacks, pages not yet returned).
		limit = limit - goMemLimit + 64<<20
		goMemLimit = 64 << 20
	}
	bin := plainBinary(t)

	view := largeView(viewBytes)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok:
			w.WriteHeader(http.StatusUnauthorized)
		case r.URL.Path == "/api/me":
			_, _ = fmt.Fprintf(w, `{"id":%q}`, user)
		case r.Method == http.MethodGet && r.URL.Path == "/api/todos":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(view)
		default:
			w.WriteHeader(http.StatusCreated)
		}
	}))
	t.Cleanup(api.Close)
	dbURL := proxytest.DatabaseURL(t)
	schema := fmt.Sprintf("mem_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"createTodo":{"method":"POST","path":"/api/todos","body":{"id":"{args.id}"}}},
		"clientView":[{"path":"/api/todos","items":"todos","key":"todo/{id}"}]}`), 0o600)
	p := spawnBinary(t, bin, map[string]string{
		"GOMEMLIMIT": strconv.FormatInt(goMemLimit, 10), "SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_DATABASE_URL": dbURL,
		"SIDECAR_MAPPING_FILE": mapping, "SIDECAR_DB_SCHEMA": schema, "SIDECAR_AUTH_PATH": "/api/me", "SIDECAR_LOG_LEVEL": "warn",
	})
	p.waitReady()

	type answer struct {
		what   string
		status int
		err    error
	}
	answers := make(chan answer, 14)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			status, err := anonymousPush(p.public, anonBody)
			answers <- answer{fmt.Sprintf("anonymous push %d", i), status, err}
		})
	}
	for i := range 2 {
		wg.Go(func() {
			body := fmt.Sprintf(`{"pushVersion":1,"clientGroupID":"g-big-%d","mutations":[{"id":1,"clientID":"c-big-%d","name":"createTodo","timestamp":1,"args":{"id":"t1","blob":[%s0]}}]}`,
				i, i, strings.Repeat("1,", argsBytes/2))
			status, err := post(p.public+"/replicache/push", "Bearer user"+strconv.Itoa(i), body)
			answers <- answer{fmt.Sprintf("push with %d MiB args %d", argsBytes>>20, i), status, err}
		})
	}
	for i := range 8 {
		wg.Go(func() {
			body := fmt.Sprintf(`{"pullVersion":1,"clientGroupID":"g-pull-%d","cookie":null,"profileID":"p","schemaVersion":""}`, i)
			status, err := post(p.public+"/replicache/pull", "Bearer puller"+strconv.Itoa(i), body)
			answers <- answer{fmt.Sprintf("pull %d", i), status, err}
		})
	}
	wg.Wait()
	close(answers)
	counts := map[int]int{}
	for a := range answers {
		switch {
		case a.err != nil:
			t.Errorf("%s: no answer: %v", a.what, a.err)
		case a.status != 200 && a.status != 401 && a.status != 413 && a.status != 503:
			t.Errorf("%s: answered %d, want 200, 401, 413 or 503", a.what, a.status)
		}
		counts[a.status]++
	}
	if !p.alive() {
		t.Fatalf("the sidecar died:\n%s", tail(p.stderr.String(), 2000))
	}
	if code := get(t, p.admin+"/healthz"); code != 200 {
		t.Errorf("healthz after the load = %d", code)
	}
	peak := peakRSS(t, p)
	t.Logf("peak RSS %.1f MiB against a limit of %.0f MiB (GOMEMLIMIT %.0f MiB); answers by status %v",
		float64(peak)/(1<<20), float64(limit)/(1<<20), float64(goMemLimit)/(1<<20), counts)
	if peak >= limit {
		t.Errorf("peak RSS %d bytes is not below the container's limit %d", peak, limit)
	}
	if counts[200] == 0 {
		t.Errorf("no request succeeded: %v", counts)
	}
}

// manifestMemory reads the sidecar container's memory limit and GOMEMLIMIT
// from deploy/base/deployment.yaml.
func manifestMemory(t *testing.T) (limit, goMemLimit int64) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/base/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	start := strings.Index(doc, "- name: replicache-sidecar")
	end := strings.Index(doc[start:], "- name: legacy-api")
	if start < 0 || end < 0 {
		t.Fatal("deployment.yaml: the sidecar container is not where expected")
	}
	sidecar := doc[start : start+end]
	m := regexp.MustCompile(`(?s)limits:.*?memory:\s*(\d+)Mi`).FindStringSubmatch(sidecar)
	g := regexp.MustCompile(`name: GOMEMLIMIT\s+value:\s*"?(\d+)MiB`).FindStringSubmatch(sidecar)
	if m == nil || g == nil {
		t.Fatal("deployment.yaml: the sidecar needs a memory limit in Mi and GOMEMLIMIT in MiB")
	}
	mi, _ := strconv.ParseInt(m[1], 10, 64)
	gi, _ := strconv.ParseInt(g[1], 10, 64)
	if gi >= mi {
		t.Fatalf("deployment.yaml: GOMEMLIMIT %dMiB is not below the limit %dMi", gi, mi)
	}
	return mi << 20, gi << 20
}

var plain struct {
	once sync.Once
	bin  string
	err  error
}

// plainBinary builds the sidecar without the race detector, once.
func plainBinary(t *testing.T) string {
	plain.once.Do(func() {
		plain.bin = filepath.Join(filepath.Dir(sidecarBin), "replicache-sidecar-plain")
		out, err := exec.Command("go", "build", "-o", plain.bin, ".").CombinedOutput()
		if err != nil {
			plain.err = fmt.Errorf("building: %w\n%s", err, out)
		}
	})
	if plain.err != nil {
		t.Fatal(plain.err)
	}
	return plain.bin
}

// largeView is a todos page of about n bytes.
func largeView(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"todos":[`)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"t%d","title":"todo number %d, with some words to make it the size of a real one","done":false}`, i, i)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// anonymousPush sends a push of size bytes without credentials, as fast as
// the sidecar takes it, and returns the status it answers.
func anonymousPush(base string, size int) (int, error) {
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		return 0, err
	}
	defer func() { _ = conn.Close() }()
	head := `{"pushVersion":1,"clientGroupID":"g","mutations":[`
	mutation := `{"id":1,"clientID":"c","name":"createTodo","args":{},"timestamp":1},`
	go func() {
		w := bufio.NewWriterSize(conn, 64<<10)
		_, _ = fmt.Fprintf(w, "POST /replicache/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", size, head)
		for sent := len(head); sent+len(mutation) <= size; sent += len(mutation) {
			if _, err := w.WriteString(mutation); err != nil {
				return // the sidecar answered and closed
			}
		}
		_ = w.Flush()
	}()
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func post(url, auth, body string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// peakRSS is the process's peak resident set (VmHWM) so far.
func peakRSS(t *testing.T, p *sidecarProc) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("no VmHWM in /proc/<pid>/status")
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}
