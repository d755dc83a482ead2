package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// pageSize is the fast upstream's page: Django REST Framework's shape, with
// the next page's URL and the count in the body.
const pageSize = 1000

// fastAPI is the legacy API written for the measurement: every list is held
// in memory with its pages already encoded, so the upstream's own cost is a
// map lookup and a write. A user's list is chosen by the user id (see add).
//
//	GET  /api/{user}/todos?page=N  a page: {"count","next","previous","results"}
//	POST /api/todos                 201, the body read and dropped
type fastAPI struct {
	base string       // the server's URL, for next links
	gets atomic.Int64 // pages served: the view reads the sidecar made

	mu    sync.RWMutex
	lists map[string]*list
}

type list struct {
	etags bool // answer ETag and 304 to If-None-Match
	items [][]byte
	pages [][]byte // encoded pages, nil where an item changed since
	tags  []string
	words *rand.Rand
}

func newFastAPI() *fastAPI { return &fastAPI{lists: map[string]*list{}} }

// add makes user's list of n items of about 110 bytes each.
func (a *fastAPI) add(user string, n int, etags bool) {
	l := &list{etags: etags, words: rand.New(rand.NewPCG(uint64(n), 7))}
	for i := range n {
		l.items = append(l.items, l.item(i))
	}
	l.pages = make([][]byte, (n+pageSize-1)/pageSize)
	l.tags = make([]string, len(l.pages))
	a.mu.Lock()
	a.lists[user] = l
	a.mu.Unlock()
}

var vocabulary = strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu")

func (l *list) item(i int) []byte {
	var title []string
	for range 5 {
		title = append(title, vocabulary[l.words.IntN(len(vocabulary))])
	}
	return fmt.Appendf(nil, `{"id":"t%07d","title":%q,"done":%t,"updatedAt":"2026-11-30T04:%02d:%02d.000Z"}`,
		i, strings.Join(title, " "), l.words.IntN(2) == 0, l.words.IntN(60), l.words.IntN(60))
}

// change gives every step'th item of user's list a new title (1% for step
// 100) and returns how many changed.
func (a *fastAPI) change(user string, step int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.lists[user]
	n := 0
	for i := l.words.IntN(step); i < len(l.items); i += step {
		l.items[i] = l.item(i)
		l.pages[i/pageSize] = nil
		n++
	}
	return n
}

// changeItem gives item i of user's list a new title.
func (a *fastAPI) changeItem(user string, i int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.lists[user]
	l.items[i] = l.item(i)
	l.pages[i/pageSize] = nil
}

// bytes is the size of user's list as the API sends it: every page.
func (a *fastAPI) bytes(user string) int {
	n := 0
	for p := range a.pageCount(user) {
		body, _ := a.page(user, p)
		n += len(body)
	}
	return n
}

func (a *fastAPI) pageCount(user string) int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.lists[user].pages)
}

// page returns page p (from 0) of user's list and its ETag ("" when the
// list has none), encoding it if it changed.
func (a *fastAPI) page(user string, p int) ([]byte, string) {
	a.mu.RLock()
	l := a.lists[user]
	if l == nil || p < 0 || p >= len(l.pages) {
		a.mu.RUnlock()
		return nil, ""
	}
	body, tag := l.pages[p], l.tags[p]
	a.mu.RUnlock()
	if body != nil {
		return body, tag
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if l.pages[p] == nil {
		b := fmt.Appendf(nil, `{"count":%d,"next":`, len(l.items))
		if (p+1)*pageSize < len(l.items) {
			b = fmt.Appendf(b, `"%s/api/%s/todos?page=%d"`, a.base, user, p+2)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `,"previous":null,"results":[`...)
		for i, it := range l.items[p*pageSize : min(len(l.items), (p+1)*pageSize)] {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, it...)
		}
		b = append(b, "]}"...)
		l.pages[p] = b
		if l.etags {
			l.tags[p] = `"` + strconv.FormatUint(xxhash.Sum64(b), 36) + `"`
		}
	}
	return l.pages[p], l.tags[p]
}

