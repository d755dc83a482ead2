package proxy

import (
	"context"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
)

// traceContext is a request's W3C trace context (traceparent, tracestate):
// continued from the client's when it sent a valid one, otherwise started
// here. Every upstream call the request makes carries it, with the
// sidecar's own span as the parent, so the legacy API's traces join the
// client's.
type traceContext struct {
	traceID string // 32 lowercase hex digits
	spanID  string // the sidecar's span for this request: 16 hex digits
	flags   string // 2 hex digits: the sampled bit only
	state   string // tracestate, passed on unchanged
	parent  string // the client's span, when its trace is continued
}

// traceparent renders the header sent upstream.
func (t traceContext) traceparent() string {
	return "00-" + t.traceID + "-" + t.spanID + "-" + t.flags
}

// newTrace continues the trace of r's traceparent, or starts one (not
// sampled: the sidecar records no spans of its own unless told to).
func newTrace(r *http.Request) traceContext {
	t := traceContext{spanID: randomHex(8)}
	if id, parent, flags, ok := parseTraceparent(r.Header.Values("Traceparent")); ok {
		t.traceID, t.parent, t.flags = id, parent, flags
		// tracestate belongs to the trace: kept only with a valid parent,
		// and several header lines are one list.
		t.state = boundedTracestate(strings.Join(r.Header.Values("Tracestate"), ","))
		return t
	}
	t.traceID, t.flags = randomHex(16), "00"
	return t
}

// parseTraceparent returns the trace id and flags of a valid traceparent
// (W3C Trace Context, level 1): version 00 exactly, or a later version
// read as far as version 00 reaches; ids of lowercase hex, not all zeros.
// Of the flags only "sampled" is kept: a vendor passing a trace on must
// clear the ones it does not know.
func parseTraceparent(values []string) (traceID, parentID, flags string, ok bool) {
	if len(values) != 1 {
		return "", "", "", false // none, or ambiguous
	}
	v := values[0]
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return "", "", "", false
	}
	version, id, parent, fl := v[0:2], v[3:35], v[36:52], v[53:55]
	switch {
	case !lowerHex(version) || version == "ff":
		return "", "", "", false
	case version == "00" && len(v) != 55:
		return "", "", "", false
	case version != "00" && len(v) > 55 && v[55] != '-':
		return "", "", "", false
	case !lowerHex(id) || id == strings.Repeat("0", 32):
		return "", "", "", false
	case !lowerHex(parent) || parent == strings.Repeat("0", 16):
		return "", "", "", false
	case !lowerHex(fl):
		return "", "", "", false
	}
	b, _ := hex.DecodeString(fl)
	return id, parent, hex.EncodeToString([]byte{b[0] & 0x01}), true
}

// maxTracestate is the length of tracestate passed on (W3C: at least 512
// characters must be kept; an API's header limit must never turn a long one
// into a refused mutation).
const maxTracestate = 512

// boundedTracestate keeps the list members of state that fit in
// maxTracestate, dropping whole members from the end, as the W3C
// recommendation prescribes for truncation.
func boundedTracestate(state string) string {
	if len(state) <= maxTracestate {
		return state
	}
	var kept []string
	n := 0
	for _, m := range strings.Split(state, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if n+len(m)+len(kept) > maxTracestate { // the commas count too
			break
		}
		kept = append(kept, m)
		n += len(m)
	}
	return strings.Join(kept, ",")
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	if b[0] == 0 {
		b[0] = 1 // never all zeros (an invalid id)
	}
	return hex.EncodeToString(b)
}

type traceKey struct{}

func withTrace(ctx context.Context, t traceContext) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

func traceOf(ctx context.Context) (traceContext, bool) {
	t, ok := ctx.Value(traceKey{}).(traceContext)
	return t, ok
}

// traceIDOf is the trace id of the request ctx belongs to, or "".
func traceIDOf(ctx context.Context) string {
	t, _ := traceOf(ctx)
	return t.traceID
}

// setTraceHeaders puts the request's trace context on an upstream call's
// headers.
func setTraceHeaders(ctx context.Context, h http.Header) {
	t, ok := traceOf(ctx)
	if !ok {
		return
	}
	h.Set("Traceparent", t.traceparent())
	h.Del("Tracestate")
	if t.state != "" {
		h.Set("Tracestate", t.state)
	}
}
