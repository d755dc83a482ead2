package clientview

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// nextPage returns the next page's URL, or nil when this was the last page.
// A next-page reference that cannot be followed is an error, never the last
// page: under the Reset Strategy a truncated view deletes on the client
// every entity it lacks.
func (f *Fetcher) nextPage(s *source, page, items int, cur, first *url.URL, body []byte, scan *pageScan, hdr http.Header) (*url.URL, error) {
	switch s.page.Type {
	case "link":
		target := nextLink(hdr.Values("Link"))
		if target == "" {
			return nil, nil
		}
		return f.follow(cur, target, "next link")
	case "url":
		raw, present, err := scan.lookup(body, s.nextPath)
		if err != nil {
			return nil, fmt.Errorf("next URL field %q cannot be followed: %w", s.page.Next, err)
		}
		if !present || isNull(raw) {
			return nil, nil
		}
		var target string
		if err := json.Unmarshal(raw, &target); err != nil {
			return nil, fmt.Errorf("next URL field %q is not a string", s.page.Next)
		}
		if target == "" {
			return nil, nil
		}
		return f.follow(cur, target, "next URL")
	case "offset":
		if items < s.page.Limit {
			return nil, nil // a short page is the last
		}
		return withQuery(cur, s.page.Param, strconv.Itoa(atoi(cur.Query().Get(s.page.Param))+items)), nil
	case "page":
		if items == 0 || (s.page.Size > 0 && items < s.page.Size) {
			return nil, nil // an empty (or short) page is the last
		}
		return withQuery(cur, s.page.Param, strconv.Itoa(atoi(cur.Query().Get(s.page.Param))+1)), nil
	default: // cursor
		raw, present, err := scan.lookup(body, s.nextPath)
		if err != nil {
			return nil, fmt.Errorf("cursor field %q cannot be followed: %w", s.page.Next, err)
		}
		if !present {
			// The last page, or a typo in the mapping that shows only page
			// one forever: say so once per mapping load.
			if page == 1 && s.warnedAbsent.CompareAndSwap(false, true) {
				f.log.Warn("cursor field absent from the first page; is the mapping's pagination.next right?",
					"source", s.path, "field", s.page.Next)
			}
			return nil, nil
		}
		if isNull(raw) {
			return nil, nil
		}
		cursor, ok := scalar(raw)
		if !ok {
			return nil, fmt.Errorf("cursor field %q is not a string or number", s.page.Next)
		}
		if cursor == "" {
			return nil, nil
		}
		u := *first
		q := u.Query()
		q.Set(s.page.Param, cursor)
		u.RawQuery = q.Encode()
		return &u, nil
	}
}

// peekNext returns the next page's URL when the answer tells it before it
// is scanned: a Link header, or a next URL or cursor field met before the
// items (Django REST Framework writes "next" first). It reads the body
// without checking it, taking the first member of each name where the
// page's scan will take the last, so it is only a guess: the page's own
// answer (nextPage) decides, and a guess that differs is dropped. nil
// when it cannot tell.
func (s *source) peekNext(f *Fetcher, body []byte, hdr http.Header, cur, first *url.URL) *url.URL {
	var target string
	switch s.page.Type {
	case "link":
		target = nextLink(hdr.Values("Link"))
	case "url", "cursor":
		raw := peekPath(body, s.nextPath)
		if raw == nil || raw[0] != '"' && s.page.Type == "url" {
			return nil
		}
		var ok bool
		if target, ok = scalar(raw); !ok {
			return nil
		}
	}
	if target == "" {
		return nil
	}
	if s.page.Type == "cursor" {
		u := *first
		q := u.Query()
		q.Set(s.page.Param, target)
		u.RawQuery = q.Encode()
		return &u
	}
	u, err := f.follow(cur, target, "next")
	if err != nil {
		return nil
	}
	return u
}

