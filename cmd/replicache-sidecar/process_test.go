package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// sidecarBin is the binary built once for the tests that run real
// processes (and SIGKILL them).
var sidecarBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sidecar-bin-")
	if err != nil {
		panic(err)
	}
	sidecarBin = filepath.Join(dir, "replicache-sidecar")
	if out, err := exec.Command("go", "build", "-race", "-o", sidecarBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the sidecar: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir) // the built binary; a leftover is only litter
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// sidecarProc is one sidecar process that can be killed and restarted on
// the same addresses.
type sidecarProc struct {
	t      *testing.T
	bin    string
	env    []string
	public string // http://host:port
	admin  string
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *proxytest.Buffer
}

func startSidecar(t *testing.T, env map[string]string) *sidecarProc {
	t.Helper()
	p := spawnSidecar(t, env)
	p.waitReady()
	return p
}

// spawnSidecar starts the process without waiting for it to be ready.
func spawnSidecar(t *testing.T, env map[string]string) *sidecarProc {
	t.Helper()
	return spawnBinary(t, sidecarBin, env)
}

// spawnBinary is spawnSidecar with another build of the sidecar.
func spawnBinary(t *testing.T, bin string, env map[string]string) *sidecarProc {
	t.Helper()
	pub, adm := freeAddr(t), freeAddr(t)
	p := &sidecarProc{t: t, bin: bin, public: "http://" + pub, admin: "http://" + adm, stderr: &proxytest.Buffer{}}
	full := map[string]string{"SIDECAR_LISTEN_ADDR": pub, "SIDECAR_ADMIN_ADDR": adm, "SIDECAR_SHUTDOWN_TIMEOUT": "5s"}
	for k, v := range env {
		full[k] = v
	}
	for k, v := range full {
		p.env = append(p.env, k+"="+v)
	}
	sort.Strings(p.env)
	p.spawn()
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("sidecar log (tail):\n%s", tail(p.stderr.String(), 3000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// start (re)starts the process and waits until it is ready.
func (p *sidecarProc) start() {
	p.t.Helper()
	p.spawn()
	p.waitReady()
}

func (p *sidecarProc) spawn() {
	p.t.Helper()
	cmd := exec.Command(p.bin)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.done) }()
}

func (p *sidecarProc) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Ready, and serving pushes and pulls: the database up and migrated
		// (readiness alone does not wait for the database; a release
		// before it said so reported no "database", and was ready only
		// once migrated).
		resp, err := http.Get(p.admin + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == 200 && (strings.Contains(string(b), `"database":"up"`) || !strings.Contains(string(b), `"database"`)) {
				return
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("sidecar not ready after 20s: %v\n%s", err, tail(p.stderr.String(), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signal sends sig and waits for the process to exit.
func (p *sidecarProc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *sidecarProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// pushOnce sends mutations from..to of client in group to base and returns
// the status (0 when there was no answer).
func pushOnce(base, group, client string, from, to int) int {
	var b strings.Builder
	fmt.Fprintf(&b, `{"pushVersion":1,"clientGroupID":%q,"mutations":[`, group)
	for id := from; id <= to; id++ {
		if id > from {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"clientID":%q,"name":"m","args":{"c":%q,"n":%d}}`, id, client, client, id)
	}
	b.WriteString("]}")
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(base+"/replicache/push", "application/json", strings.NewReader(b.String()))
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// lastMutationIDs pulls group through base.
func lastMutationIDs(base, group string) (map[string]int, int) {
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(base+"/replicache/pull", "application/json",
		strings.NewReader(fmt.Sprintf(`{"pullVersion":1,"clientGroupID":%q,"cookie":null}`, group)))
	if err != nil {
		return nil, 0
	}
	defer func() { _ = resp.Body.Close() }()
	var pr struct {
		LastMutationIDChanges map[string]int `json:"lastMutationIDChanges"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&pr) != nil {
		return nil, resp.StatusCode
	}
	return pr.LastMutationIDChanges, 200
}
