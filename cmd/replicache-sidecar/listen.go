package main

import (
	"context"
	"log/slog"
	"net"
	"time"
)

// listenFunc opens a listener (listenTCP, or a test's).
type listenFunc func(network, address string) (net.Listener, error)

// Dead peers: a client that vanishes (a laptop closed, a phone off the
// network) sends no FIN or RST, and its connection would hold a poke
// stream's slot until TCP gives up: minutes when idle, about 15 with data
// in flight (a heartbeat). Keep-alive probes start after deadPeerIdle of
// silence, deadPeerInterval apart, and deadPeerProbes unanswered ones end
// the connection (45 s); on Linux TCP_USER_TIMEOUT ends it once
// deadPeerTimeout passes without an acknowledgement of data sent or of a
// probe. Either way a dead peer's connection fails within a minute, and
// its request's context with it. A client that is alive but reads slowly
// is not affected: its TCP acknowledges what its buffers take.
const (
	deadPeerIdle     = 15 * time.Second
	deadPeerInterval = 10 * time.Second
	deadPeerProbes   = 3
	deadPeerTimeout  = 45 * time.Second
)

// listenTCP opens a listener whose connections notice a dead peer within
// a minute (see deadPeerTimeout).
func listenTCP(network, address string) (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: deadPeerIdle, Interval: deadPeerInterval, Count: deadPeerProbes},
		Control:         setUserTimeout(deadPeerTimeout), // inherited by accepted connections
	}
	return lc.Listen(context.Background(), network, address)
}

// fdHeadroom is what the process needs open besides its poke streams: the
// pool's connections, the upstream's, the requests being served.
const fdHeadroom = 1024

// checkOpenFiles warns when the process may open fewer files than
// maxStreams poke streams (a socket each) and the rest need: a replica
// that reaches the limit cannot accept connections, for push, pull and the
// pass-through alike. (Go raises the soft limit to the hard one at start;
// the hard one is the container runtime's.)
func checkOpenFiles(log *slog.Logger, maxStreams int) {
	limit, ok := openFilesLimit()
	if want := uint64(maxStreams) + fdHeadroom; ok && limit < want {
		log.Warn("the open-files limit is too low for SIDECAR_POKE_MAX_SUBSCRIBERS streams: raise the container runtime's nofile limit, or lower the setting",
			"open_files_limit", limit, "poke_max_subscribers", maxStreams, "want_open_files", want)
	}
}
