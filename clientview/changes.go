package clientview

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// Delta reads: a source whose API filters by modification time or version
// says how ("changes"), and is then read by what changed since the
// greatest value of that field read before (its watermark), in between
// full reads. What a delta read returns only adds or replaces entries;
// deletions come from a full read, a soft-delete field, or a delete the
// sidecar routed itself (the caller's business: see Plan).

// Changes is a source's "changes" as written in the mapping file.
type Changes struct {
	// Param is the query parameter carrying the lower bound
	// (?updated_after=<since>); or Query, a query template with a {since}
	// placeholder for APIs that filter by an expression (PocketBase
	// filter=(updated>'{since}'), Directus filter[date_updated][_gt]={since}),
	// written as the API should receive it: the sidecar escapes it.
	Param string `json:"param,omitempty"`
	Query string `json:"query,omitempty"`
	// Field is the dotted path, in each item, of its modification time (RFC
	// 3339) or version (a number).
	Field string `json:"field"`
	// Overlap re-reads a window before the watermark, for equal timestamps
	// and clocks that disagree: a duration for timestamps (default 5s), a
	// number for versions (default 0).
	Overlap json.RawMessage `json:"overlap,omitempty"`
	// Deleted is the dotted path of a soft-delete field: an item where it is
	// present, not null, false, "" or 0 (nor "0" or "false" in text) is
	// deleted.
	Deleted string `json:"deleted,omitempty"`
	// FullEvery bounds the time between full reads of the source for a
	// client group (default 10m): deletions the API makes itself, which a
	// modified-since filter never shows, are seen within it.
	FullEvery string `json:"fullEvery,omitempty"`
}

// Defaults of Changes.
const (
	DefaultOverlap   = 5 * time.Second
	DefaultFullEvery = 10 * time.Minute
)

// compiledChanges is Changes checked and parsed.
type compiledChanges struct {
	param     string
	query     []queryPair // when the API filters by an expression
	field     []string
	deleted   []string
	overlap   time.Duration // timestamps
	overlapN  *big.Float    // versions; nil: 0
	fullEvery time.Duration
}

// queryPair is one name=value pair of a changes query; {since} in the value
// stands for the bound.
type queryPair struct{ key, value string }

func compileChanges(c *Changes) (*compiledChanges, []error) {
	var errs []error
	cc := &compiledChanges{param: c.Param, overlap: DefaultOverlap, fullEvery: DefaultFullEvery}
	switch {
	case c.Field == "":
		errs = append(errs, errors.New("changes.field is required: the item field holding its modification time or version"))
	default:
		cc.field = strings.Split(c.Field, ".")
	}
	switch {
	case (c.Param == "") == (c.Query == ""):
		errs = append(errs, errors.New("changes: give param (a query parameter) or query (a template with {since}), one of them"))
	case c.Query != "":
		pairs, err := compileChangesQuery(c.Query)
		if err != nil {
			errs = append(errs, err)
		}
		cc.query = pairs
	}
	if c.Deleted != "" {
		cc.deleted = strings.Split(c.Deleted, ".")
	}
	if len(c.Overlap) > 0 {
		var s string
		var n json.Number
		switch {
		case json.Unmarshal(c.Overlap, &s) == nil:
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("changes.overlap %q: want a duration such as \"5s\" (timestamps) or a number (versions)", s))
			}
			cc.overlap = d
		case json.Unmarshal(c.Overlap, &n) == nil:
			f, ok := new(big.Float).SetString(n.String())
			if !ok || f.Sign() < 0 {
				errs = append(errs, fmt.Errorf("changes.overlap %s: want a number not below 0", n))
			}
			cc.overlapN = f
		default:
			errs = append(errs, errors.New("changes.overlap: want a duration such as \"5s\" (timestamps) or a number (versions)"))
		}
	}
	if c.FullEvery != "" {
		d, err := time.ParseDuration(c.FullEvery)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("changes.fullEvery %q: want a positive duration such as \"10m\"", c.FullEvery))
		}
		cc.fullEvery = d
	}
	return cc, errs
}

// compileChangesQuery splits a query template into its pairs; {since}
// may appear in values, at least once in all.
func compileChangesQuery(q string) ([]queryPair, error) {
	if strings.ContainsAny(q, "#\r\n") || strings.HasPrefix(q, "?") {
		return nil, fmt.Errorf("changes.query %q: want name=value pairs joined by &, without ? or #", q)
	}
	var out []queryPair
	found := false
	for _, kv := range strings.Split(q, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if k == "" || strings.Contains(k, "{since}") {
			return nil, fmt.Errorf("changes.query %q: each pair needs a name, without {since} in it", q)
		}
		found = found || strings.Contains(v, "{since}")
		out = append(out, queryPair{key: k, value: v})
	}
	if !found {
		return nil, fmt.Errorf("changes.query %q: has no {since}", q)
	}
	return out, nil
}

