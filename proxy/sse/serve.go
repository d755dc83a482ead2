package sse

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
)

// Header sets a stream's headers on hdr.
func Header(hdr http.Header) {
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
}

// Served configures Serve; its durations and Stop mean what Options' do.
type Served struct {
	Heartbeat, WriteTimeout time.Duration
	Stop                    <-chan struct{}
	// Opening is the stream's first words; CatchUp pokes the client at
	// once after them (a reconnection: pokes may have been missed).
	Opening string
	CatchUp bool
	// Poked is told each time a poke event was written.
	Poked func()
}

// Serve writes sub's stream on w itself, in the calling handler's
// goroutine, until it ends, and says why: the path for a connection the
// Writer cannot take over (HTTP/2, whose streams share a connection,
// HTTP/1.0, or a ResponseWriter that cannot hijack). It writes the same
// events, keeps the same rules and ends for the same reasons as a
// Writer's stream, at the cost of a goroutine, the server's buffers and a
// ticker per stream. The header is Header's and the status 200.
func Serve(w http.ResponseWriter, r *http.Request, sub *poke.Subscriber, o Served) End {
	rc := http.NewResponseController(w)
	// A stream outlives the server's read timeout, which would otherwise
	// cancel it; each write gets its own deadline instead.
	_ = rc.SetReadDeadline(time.Time{})
	Header(w.Header())
	w.WriteHeader(http.StatusOK)
	send := func(text string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(o.WriteTimeout))
		if _, err := io.WriteString(w, text); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(o.Opening) {
		return WriteFailed
	}
	if o.CatchUp {
		sub.C <- struct{}{}
	}
	heartbeat := time.NewTicker(o.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return Disconnected
		case <-o.Stop:
			return Shutdown
		case <-sub.Ended():
			// The hub ended it (to make room, or at the end of its
			// lifetime): said as a comment, with when to come back unless
			// the stream's first hint stands; then a clean end, after which
			// EventSource reconnects by itself.
			why, retry := sub.End()
			msg := fmt.Sprintf(": %s\n\n", why)
			if retry > 0 {
				msg = fmt.Sprintf(": %s\nretry: %d\n\n", why, retry.Milliseconds())
			}
			send(msg)
			return ByHub
		case <-heartbeat.C:
			if !send(": ping\n\n") {
				return WriteFailed
			}
		case <-sub.C:
			if !send("event: poke\nid: 1\ndata: {}\n\n") {
				return WriteFailed
			}
			if o.Poked != nil {
				o.Poked()
			}
		}
	}
}
