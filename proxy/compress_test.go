package proxy

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// rawPost posts without the transport's transparent gzip, so the test sees
// the bytes on the wire.
func rawPost(t *testing.T, url, acceptEncoding string, body string) (rawResponse, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	return rawResponse{StatusCode: resp.StatusCode, Header: resp.Header}, raw
}

type rawResponse struct {
	StatusCode int
	Header     http.Header
}

// TestCompressedAnswers: pulls (and push errors) answer gzip when the
// client accepts it and the body reaches 1 KiB; smaller bodies, and
// clients that do not accept gzip, get plain JSON; every answer varies on
// Accept-Encoding.
func TestCompressedAnswers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	var muts []mut
	for i := 1; i <= 40; i++ {
		muts = append(muts, create("c1", int64(i), fmt.Sprintf("todo-with-a-longer-id-%03d", i)))
	}
	if r := sc.push(t, "alice", "g", muts...); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	pull := `{"pullVersion":1,"clientGroupID":"g","cookie":null}`
	plainResp, plain := rawPost(t, sc.srv.URL+"/replicache/pull", "identity", pull)
	if plainResp.Header.Get("Content-Encoding") != "" || plainResp.Header.Get("Vary") != "Accept-Encoding" || len(plain) < 2000 {
		t.Fatalf("pull without gzip: encoding %q, vary %q, %d bytes", plainResp.Header.Get("Content-Encoding"), plainResp.Header.Get("Vary"), len(plain))
	}
	resp, wire := rawPost(t, sc.srv.URL+"/replicache/pull", "gzip, deflate, br, zstd", pull)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("pull accepting gzip = %d, encoding %q, vary %q", resp.StatusCode, resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(wire))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("the gzip stream does not decode: %v", err)
	}
	// Same answer but for the cookie's order.
	norm := func(b []byte) string { return string(b[strings.Index(string(b), "lastMutationIDChanges"):]) }
	if norm(body) != norm(plain) || len(wire)*3 > len(body) {
		t.Errorf("gzip answer: %d bytes on the wire for %d; decoded equal to the plain answer: %v", len(wire), len(body), norm(body) == norm(plain))
	}
	// A small answer (nothing changed since the cookie) stays plain, gzip
	// accepted or not.
	var ans struct {
		Cookie json.RawMessage `json:"cookie"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		t.Fatal(err)
	}
	resp, small := rawPost(t, sc.srv.URL+"/replicache/pull", "gzip", `{"pullVersion":1,"clientGroupID":"g","cookie":`+string(ans.Cookie)+`}`)
	if resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Vary") != "Accept-Encoding" || !strings.HasPrefix(string(small), `{"cookie"`) {
		t.Errorf("small pull answer = encoding %q, vary %q, %s", resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"), small)
	}
	// Push errors too (a large one: an unmapped mutator named at length).
	resp, perr := rawPost(t, sc.srv.URL+"/replicache/push", "gzip",
		`{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":41,"clientID":"c1","name":"`+strings.Repeat("x", 2000)+`","args":{}}]}`)
	if resp.Header.Get("Vary") != "Accept-Encoding" {
		t.Errorf("push answer %d without Vary: Accept-Encoding", resp.StatusCode)
	}
	if resp.Header.Get("Content-Encoding") == "gzip" {
		if _, err := gzip.NewReader(bytes.NewReader(perr)); err != nil {
			t.Errorf("gzip push answer does not decode: %v", err)
		}
	}
}
