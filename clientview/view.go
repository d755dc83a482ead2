package clientview

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Source is one client view source as written in the mapping file.
type Source struct {
	// Path is fetched with GET; {userID} may appear in it.
	Path string `json:"path"`
	// Items is a dotted path to the array of entities in the response; empty
	// means the response itself.
	Items string `json:"items,omitempty"`
	// Key is a template over each item's fields, e.g. "todo/{id}". A key
	// without placeholders makes the whole selected value one entry.
	Key string `json:"key"`
	// Pagination, when set, fetches further pages.
	Pagination *Pagination `json:"pagination,omitempty"`
	// Total is the dotted path of the answer's count of all items, when the
	// API reports one elsewhere than X-Total-Count or a top-level count,
	// total, totalCount, total_count or totalItems.
	Total string `json:"total,omitempty"`
	// Changes says how the API filters the source by modification time or
	// version: the source is then read by its changes between full reads.
	Changes *Changes `json:"changes,omitempty"`
	// MaxAge ("60s"): a client group re-reads the source at most that
	// often, unless a write the sidecar saw falls under its path or the
	// invalidate hook names it.
	MaxAge string `json:"maxAge,omitempty"`
	// Shared: the source answers the same for every user (public reference
	// data): it is read for all client groups together, without any user's
	// credentials.
	Shared bool `json:"shared,omitempty"`
}

// Pagination describes how a source's further pages are found.
type Pagination struct {
	// Type is one of:
	//   - "link": the next page's URL in a Link header (RFC 8288, rel="next");
	//   - "cursor": a token in the answer (Next) sent back as query
	//     parameter Param;
	//   - "url": the next page's URL in the answer (Next), absolute or
	//     relative: DRF's next, JSON:API's links.next, HAL's _links.next.href;
	//   - "offset": query parameters Param (the offset) and LimitParam set
	//     to Limit; the offset advances by the items received until a page
	//     holds fewer than Limit;
	//   - "page": query parameter Param counting up from Start (and
	//     SizeParam=Size when set) until a page holds no items (or fewer
	//     than Size);
	//   - "none": one page, said explicitly: an answer that shows signs of
	//     more pages (a Link rel="next", a next field, a total above the
	//     items) is then not an error.
	Type string `json:"type"`
	// Param is the query parameter of the cursor (default "cursor"), the
	// offset (default "offset") or the page number (default "page").
	Param string `json:"param,omitempty"`
	// Next is the dotted path of the next cursor or URL in the answer
	// (cursor and url types; default "next"). Absent, null or "" ends the
	// pagination.
	Next string `json:"next,omitempty"`
	// LimitParam and Limit (offset type): the page size asked for (default
	// "limit" and 100).
	LimitParam string `json:"limitParam,omitempty"`
	Limit      int    `json:"limit,omitempty"`
	// Start is the first page number (page type; default 1).
	Start *int `json:"start,omitempty"`
	// SizeParam and Size (page type, optional, together): the page size
	// asked for; a page holding fewer items is the last.
	SizeParam string `json:"sizeParam,omitempty"`
	Size      int    `json:"size,omitempty"`
	// MaxPages guards against pagination loops; more pages fail the pull.
	// Default defaultMaxPages.
	MaxPages int `json:"maxPages,omitempty"`
}

// defaultMaxPages is the page limit of a paginated source that sets none.
const defaultMaxPages = 1000

// View is a compiled list of sources.
type View struct {
	sources []*source
}

type source struct {
	id        string // fingerprint of the definition: names the source in page memos
	path      string // as written, for error messages
	pathTmpl  string // with {userID} still in it
	items     []string
	key       []keyPart
	keyFields []string // the distinct first names of the key's fields, for the page scan
	keyed     bool     // key has at least one placeholder
	page      Pagination
	paged     bool
	nextPath  []string // page.Next split at dots (cursor and url types)
	totalPath []string // Total split at dots
	start     int      // first page number (page type)
	changes   *compiledChanges
	maxAge    time.Duration
	shared    bool
	// owns is the literal start every key of the source has (its key
	// template up to the first placeholder; the whole key without one):
	// which source a key of a record belongs to.
	owns string

	// warnedAbsent is set once the absence of the cursor field on a first
	// page has been logged: once per compiled view, so once per mapping
	// load. The only mutable part of a View.
	warnedAbsent atomic.Bool
}

type keyPart struct {
	literal string
	field   []string // nil for literal text
	first   int      // index of field[0] in the source's keyFields
}

var fieldRE = regexp.MustCompile(`\{([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\}`)