func (a *fastAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if ctl, ok := strings.CutPrefix(r.URL.Path, "/_bench/"); ok {
		a.control(w, r, ctl)
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
		// An OTLP/HTTP collector that keeps nothing: an empty export
		// response is zero bytes of protobuf.
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/api/todos" {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"ok":true}`))
		return
	}
	user, ok := strings.CutPrefix(r.URL.Path, "/api/")
	user, ok2 := strings.CutSuffix(user, "/todos")
	if r.Method != http.MethodGet || !ok || !ok2 {
		http.NotFound(w, r)
		return
	}
	p := 1
	if s := r.URL.Query().Get("page"); s != "" {
		var err error
		if p, err = strconv.Atoi(s); err != nil {
			http.Error(w, "bad page", http.StatusBadRequest)
			return
		}
	}
	body, tag := a.page(user, p-1)
	a.gets.Add(1)
	if body == nil {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if tag != "" {
		h.Set("ETag", tag)
		if r.Header.Get("If-None-Match") == tag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// control serves the driver's requests to the API's own process:
//
//	POST /_bench/add?user=&n=&etags=  make a list
//	POST /_bench/change?user=&step=   change every step'th item: the count
//	POST /_bench/change?user=&item=   change that item: 1
//	GET  /_bench/size?user=           "pages bytes"
//	GET  /_bench/gets                 the pages served so far
func (a *fastAPI) control(w http.ResponseWriter, r *http.Request, ctl string) {
	q := r.URL.Query()
	user := q.Get("user")
	num := func(k string) int { n, _ := strconv.Atoi(q.Get(k)); return n }
	a.mu.RLock()
	exists := a.lists[user] != nil
	a.mu.RUnlock()
	switch {
	case ctl == "gets":
		_, _ = fmt.Fprint(w, a.gets.Load())
	case ctl == "add" && r.Method == http.MethodPost:
		a.add(user, num("n"), q.Get("etags") == "true")
		w.WriteHeader(http.StatusNoContent)
	case !exists:
		http.Error(w, "no such list", http.StatusNotFound)
	case ctl == "change" && r.Method == http.MethodPost && q.Has("item"):
		a.changeItem(user, num("item"))
		a.bytes(user)
		_, _ = fmt.Fprint(w, 1)
	case ctl == "change" && r.Method == http.MethodPost:
		n := a.change(user, max(1, num("step")))
		a.bytes(user) // encode the changed pages now, not in a measured GET
		_, _ = fmt.Fprint(w, n)
	case ctl == "size":
		_, _ = fmt.Fprintf(w, "%d %d", a.pageCount(user), a.bytes(user))
	default:
		http.NotFound(w, r)
	}
}

// serveUpstream runs the fast API in this process (`bench upstream`): its
// URL goes to stdout, and it serves until stdin closes.
func serveUpstream() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	a := newFastAPI()
	a.base = "http://" + l.Addr().String()
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = srv.Close()
	}()
	fmt.Println(a.base)
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// apiProcess is the fast API in its own process, as a legacy service is:
// the sidecar and the direct GETs of the limit reach it alike, across
// processes (in the driver's own process the direct GETs would skip the
// wake-ups every cross-process hop costs).
type apiProcess struct {
	base   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	client *http.Client
}

func startAPI(client *http.Client) (*apiProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	a := &apiProcess{cmd: exec.Command(self, "upstream"), client: client}
	a.cmd.Stderr = os.Stderr
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = a.cmd.Process.Kill()
		return nil, fmt.Errorf("the fast API did not start: %w", err)
	}
	a.base = strings.TrimSpace(line)
	return a, nil
}

func (a *apiProcess) stop() {
	_ = a.stdin.Close()
	_ = a.cmd.Wait()
}

func (a *apiProcess) call(method, path string) string {
	req, _ := http.NewRequest(method, a.base+path, nil)
	resp, err := a.client.Do(req)
	if err != nil {
		panic(fmt.Sprintf("the fast API: %v", err)) // the bench cannot go on
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		panic(fmt.Sprintf("the fast API: %s %s: %d %s", method, path, resp.StatusCode, body))
	}
	return string(body)
}

func (a *apiProcess) add(user string, n int, etags bool) {
	a.call(http.MethodPost, fmt.Sprintf("/_bench/add?user=%s&n=%d&etags=%t", url.QueryEscape(user), n, etags))
}

func (a *apiProcess) change(user string, step int) int {
	n, _ := strconv.Atoi(a.call(http.MethodPost, fmt.Sprintf("/_bench/change?user=%s&step=%d", url.QueryEscape(user), step)))
	return n
}

// changeItem changes item i of user's list.
func (a *apiProcess) changeItem(user string, i int) {
	a.call(http.MethodPost, fmt.Sprintf("/_bench/change?user=%s&item=%d", url.QueryEscape(user), i))
}

// gets returns how many pages the API has served.
func (a *apiProcess) gets() int64 {
	n, _ := strconv.ParseInt(a.call(http.MethodGet, "/_bench/gets"), 10, 64)
	return n
}

// size returns the number of pages of user's list and their bytes.
func (a *apiProcess) size(user string) (pages, bytes int) {
	_, _ = fmt.Sscan(a.call(http.MethodGet, "/_bench/size?user="+url.QueryEscape(user)), &pages, &bytes)
	return pages, bytes
}