// peekPath follows path through the first member of each name in body,
// which it does not check, up to the first member past an array: nil
// when it does not find it there (the walk would cost about what the
// page's scan does).
func peekPath(body []byte, path []string) []byte {
	cur := jsonwalk.Trim(body)
	for _, name := range path {
		if len(cur) == 0 || cur[0] != '{' {
			return nil
		}
		found := false
		for i := jsonwalk.SkipSpace(cur, 1); i < len(cur) && cur[i] == '"'; {
			kEnd, _ := jsonwalk.SkipValue(cur, i)
			v := jsonwalk.SkipSpace(cur, kEnd)
			if v >= len(cur) || cur[v] != ':' {
				return nil
			}
			v = jsonwalk.SkipSpace(cur, v+1)
			if v >= len(cur) || cur[v] == '[' {
				return nil // the items, most likely: the rest is not worth walking
			}
			vEnd, _ := jsonwalk.SkipValue(cur, v)
			if jsonwalk.KeyEquals(cur[i:kEnd], name) {
				cur, found = cur[v:vEnd], true
				break
			}
			i = jsonwalk.SkipSpace(cur, vEnd)
			if i < len(cur) && cur[i] == ',' {
				i = jsonwalk.SkipSpace(cur, i+1)
			}
		}
		if !found {
			return nil
		}
	}
	if len(cur) == 0 {
		return nil
	}
	return cur
}

// follow resolves a next-page reference against the page it came from and
// refuses one that leaves the upstream: the sidecar fetches nothing else.
func (f *Fetcher) follow(cur *url.URL, target, what string) (*url.URL, error) {
	u, err := cur.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("invalid %s %q", what, target)
	}
	if u.Scheme != f.base.Scheme || u.Host != f.base.Host {
		return nil, fmt.Errorf("%s %q points to another host", what, u.Redacted())
	}
	if u.User != nil {
		// Userinfo would make the sidecar send credentials of the API's
		// choosing (Authorization: Basic).
		return nil, fmt.Errorf("%s %q carries credentials", what, u.Redacted())
	}
	if prefix := strings.TrimSuffix(f.base.Path, "/"); prefix != "" && u.Path != prefix && !strings.HasPrefix(u.Path, prefix+"/") {
		return nil, fmt.Errorf("%s %q leaves the upstream's path prefix %s", what, u.Redacted(), prefix)
	}
	return u, nil
}

// firstPage adds what the first page of an offset or page source asks for.
func (s *source) firstPage(u *url.URL) *url.URL {
	switch s.page.Type {
	case "offset":
		u = withQuery(u, s.page.LimitParam, strconv.Itoa(s.page.Limit))
		return withQuery(u, s.page.Param, "0")
	case "page":
		if s.page.SizeParam != "" {
			u = withQuery(u, s.page.SizeParam, strconv.Itoa(s.page.Size))
		}
		return withQuery(u, s.page.Param, strconv.Itoa(s.start))
	}
	return u
}

// withQuery returns a copy of u with query parameter k set to v. The rest
// of the query stays byte for byte as the mapping wrote it: some APIs are
// strict about their filters' spelling.
func withQuery(u *url.URL, k, v string) *url.URL {
	c := *u
	var kept []string
	for _, kv := range strings.Split(c.RawQuery, "&") {
		name, _, _ := strings.Cut(kv, "=")
		if un, err := url.QueryUnescape(name); kv == "" || (err == nil && un == k) {
			continue
		}
		kept = append(kept, kv)
	}
	c.RawQuery = strings.Join(append(kept, url.QueryEscape(k)+"="+url.QueryEscape(v)), "&")
	return &c
}

// atoi reads a number this package wrote into a query.
func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// nextLink finds the target of rel="next" in Link header values (RFC 8288).
func nextLink(values []string) string {
	for _, v := range values {
		for v != "" {
			v = strings.TrimLeft(v, " \t,")
			if !strings.HasPrefix(v, "<") {
				return ""
			}
			end := strings.IndexByte(v, '>')
			if end < 0 {
				return ""
			}
			target := v[1:end]
			v = v[end+1:]
			// Parameters run to the next comma that is outside quotes.
			params, rest := splitLinkParams(v)
			v = rest
			for _, p := range strings.Split(params, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if !strings.EqualFold(strings.TrimSpace(k), "rel") {
					continue
				}
				for _, rel := range strings.Fields(strings.Trim(strings.TrimSpace(val), `"`)) {
					if strings.EqualFold(rel, "next") {
						return target
					}
				}
			}
		}
	}
	return ""
}

func splitLinkParams(v string) (params, rest string) {
	inQuote := false
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '"':
			inQuote = !inQuote
		case ',':
			if !inQuote {
				return v[:i], v[i+1:]
			}
		}
	}
	return v, ""
}