// filtered returns u asking for what changed since since (written as the
// API writes its own values; escaped here, like every query value).
func (cc *compiledChanges) filtered(u *url.URL, since string) *url.URL {
	if cc.param != "" {
		return withQuery(u, cc.param, since)
	}
	for _, p := range cc.query {
		u = withQuery(u, p.key, strings.ReplaceAll(p.value, "{since}", since))
	}
	return u
}

// Mode is how a fetch reads one source.
type Mode uint8

const (
	// Full reads every item (the default).
	Full Mode = iota
	// Delta reads what changed since Plan.Since (the source's watermark).
	Delta
	// Skip reads nothing: what the caller holds of the source stands.
	Skip
)

func (m Mode) String() string {
	switch m {
	case Delta:
		return "delta"
	case Skip:
		return "skip"
	}
	return "full"
}

// Plan is how one fetch reads one source.
type Plan struct {
	Mode Mode
	// Since is the source's watermark, for Delta: the greatest value of its
	// changes field read before, as the API wrote it. The fetch asks for
	// what changed since the watermark less the source's overlap.
	Since string
}

// SourceResult is what a fetch read of one source.
type SourceResult struct {
	Source string // the source's fingerprint
	Path   string // as the mapping wrote it
	Mode   Mode
	// Entries is how many entries the read produced (soft-deleted items
	// not counted).
	Entries int
	// Watermark is the greatest value of the changes field among the items
	// read, as the API wrote it ("": none read, or no changes).
	Watermark string
	// Deleted are the keys of items the soft-delete field marks deleted.
	Deleted []string
	// Provable: a full read whose pages are known to fit together (one
	// answer, cursor pagination, or a total that matched what was read), so
	// a key it lacks is gone; otherwise an item a writer moved between two
	// pages may be missing, and a deletion should be confirmed.
	Provable bool
	// FilterIgnored: a delta read answered items older than it asked for:
	// the API does not honour the filter (a mistyped parameter answers the
	// whole collection). The entries are right; the read cost a full one.
	FilterIgnored bool
	// Sent is the lower bound a delta read asked for.
	Sent string
	// Requests and Bytes are what the read asked of the API: pages (304s
	// included, a source read again because its pages shifted counted
	// twice) and body bytes.
	Requests int
	Bytes    int64
}

// mark is a changes-field value: a time or a number, and its text as the
// API wrote it.
type mark struct {
	text   string
	isTime bool
	t      time.Time
	n      *big.Float
	layout string // the time's layout, to write a bound back the same way
}

// timeLayouts are the timestamp spellings the sidecar reads (and writes
// back when it subtracts the overlap): RFC 3339, with a space between date
// and time (PocketBase), and without a zone (read as UTC).
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999",
}

// parseMark reads a changes-field value (raw JSON: a string or a number).
func parseMark(raw []byte) (mark, bool) {
	raw = jsonwalk.Trim(raw)
	if len(raw) == 0 {
		return mark{}, false
	}
	if raw[0] == '"' {
		s, ok := jsonwalk.Unquote(raw)
		if !ok || s == "" {
			return mark{}, false
		}
		return parseMarkText(s)
	}
	if raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9' {
		return parseMarkText(string(raw))
	}
	return mark{}, false
}

// parseMarkText reads a watermark as stored: a number or a time.
func parseMarkText(s string) (mark, bool) {
	if f, ok := new(big.Float).SetString(s); ok {
		return mark{text: s, n: f}, true
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return mark{text: s, isTime: true, t: t, layout: exactLayout(l, s)}, true
		}
	}
	return mark{}, false
}

// exactLayout is layout l with its fraction of a second as s spells it
// (as many digits, zeros kept; none without a dot), so a bound is written
// exactly as the API writes its times.
func exactLayout(l, s string) string {
	frac := ""
	if i := strings.IndexByte(s, '.'); i >= 0 {
		n := 0
		for i+1+n < len(s) && s[i+1+n] >= '0' && s[i+1+n] <= '9' {
			n++
		}
		frac = "." + strings.Repeat("0", n)
	}
	return strings.Replace(l, ".999999999", frac, 1)
}

// cmp compares two marks of one kind: -1, 0, +1; ok is false for marks of
// different kinds.
func (m mark) cmp(o mark) (c int, ok bool) {
	switch {
	case m.isTime && o.isTime:
		return m.t.Compare(o.t), true
	case m.n != nil && o.n != nil:
		return m.n.Cmp(o.n), true
	}
	return 0, false
}

