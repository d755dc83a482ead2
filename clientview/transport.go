package clientview

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// One page is one GET: asked conditionally when remembered, read within the
// view's byte budget.

// sourceURL renders the source's path for userID, escaping the value as one
// path segment or one query value.
func (f *Fetcher) sourceURL(s *source, userID string) (*url.URL, error) {
	p, q, hasQ := strings.Cut(s.pathTmpl, "?")
	p = strings.ReplaceAll(p, "{userID}", url.PathEscape(userID))
	pq := p
	if hasQ {
		pq += "?" + strings.ReplaceAll(q, "{userID}", url.QueryEscape(userID))
	}
	u, err := url.Parse(f.prefix + pq)
	if err != nil || u.Host != f.base.Host {
		return nil, fmt.Errorf("invalid URL for user %q", userID)
	}
	return u, nil
}

// get fetches u. With memo, it asks conditionally, and notModified reports
// a 304 (no body).
func (f *Fetcher) get(ctx context.Context, u *url.URL, r Request, memo *PageMemo) (body []byte, hdr http.Header, notModified bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, false, err
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	if memo != nil {
		validators(req.Header, memo)
	}
	resp, err := f.upstream.Do(req)
	if err != nil {
		return nil, nil, false, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusNotModified && memo != nil {
		return nil, resp.Header, true, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, false, &StatusError{Status: resp.StatusCode, Path: u.RequestURI(), Location: resp.Header.Get("Location")}
	}
	left := r.budget.Load()
	var src io.Reader = io.LimitReader(resp.Body, max(left, 0)+min(1, math.MaxInt64-left)) // left+1, without overflow
	if r.Memory != nil {
		src = r.Memory.Reader(ctx, src)
	}
	if body, err = readAll(src, resp.ContentLength, left); err != nil {
		return nil, nil, false, fmt.Errorf("reading upstream response: %w", err)
	}
	if r.spent != nil {
		r.spent.Add(int64(len(body)))
	}
	if r.budget.Add(-int64(len(body))) < 0 {
		return nil, nil, false, fmt.Errorf("the client view is larger than %d bytes (all pages of all sources)", f.maxBody)
	}
	return body, resp.Header, false, nil
}

// readAll reads r to its end into one buffer of the announced length (when
// the answer announces one no larger than the bytes left to read), instead
// of a doubling series of buffers.
func readAll(r io.Reader, announced, left int64) ([]byte, error) {
	if announced < 0 || announced > left {
		return io.ReadAll(r)
	}
	// Grown as bytes arrive (and are charged to the memory budget), never
	// allocated ahead on the answer's word, but to end at its exact size.
	limit := int(announced) + 1 // +1: reading the end needs room
	b := make([]byte, 0, min(limit, 64<<10))
	for {
		if len(b) == limit {
			// Longer than announced (a lying header): go on the usual way.
			rest, err := io.ReadAll(r)
			return append(b, rest...), err
		}
		if len(b) == cap(b) {
			b = slices.Grow(b, min(2*cap(b), limit)-len(b))
		}
		n, err := r.Read(b[len(b):min(cap(b), limit)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// StatusError is a non-2xx answer to a view request.
type StatusError struct {
	Status   int
	Path     string // the page asked for (path and query)
	Location string // a redirect's target
}

func (e *StatusError) Error() string { return fmt.Sprintf("upstream answered %d", e.Status) }
