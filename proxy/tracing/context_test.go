package tracing

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

const (
	clientTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientParent = "00f067aa0ba902b7"
)

// TestFromRequestTrust: a valid traceparent is continued only when the
// edge trusts the caller with it; from anyone else the sidecar starts its
// own trace (not sampled), so a client cannot pick the trace id of the
// sidecar's logs or force sampling.
func TestFromRequestTrust(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Traceparent", "00-"+clientTrace+"-"+clientParent+"-01")
	r.Header.Set("Tracestate", "congo=t61rcWkgMzE")
	if c := FromRequest(r, true); c.TraceID != clientTrace || c.Parent != clientParent || c.Flags != "01" || c.State != "congo=t61rcWkgMzE" {
		t.Errorf("trusted: %+v, want the client's trace continued", c)
	}
	c := FromRequest(r, false)
	if c.TraceID == clientTrace || c.Parent != "" || c.Flags != "00" || c.State != "" || len(c.TraceID) != 32 {
		t.Errorf("untrusted: %+v, want a fresh unsampled trace", c)
	}
}

// TestParseTraceparentLaterVersion: a later version is read as far as
// version 00 reaches, as the W3C recommendation asks.
func TestParseTraceparentLaterVersion(t *testing.T) {
	id, _, flags, ok := parseTraceparent([]string{"01-" + clientTrace + "-" + clientParent + "-01-what-the-future-holds"})
	if !ok || id != clientTrace || flags != "01" {
		t.Errorf("version 01 with more fields = %q %q %v", id, flags, ok)
	}
	if _, _, _, ok := parseTraceparent([]string{"00-" + clientTrace + "-" + clientParent + "-01", "00-" + clientTrace + "-" + clientParent + "-01"}); ok {
		t.Error("two traceparent headers accepted")
	}
}

// TestTraceFlagsMasked: flags the sidecar does not know are cleared before
// the trace goes on; the sampled bit is kept.
func TestTraceFlagsMasked(t *testing.T) {
	for in, want := range map[string]string{"ff": "01", "fe": "00", "03": "01", "00": "00"} {
		_, _, flags, ok := parseTraceparent([]string{"00-" + clientTrace + "-" + clientParent + "-" + in})
		if !ok || flags != want {
			t.Errorf("flags %s: passed on as %q (%v), want %s", in, flags, ok, want)
		}
	}
}

// TestTracestateBounded: a tracestate over 512 characters loses whole list
// members from the end until it fits; a shorter one is passed on as sent.
func TestTracestateBounded(t *testing.T) {
	short := "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
	if got := boundedTracestate(short); got != short {
		t.Errorf("short tracestate = %q", got)
	}
	var members []string
	for i := range 40 {
		members = append(members, fmt.Sprintf("v%02d=%s", i, strings.Repeat("x", 20)))
	}
	got := boundedTracestate(strings.Join(members, ","))
	if len(got) > maxTracestate || !strings.HasPrefix(got, members[0]+","+members[1]) || strings.Contains(got, members[39]) {
		t.Errorf("long tracestate kept %d characters: %q", len(got), got)
	}
	for _, m := range strings.Split(got, ",") {
		if len(m) != len(members[0]) {
			t.Errorf("member %q cut in the middle", m)
		}
	}
}
