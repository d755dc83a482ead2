package main

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestListenerNoticesDeadPeers (security round 3, finding 5): a connection
// accepted by the public listener notices a peer that vanished within a
// minute: keep-alive probes after 15 s of silence, and TCP_USER_TIMEOUT
// for data (a heartbeat) or probes left unacknowledged. Before: Go's
// defaults, 15 s + 9 probes 15 s apart when idle, and about 15 minutes of
// retransmissions when a heartbeat went unanswered. (A vanished peer
// cannot be staged on loopback without privileges: this checks the
// options the kernel acts on.)
func TestListenerNoticesDeadPeers(t *testing.T) {
	ln, err := listenTCP("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	opts := map[string]int{}
	for name, opt := range map[string]struct{ level, opt int }{
		"SO_KEEPALIVE":     {syscall.SOL_SOCKET, syscall.SO_KEEPALIVE},
		"TCP_KEEPIDLE":     {syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE},
		"TCP_KEEPINTVL":    {syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL},
		"TCP_KEEPCNT":      {syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT},
		"TCP_USER_TIMEOUT": {syscall.IPPROTO_TCP, tcpUserTimeout},
	} {
		var v int
		var gerr error
		if err := raw.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), opt.level, opt.opt) }); err != nil || gerr != nil {
			t.Fatalf("reading %s: %v %v", name, err, gerr)
		}
		opts[name] = v
	}
	t.Logf("accepted connection: %v", opts)
	idle := time.Duration(opts["TCP_KEEPIDLE"]+opts["TCP_KEEPINTVL"]*opts["TCP_KEEPCNT"]) * time.Second
	user := time.Duration(opts["TCP_USER_TIMEOUT"]) * time.Millisecond
	switch {
	case opts["SO_KEEPALIVE"] == 0:
		t.Error("keep-alive is off")
	case idle > time.Minute:
		t.Errorf("an idle dead peer is noticed after %v; want within a minute", idle)
	case user <= 0 || user > time.Minute:
		t.Errorf("TCP_USER_TIMEOUT = %v; want set, within a minute", user)
	}
}

// TestOpenFilesWarning: a limit on open files below what
// SIDECAR_POKE_MAX_SUBSCRIBERS streams need (a socket each, and the rest)
// is said at start; one above is not.
func TestOpenFilesWarning(t *testing.T) {
	limit, ok := openFilesLimit()
	if !ok {
		t.Fatal("no open-files limit read on Linux")
	}
	if limit > 1<<30 {
		t.Skipf("the open-files limit is %d: no setting reaches it", limit)
	}
	fit := int(limit) - fdHeadroom // streams that leave the rest its files
	for _, tc := range []struct {
		streams int
		warn    bool
	}{
		{fit + 1, true},
		{fit, false},
	} {
		var out bytes.Buffer
		checkOpenFiles(slog.New(slog.NewJSONHandler(&out, nil)), tc.streams)
		if got := strings.Contains(out.String(), `"want_open_files"`); got != tc.warn {
			t.Errorf("%d streams under a limit of %d: warned %t, want %t (%s)", tc.streams, limit, got, tc.warn, out.String())
		}
	}
}