// since is the lower bound a delta read asks for: the watermark less the
// overlap, written as the watermark was.
func (cc *compiledChanges) since(watermark string) (mark, error) {
	m, ok := parseMarkText(watermark)
	if !ok {
		return mark{}, fmt.Errorf("watermark %q is neither a number nor a time", watermark)
	}
	if m.isTime {
		t := m.t.Add(-cc.overlap)
		return mark{text: t.Format(m.layout), isTime: true, t: t, layout: m.layout}, nil
	}
	if cc.overlapN == nil || cc.overlapN.Sign() == 0 {
		return m, nil
	}
	n := new(big.Float).Sub(m.n, cc.overlapN)
	text := n.Text('f', -1)
	if m.n.IsInt() && n.IsInt() {
		i, _ := n.Int(nil)
		text = i.String()
	}
	return mark{text: text, n: n}, nil
}

// deletedValue reports whether a soft-delete field's value marks its item
// deleted: present, and not null, false, "" or 0 (a number zero however
// written; and "0" or "false" in text, as APIs built on PHP or MySQL
// drivers often write their flags).
func deletedValue(raw []byte, present bool) bool {
	if !present {
		return false
	}
	v := jsonwalk.Trim(raw)
	switch string(v) {
	case "null", "false", `""`, `"0"`:
		return false
	}
	if len(v) > 0 && v[0] == '"' {
		s, ok := jsonwalk.Unquote(v)
		return !ok || !strings.EqualFold(s, "false")
	}
	if f, ok := new(big.Float).SetString(string(v)); ok && f.Sign() == 0 {
		return false
	}
	return true
}

// changeRead goes through a source's pages, as they are read, for what
// its changes say: soft-deleted items leave the entries (their keys are
// reported), the greatest changes-field value is the read's watermark,
// and in a delta read an item older than the bound asked for shows the API
// ignored the filter. Entries without a value (a page answered 304) are
// passed over: the watermark read before covers them.
type changeRead struct {
	best    *mark
	ignored bool
	deleted []string
	drop    []int // the positions of the soft-deleted among the source's entries, ascending
}

// page reads one page's entries, es, which start at position at among the
// source's, and returns them without the soft-deleted (es itself when none
// is).
func (c *changeRead) page(cc *compiledChanges, sent *mark, es []Entry, at int) []Entry {
	dropped := len(c.drop)
	for i, e := range es {
		if e.Value == nil {
			continue
		}
		if raw, present := jsonwalk.Find(e.Value, cc.field); present {
			if m, ok := parseMark(raw); ok {
				if c.best == nil {
					c.best = &m
				} else if d, ok := m.cmp(*c.best); ok && d > 0 {
					c.best = &m
				}
				if sent != nil {
					if d, ok := m.cmp(*sent); ok && d < 0 {
						c.ignored = true
					}
				}
			}
		}
		if cc.deleted != nil {
			if v, present := jsonwalk.Find(e.Value, cc.deleted); deletedValue(v, present) {
				c.deleted = append(c.deleted, e.Key)
				c.drop = append(c.drop, at+i)
			}
		}
	}
	if len(c.drop) == dropped {
		return es
	}
	kept := make([]Entry, 0, len(es)-(len(c.drop)-dropped))
	for i, e := range es {
		if len(c.drop) > dropped && c.drop[dropped] == at+i {
			dropped++
			continue
		}
		kept = append(kept, e)
	}
	return kept
}

// without returns the first len(es) entries of the source without the
// soft-deleted (es itself when none is).
func (c *changeRead) without(es []Entry) []Entry {
	if len(c.drop) == 0 || c.drop[0] >= len(es) {
		return es
	}
	return c.keep(make([]Entry, 0, len(es)), es)
}

// keep appends to dst the entries of es but the soft-deleted; dst may be
// es[:0] (each entry is written no later than it is read).
func (c *changeRead) keep(dst, es []Entry) []Entry {
	d := 0
	for i, e := range es {
		if d < len(c.drop) && c.drop[d] == i {
			d++
			continue
		}
		dst = append(dst, e)
	}
	return dst
}

// finish reports what the pages said in read and returns the source's
// entries, es, without the soft-deleted (in place).
func (c *changeRead) finish(es []Entry, read *SourceResult) []Entry {
	read.Deleted, read.FilterIgnored = c.deleted, c.ignored
	if c.best != nil {
		read.Watermark = c.best.text
	}
	if len(c.drop) == 0 {
		return es
	}
	return c.keep(es[:0], es)
}

// MaxMark returns the greater of two watermarks as the API wrote them (a
// when b cannot be compared with it, b when a is empty).
func MaxMark(a, b string) string {
	if a == "" {
		return b
	}
	ma, oka := parseMarkText(a)
	mb, okb := parseMarkText(b)
	if !okb {
		return a
	}
	if !oka {
		return b
	}
	if c, ok := mb.cmp(ma); ok && c > 0 {
		return b
	}
	return a
}

// parseDuration reads an optional duration of the mapping.
func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive duration such as \"60s\"", field, s)
	}
	return d, nil
}
