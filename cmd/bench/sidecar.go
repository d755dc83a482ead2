package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// sidecar is the built binary run as its own process, as in production, so
// its resident memory can be read from /proc.
type sidecar struct {
	cmd    *exec.Cmd
	url    string // public listener
	admin  string
	stderr *lockedBuffer
	done   chan struct{}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

// startSidecar runs bin with the bench's settings plus env and waits until
// it is ready.
func startSidecar(bin string, env ...string) (*sidecar, error) {
	pub, err := freeAddr()
	if err != nil {
		return nil, err
	}
	adm, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &sidecar{url: "http://" + pub, admin: "http://" + adm, stderr: &lockedBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(bin)
	s.cmd.Env = append(os.Environ(), "SIDECAR_LISTEN_ADDR="+pub, "SIDECAR_ADMIN_ADDR="+adm,
		"SIDECAR_SHUTDOWN_TIMEOUT=2s", "SIDECAR_DRAIN_DELAY=0s", "SIDECAR_LOG_LEVEL=warn", "SIDECAR_PPROF=true")
	s.cmd.Env = append(s.cmd.Env, env...)
	s.cmd.Stderr = s.stderr
	if os.Getenv("BENCH_SIDECAR_LOG_LEVEL") != "" {
		s.cmd.Stderr = io.MultiWriter(s.stderr, os.Stderr) // a figure's sidecar logs, to debug it
	}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(s.admin + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			// Serving pushes and pulls, not only ready: a release before
			// 05e1322's successor said nothing of the database, and was
			// ready only once it was up.
			body := string(b)
			if resp.StatusCode == http.StatusOK && (strings.Contains(body, `"database":"up"`) || !strings.Contains(body, `"database"`)) {
				return s, nil
			}
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("the sidecar exited at start:\n%s", s.stderr.tail(2000))
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("the sidecar is not ready after 20s:\n%s", s.stderr.tail(2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *sidecar) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// rss returns the process's resident set now and its peak since the last
// resetPeak, in bytes.
func (s *sidecar) rss() (now, peak int64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		if name == "VmRSS" {
			now = kb << 10
		} else {
			peak = kb << 10
		}
	}
	if now == 0 || peak == 0 {
		return 0, 0, errors.New("no VmRSS or VmHWM in /proc/PID/status")
	}
	return now, peak, nil
}

// resetPeak starts a new peak: VmHWM falls to the resident set now.
func (s *sidecar) resetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.cmd.Process.Pid), []byte("5"), 0)
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// profile, when the bench runs with -profile, takes a CPU profile of the
// sidecar for -profile-seconds while repeating op, and writes it to
// <-profile>/<name>.pprof.
func (b *bench) profile(s *sidecar, name string, op func() error) error {
	if b.o.profile == "" {
		return nil
	}
	got := make(chan error, 1)
	go func() {
		kind := b.o.profileKind
		resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/%s?seconds=%d", s.admin, kind, b.o.profileSeconds))
		if err != nil {
			got <- err
			return
		}
		defer func() { _ = resp.Body.Close() }()
		f, err := os.Create(filepath.Join(b.o.profile, name+".pprof"))
		if err == nil {
			_, err = io.Copy(f, resp.Body)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		got <- err
	}()
	for {
		select {
		case err := <-got:
			return err
		default:
		}
		if err := op(); err != nil {
			return err
		}
	}
}

// cpuTimes returns the CPU seconds used so far by each process of the
// sidecar, the fast API, Postgres (every postgres process) and this driver,
// by pid.
func (b *bench) cpuTimes(s *sidecar) map[int]procCPU {
	out := map[int]procCPU{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid … utime stime: fields 14 and 15, counted
		// after the parenthesis that closes comm.
		closing := bytes.LastIndexByte(raw, ')')
		open := bytes.IndexByte(raw, '(')
		if closing < 0 || open < 0 {
			continue
		}
		f := strings.Fields(string(raw[closing+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		var part string
		switch {
		case pid == s.cmd.Process.Pid:
			part = "sidecar"
		case pid == b.api.cmd.Process.Pid:
			part = "API"
		case pid == os.Getpid():
			part = "load driver"
		case string(raw[open+1:closing]) == "postgres":
			part = "Postgres"
		default:
			continue
		}
		out[pid] = procCPU{part, (ut + st) / 100} // USER_HZ
	}
	return out
}

type procCPU struct {
	part string
	secs float64
}

// cpuShare writes the CPU each part used between two cpuTimes, as a share
// of one core over d (a process that ended in between is not counted).
func cpuShare(before, after map[int]procCPU, d time.Duration) string {
	used := map[string]float64{}
	for pid, a := range after {
		used[a.part] += a.secs - before[pid].secs
	}
	var parts []string
	for _, k := range []string{"sidecar", "Postgres", "API", "load driver"} {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", k, 100*used[k]/d.Seconds()))
	}
	return strings.Join(parts, ", ")
}