// Compile checks every source and returns the compiled view, or one error
// joining every problem found.
func Compile(srcs []Source) (*View, error) {
	v := &View{}
	var errs []error
	for i, s := range srcs {
		cs, problems := compileSource(s)
		for _, p := range problems {
			errs = append(errs, fmt.Errorf("clientView[%d] (%s): %w", i, s.Path, p))
		}
		if len(problems) == 0 {
			v.sources = append(v.sources, cs)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return v, nil
}

func compileSource(s Source) (*source, []error) {
	var errs []error
	def, _ := json.Marshal(s) // a Source always encodes
	cs := &source{id: fmt.Sprintf("%016x", Hash(def)), path: s.Path, pathTmpl: s.Path}
	switch {
	case s.Path == "":
		errs = append(errs, errors.New("path is required"))
	case !strings.HasPrefix(s.Path, "/") || strings.HasPrefix(s.Path, "//"):
		errs = append(errs, errors.New("path must start with a single /"))
	default:
		rest := strings.ReplaceAll(s.Path, "{userID}", "x")
		if strings.ContainsAny(rest, "{}") {
			errs = append(errs, errors.New("path: only the {userID} placeholder is allowed"))
		} else if u, err := url.Parse(rest); err != nil || u.Fragment != "" || strings.ContainsAny(rest, " \r\n\t") {
			errs = append(errs, errors.New("path is not a valid URL path"))
		}
	}
	if s.Items != "" {
		cs.items = strings.Split(s.Items, ".")
	}
	if s.Key == "" {
		errs = append(errs, errors.New("key is required"))
	}
	if len(s.Key) > MaxKeyBytes {
		errs = append(errs, fmt.Errorf("key is longer than %d bytes", MaxKeyBytes))
	}
	if strings.HasPrefix(s.Key, ReservedPrefix) {
		errs = append(errs, fmt.Errorf("key %q: the prefix %s is reserved for the sidecar's own entries", s.Key, ReservedPrefix))
	}
	last := 0
	for _, m := range fieldRE.FindAllStringSubmatchIndex(s.Key, -1) {
		if m[0] > last {
			cs.key = append(cs.key, keyPart{literal: s.Key[last:m[0]]})
		}
		field := strings.Split(s.Key[m[2]:m[3]], ".")
		first := slices.Index(cs.keyFields, field[0])
		if first < 0 {
			first = len(cs.keyFields)
			cs.keyFields = append(cs.keyFields, field[0])
		}
		cs.key = append(cs.key, keyPart{field: field, first: first})
		cs.keyed = true
		last = m[1]
	}
	if last < len(s.Key) {
		cs.key = append(cs.key, keyPart{literal: s.Key[last:]})
	}
	if s.Total != "" {
		cs.totalPath = strings.Split(s.Total, ".")
	}
	if s.Changes != nil {
		var problems []error
		cs.changes, problems = compileChanges(s.Changes)
		errs = append(errs, problems...)
		if !cs.keyed {
			errs = append(errs, errors.New("changes need a key with a placeholder (one entry per item)"))
		}
	}
	var err error
	if cs.maxAge, err = parseDuration("maxAge", s.MaxAge); err != nil {
		errs = append(errs, err)
	}
	cs.shared = s.Shared
	if s.Shared && cs.maxAge == 0 {
		cs.maxAge = DefaultSharedMaxAge
	}
	if s.Shared && strings.Contains(s.Path, "{userID}") {
		errs = append(errs, errors.New("shared: the path names {userID}, so its answer is not the same for every user"))
	}
	if len(cs.key) > 0 && cs.key[0].field == nil {
		cs.owns = cs.key[0].literal
	}
	if p := s.Pagination; p != nil && p.Type == "none" {
		// Explicitly one page: the answer's signs of more are not checked.
		cs.page.Type = "none"
	} else if p != nil {
		cs.paged, cs.page = true, *p
		errs = append(errs, cs.compilePagination(s.Items != "")...)
		if p.MaxPages < 0 {
			errs = append(errs, errors.New("pagination maxPages must be positive"))
		}
		if cs.page.MaxPages == 0 {
			cs.page.MaxPages = defaultMaxPages
		}
		if !cs.keyed {
			errs = append(errs, errors.New("a paginated source needs a key with a placeholder"))
		}
	}
	return cs, errs
}

// compilePagination checks cs.page and fills in its defaults.
func (cs *source) compilePagination(hasItems bool) []error {
	var errs []error
	p := &cs.page
	orDefault := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	switch p.Type {
	case "link":
	case "cursor", "url":
		if p.Type == "cursor" {
			orDefault(&p.Param, "cursor")
		}
		orDefault(&p.Next, "next")
		cs.nextPath = strings.Split(p.Next, ".")
		if !hasItems {
			// The answer must be an object holding both the items and the
			// next reference; an array answer could only show page one.
			errs = append(errs, fmt.Errorf("%s pagination needs items (the answer holds the items and the next %s)", p.Type, p.Type))
		}
	case "offset":
		orDefault(&p.Param, "offset")
		orDefault(&p.LimitParam, "limit")
		if p.Limit == 0 {
			p.Limit = 100
		}
		if p.Limit < 0 {
			errs = append(errs, errors.New("pagination limit must be positive"))
		}
		if p.Param == p.LimitParam {
			errs = append(errs, errors.New("pagination param and limitParam must differ"))
		}
	case "page":
		orDefault(&p.Param, "page")
		cs.start = 1
		if p.Start != nil {
			cs.start = *p.Start
		}
		if cs.start < 0 {
			errs = append(errs, errors.New("pagination start must not be negative"))
		}
		if (p.SizeParam == "") != (p.Size == 0) || p.Size < 0 {
			errs = append(errs, errors.New("pagination sizeParam and size go together (size positive)"))
		}
		if p.SizeParam != "" && p.SizeParam == p.Param {
			errs = append(errs, errors.New("pagination param and sizeParam must differ"))
		}
	default:
		errs = append(errs, fmt.Errorf("pagination type %q is not link, cursor, url, offset or page", p.Type))
	}
	return errs
}

// DefaultSharedMaxAge is a shared source's maxAge when it names none: a
// replica reads it again at most that often, unless a write falls under it.
const DefaultSharedMaxAge = time.Minute

// ReservedPrefix starts the keys of entries the sidecar adds to the client
// view itself (rejected mutations); no source may produce one.
const ReservedPrefix = "_sidecar/"

// Len returns the number of sources.
func (v *View) Len() int { return len(v.sources) }

// Owner returns the source a key of a view built from v belongs to (by
// the literal start of the sources' key templates), and false when no
// source, or more than one, could have produced it.
func (v *View) Owner(key string) (id string, ok bool) {
	found := -1
	for i, s := range v.sources {
		if s.owns == "" || !strings.HasPrefix(key, s.owns) || (!s.keyed && key != s.owns) {
			continue
		}
		if found >= 0 {
			return "", false
		}
		found = i
	}
	if found < 0 {
		return "", false
	}
	return v.sources[found].id, true
}

// Distinct reports whether every key a source can produce tells which
// source it came from (Owner answers for it): no key template without a
// literal start, and none whose start begins another's. Reading some
// sources of a view and keeping what a client holds of the others needs
// it.
func (v *View) Distinct() bool {
	for i, a := range v.sources {
		if a.owns == "" {
			return false
		}
		for j, b := range v.sources {
			if i != j && strings.HasPrefix(b.owns, a.owns) {
				return false
			}
		}
	}
	return true
}

// SourceInfo describes one source of a view.
type SourceInfo struct {
	ID         string // the source's fingerprint: changes with its definition
	Path       string // as the mapping wrote it
	Pagination string // link, cursor, url, offset or page; "none" when said so; "" for one answer
	View       *View  // a view of this source alone
	// Delta: the source says how to read its changes (Changes); FullEvery
	// then bounds the time between its full reads.
	Delta     bool
	FullEvery time.Duration
	MaxAge    time.Duration // 0: none
	Shared    bool
}

// Sources describes each source, in order.
func (v *View) Sources() []SourceInfo {
	out := make([]SourceInfo, len(v.sources))
	for i, s := range v.sources {
		out[i] = SourceInfo{ID: s.id, Path: s.path, Pagination: s.page.Type, View: &View{sources: []*source{s}},
			Delta: s.changes != nil, MaxAge: s.maxAge, Shared: s.shared}
		if s.changes != nil {
			out[i].FullEvery = s.changes.fullEvery
		}
	}
	return out
}

// Entry is one key/value of the client view. Value is the item's JSON exactly
// as the upstream sent it.
type Entry struct {
	Key   string
	Value json.RawMessage
	Hash  uint64 // Hash(Value), computed as the entry is read
}

// Hash is the 64-bit hash of a value's bytes that view records store
// (xxHash64: stable across processes and versions, several GB/s). Values
// are compacted before they are hashed, so whitespace alone never makes a
// value look changed.
func Hash(value []byte) uint64 { return xxhash.Sum64(value) }

// SourceError is a source that could not be turned into entries: the pull
// must fail rather than present a partial view.
type SourceError struct {
	Source string // the source's path as written in the mapping
	Reason string
	Err    error // underlying cause, if any
	// Shifted: the source's pages kept shifting under the fetch (another
	// writer). Retrying later may succeed; it is no mapping error.
	Shifted bool
}

func (e *SourceError) Error() string {
	return fmt.Sprintf("client view source %s: %s", e.Source, e.Reason)
}

func (e *SourceError) Unwrap() error { return e.Err }
