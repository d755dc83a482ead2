// Package mutators turns Replicache mutations into calls of a legacy HTTP API,
// following the "mutators" section of a mapping file, and classifies the
// answers as applied, rejected (a business error) or transient.
//
// A Set is compiled once and is immutable: it is safe for concurrent use
// and can be swapped atomically by its owner when the mapping file changes.
package mutators

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// Spec is one mutator as written in the mapping file.
type Spec struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Body    json.RawMessage   `json:"body,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	// Outcomes overrides what upstream statuses mean for this mutator:
	// keys are statuses ("404") or classes ("5xx"), values "applied",
	// "rejected" or "retry". Exact statuses win over classes, classes over
	// the defaults.
	Outcomes map[string]string `json:"outcomes,omitempty"`
	// ServerID declares a create whose API chooses the id (see
	// ServerIDSpec).
	ServerID *ServerIDSpec `json:"serverID,omitempty"`
	// BodyFormat is how the rendered body is sent: "json" (the default)
	// or "form" (application/x-www-form-urlencoded: the body template
	// must be an object of scalars).
	BodyFormat string `json:"bodyFormat,omitempty"`
}

// Mutation is one Replicache mutation plus the context placeholders may use.
type Mutation struct {
	ClientGroupID string
	ClientID      string
	ID            int64
	Name          string
	Args          json.RawMessage // raw JSON; may be nil or "null"
	UserID        string
	// IdempotencyKey identifies this mutation on every attempt; empty means
	// "<clientID>:<mutationID>". The sidecar sets one nobody else can forge.
	IdempotencyKey string
	// ServerIDs are the group's temporary ids the API has chosen ids for:
	// a placeholder whose whole value is one of them renders as the
	// server's id. nil: none.
	ServerIDs ServerIDs
}

// idempotencyKey is the key that identifies this mutation on every attempt:
// "<clientID>:<mutationID>". Mutation ids are unique per client, so the key is
// unique across the whole system and stable across retries and restarts.
func (m Mutation) idempotencyKey() string {
	if m.IdempotencyKey != "" {
		return m.IdempotencyKey
	}
	return fmt.Sprintf("%s:%d", m.ClientID, m.ID)
}

// Request is a rendered upstream call, ready to be sent by a Client.
type Request struct {
	Mutator string
	Method  string
	// PathQuery is the escaped path, with its query string if any, relative
	// to the upstream base URL. Every substituted value is escaped.
	PathQuery      string
	Body           []byte // nil: no body
	Header         http.Header
	IdempotencyKey string
	// TempID is, for a mutator that declares serverID, the temporary id
	// the mutation's args hold at serverID.arg: what the server id read
	// from an applied answer is recorded for. "" when there is none to
	// record (the Result's NoServerID then says why).
	TempID string

	outcomes outcomeRules  // the mutator's; the defaults when unset
	group    string        // the client group it is for
	serverID *serverIDRule // the mutator's serverID, if any
	noTempID string        // why TempID is empty, for a serverID mutator
	// mentions are the strings placeholders resolved to whole (the first
	// placeheld of them), then TempID: the temporary ids the call may
	// refer to. Only collected when the Set declares a serverID.
	mentions  []string
	placeheld int
}

// Mentions returns the temporary ids the call may refer to: the strings
// its placeholders resolved to whole (each at most MaxIDBytes) and its
// TempID. It is empty unless some mutator of the Set declares serverID.
// The caller must not modify it.
func (r *Request) Mentions() []string { return r.mentions }

// Refers reports whether one of the call's placeholders resolved to a key
// of ids: rendered again with Mutation.ServerIDs set to ids, the call
// carries the server's id there.
func (r *Request) Refers(ids ServerIDs) bool {
	for _, s := range r.mentions[:r.placeheld] {
		if _, ok := ids[s]; ok {
			return true
		}
	}
	return false
}

// renderError is a mutation that cannot be turned into an upstream call: an
// unmapped mutator, a missing argument, or an argument that cannot stand where
// the template puts it. It is a business error: retrying cannot fix it.
type renderError struct {
	Mutator string
	Reason  string
}

func (e *renderError) Error() string {
	return fmt.Sprintf("mutator %q: %s", e.Mutator, e.Reason)
}

// Set is a compiled set of mutators, the "mutators" section of a mapping
// file. It is immutable after Compile.
type Set struct {
	byName    map[string]*mutator
	serverIDs bool // some mutator declares serverID
}

type mutator struct {
	name    string
	path    string // as written, for reports
	method  string
	segs    [][]part // path segments after the leading "/"
	query   []queryParam
	hasBody bool
	body    any // template tree: map[string]any, []any, []part (string), json.Number, bool, nil
	header  http.Header
	outcome outcomeRules
	// form: the body goes as application/x-www-form-urlencoded.
	form     bool
	serverID *serverIDRule
}

type queryParam struct {
	key, value []part
	hasValue   bool
}

var allowedMethods = map[string]bool{
	http.MethodPost:   true,
	http.MethodPut:    true,
	http.MethodPatch:  true,
	http.MethodDelete: true,
}

// reservedHeaders are set by the sidecar or by net/http and cannot be
// overridden by a mapping. Content-Type is the mapping's to set (JSON:API,
// merge-patch); without it a body goes as its bodyFormat's type.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true,
	"Connection": true, "X-Request-Id": true,
}

// Body formats, and the Content-Type each is sent with unless the mapping's
// headers name another.
const (
	formatJSON = "json"
	formatForm = "form"

	contentTypeJSON = "application/json"
	contentTypeForm = "application/x-www-form-urlencoded"
)

// Compile checks every mutator and returns the compiled mapping, or one error
// joining every problem found (each prefixed with the mutator's name).
func Compile(specs map[string]Spec) (*Set, error) {
	m := &Set{byName: make(map[string]*mutator, len(specs))}
	names := make([]string, 0, len(specs))
	for name := range specs {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		mu, problems := compileMutator(name, specs[name])
		for _, p := range problems {
			errs = append(errs, fmt.Errorf("mutator %q: %w", name, p))
		}
		if len(problems) == 0 {
			m.byName[name] = mu
			m.serverIDs = m.serverIDs || mu.serverID != nil
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return m, nil
}

func compileMutator(name string, s Spec) (*mutator, []error) {
	var errs []error
	mu := &mutator{name: name, path: s.Path, method: strings.ToUpper(s.Method), header: http.Header{}}
	if name == "" {
		errs = append(errs, errors.New("empty mutator name"))
	}
	switch {
	case s.Method == "":
		errs = append(errs, errors.New("method is required"))
	case !allowedMethods[mu.method]:
		errs = append(errs, fmt.Errorf("method %q is not one of POST, PUT, PATCH, DELETE", s.Method))
	}
	if err := mu.compilePath(s.Path); err != nil {
		errs = append(errs, err)
	}
	if len(s.Body) > 0 && !bytes.Equal(bytes.TrimSpace(s.Body), []byte("null")) {
		tree, err := compileBody(s.Body)
		if err != nil {
			errs = append(errs, fmt.Errorf("body: %w", err))
		}
		mu.hasBody, mu.body = true, tree
	}
	switch s.BodyFormat {
	case "", formatJSON:
	case formatForm:
		mu.form = true
		errs = append(errs, checkFormBody(mu.hasBody, mu.body)...)
	default:
		errs = append(errs, fmt.Errorf("bodyFormat %q is not json or form", s.BodyFormat))
	}
	if s.ServerID != nil {
		var serrs []error
		mu.serverID, serrs = compileServerID(s.ServerID)
		errs = append(errs, serrs...)
	}
	var oerrs []error
	mu.outcome, oerrs = compileOutcomes(s.Outcomes)
	errs = append(errs, oerrs...)
	for k, v := range s.Headers {
		ck := http.CanonicalHeaderKey(k)
		switch {
		case !validHeaderName(k):
			errs = append(errs, fmt.Errorf("header %q: invalid name", k))
		case reservedHeaders[ck]:
			errs = append(errs, fmt.Errorf("header %q is set by the sidecar and cannot be mapped", k))
		case strings.ContainsAny(v, "\r\n\x00"):
			errs = append(errs, fmt.Errorf("header %q: value contains a control character", k))
		case ck == "Content-Type" && !validMediaType(v):
			errs = append(errs, fmt.Errorf("header %q: %q is not a media type (such as application/vnd.api+json)", k, v))
		default:
			mu.header.Set(ck, v)
		}
	}
	return mu, errs
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c > 127 || !(c == '-' || c == '_' || c == '.' || c == '!' || c == '#' || c == '$' ||
			c == '%' || c == '&' || c == '\'' || c == '*' || c == '+' || c == '^' || c == '`' ||
			c == '|' || c == '~' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

func (mu *mutator) compilePath(p string) error {
	switch {
	case p == "":
		return errors.New("path is required")
	case !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//"):
		return fmt.Errorf("path %q must start with a single /", p)
	case strings.ContainsAny(p, "#\r\n\t "):
		return fmt.Errorf("path %q contains a fragment, space or control character", p)
	}
	pathPart, queryPart, hasQuery := cutQuery(p)
	var errs []string
	for _, seg := range strings.Split(pathPart[1:], "/") {
		ps, err := compileString(seg)
		if err != nil {
			errs = append(errs, err.Error())
		}
		for _, x := range ps {
			if x.ref == nil && !validEscaped(x.literal) {
				errs = append(errs, fmt.Sprintf("path literal %q is not valid URL path text", x.literal))
			}
		}
		mu.segs = append(mu.segs, ps)
	}
	if hasQuery && queryPart != "" {
		for _, kv := range strings.Split(queryPart, "&") {
			k, v, hasV := strings.Cut(kv, "=")
			kp, err1 := compileString(k)
			vp, err2 := compileString(v)
			for _, err := range []error{err1, err2} {
				if err != nil {
					errs = append(errs, err.Error())
				}
			}
			mu.query = append(mu.query, queryParam{key: kp, value: vp, hasValue: hasV})
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("path: %s", strings.Join(errs, "; "))
	}
	return nil
}

// cutQuery splits a path template at the first "?" outside a placeholder
// (an optional placeholder such as {args.x?} has one inside).
func cutQuery(p string) (path, query string, found bool) {
	depth := 0
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '{':
			depth++
		case '}':
			depth = max(depth-1, 0)
		case '?':
			if depth == 0 {
				return p[:i], p[i+1:], true
			}
		}
	}
	return p, "", false
}

// validEscaped reports whether s is already valid escaped path text (so a
// mapping may write %20 literally).
func validEscaped(s string) bool {
	u, err := url.Parse("/" + s)
	return err == nil && u.RawQuery == "" && u.Fragment == ""
}

func compileBody(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	var errs []string
	var walk func(any) any
	walk = func(n any) any {
		switch x := n.(type) {
		case map[string]any:
			for k, v := range x {
				x[k] = walk(v)
			}
			return x
		case []any:
			for i, v := range x {
				x[i] = walk(v)
			}
			return x
		case string:
			ps, err := compileString(x)
			if err != nil {
				errs = append(errs, err.Error())
			}
			return ps
		default:
			return x
		}
	}
	tree = walk(tree)
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	return tree, nil
}

// Names returns the mapped mutator names in sorted order.
func (m *Set) Names() []string {
	names := make([]string, 0, len(m.byName))
	for n := range m.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// HasServerIDs reports whether some mutator declares serverID: only then
// may a call refer to a temporary id, and Request.Mentions lists what.
func (m *Set) HasServerIDs() bool { return m.serverIDs }

// Has reports whether name is a mapped mutator.
func (m *Set) Has(name string) bool { _, ok := m.byName[name]; return ok }

// Template returns a mutator's method and path as the mapping wrote them.
func (m *Set) Template(name string) (method, path string, ok bool) {
	mu, ok := m.byName[name]
	if !ok {
		return "", "", false
	}
	return mu.method, mu.path, true
}

// Render builds the upstream request for mu. A *renderError means the mutation
// can never be applied (a business error); no other error is returned.
// The returned Request is owned by the caller.
func (m *Set) Render(mu Mutation) (*Request, error) {
	spec, ok := m.byName[mu.Name]
	if !ok {
		return nil, &renderError{Mutator: mu.Name, Reason: "no mapping for this mutator"}
	}
	if len(mu.Args) > 0 && !json.Valid(mu.Args) {
		return nil, &renderError{Mutator: mu.Name, Reason: "args are not valid JSON"}
	}
	v := &values{m: mu, collect: m.serverIDs}
	fail := func(err error) (*Request, error) {
		return nil, &renderError{Mutator: mu.Name, Reason: err.Error()}
	}
	pq, err := spec.renderPathQuery(v)
	if err != nil {
		return fail(err)
	}
	req := &Request{
		Mutator:        mu.Name,
		Method:         spec.method,
		PathQuery:      pq,
		Header:         spec.header.Clone(),
		IdempotencyKey: mu.idempotencyKey(),
		outcomes:       spec.outcome,
		group:          mu.ClientGroupID,
		serverID:       spec.serverID,
	}
	switch {
	case spec.hasBody:
		out, _, err := renderValue(spec.body, v)
		if err != nil {
			return fail(err)
		}
		if spec.form {
			req.Body, err = formBody(out)
		} else if req.Body, err = json.Marshal(out); err != nil {
			err = fmt.Errorf("encoding body: %w", err)
		}
		if err != nil {
			return fail(err)
		}
	case spec.method != http.MethodDelete:
		req.Body = []byte(mu.Args)
		if len(req.Body) == 0 {
			req.Body = []byte("null")
		} else if v.collect {
			req.Body = v.argsBody(req.Body)
		}
	}
	if req.Body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", contentTypeJSON)
		if spec.form {
			req.Header.Set("Content-Type", contentTypeForm)
		}
	}
	if spec.serverID != nil {
		req.TempID, req.noTempID = spec.serverID.tempID(mu.Args)
	}
	if v.collect {
		req.mentions, req.placeheld = v.mentions, len(v.mentions)
		if req.TempID != "" {
			req.mentions = append(req.mentions, req.TempID)
		}
	}
	return req, nil
}

func (mu *mutator) renderPathQuery(v *values) (string, error) {
	var b strings.Builder
	for _, seg := range mu.segs {
		b.WriteByte('/')
		s, err := renderURLPart(seg, v, url.PathEscape)
		if err != nil {
			return "", err
		}
		// A substituted value may not make its segment empty or a dot
		// segment: either would address a different resource upstream.
		if hasPlaceholder(seg) && (s == "" || s == "." || s == "..") {
			return "", fmt.Errorf("path segment would be %q, which is not allowed", s)
		}
		b.WriteString(s)
	}
	for i, q := range mu.query {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		k, err := renderURLPart(q.key, v, url.QueryEscape)
		if err != nil {
			return "", err
		}
		b.WriteString(k)
		if q.hasValue {
			val, err := renderURLPart(q.value, v, url.QueryEscape)
			if err != nil {
				return "", err
			}
			b.WriteByte('=')
			b.WriteString(val)
		}
	}
	return b.String(), nil
}

func renderURLPart(ps []part, v *values, escape func(string) string) (string, error) {
	return interpolate(ps, v, func(p part, val any) (string, error) {
		s, err := scalarText(p, val)
		return escape(s), err
	})
}

// interpolate renders a template string: literal text as it is, each
// placeholder through render. An absent optional placeholder renders as
// nothing; an absent required one is errMissing.
func interpolate(ps []part, v *values, render func(part, any) (string, error)) (string, error) {
	var b strings.Builder
	for _, p := range ps {
		if p.ref == nil {
			b.WriteString(p.literal)
			continue
		}
		val, ok := v.lookup(p.ref)
		if !ok {
			if p.optional {
				continue
			}
			return "", errMissing{p.raw}
		}
		s, err := render(p, val)
		if err != nil {
			return "", err
		}
		b.WriteString(s)
	}
	return b.String(), nil
}

// renderValue renders a body template node. keep is false when the node is a
// lone optional placeholder whose value is absent: its object key is dropped.
func renderValue(n any, v *values) (out any, keep bool, err error) {
	switch x := n.(type) {
	case map[string]any:
		o := make(map[string]any, len(x))
		for k, child := range x {
			r, keep, err := renderValue(child, v)
			if err != nil {
				return nil, false, err
			}
			if keep {
				o[k] = r
			}
		}
		return o, true, nil
	case []any:
		a := make([]any, 0, len(x))
		for _, child := range x {
			r, keep, err := renderValue(child, v)
			if err != nil {
				return nil, false, err
			}
			if keep {
				a = append(a, r)
			}
		}
		return a, true, nil
	case []part:
		// A string that is exactly one placeholder takes the value's JSON type.
		if len(x) == 1 && x[0].ref != nil {
			val, ok := v.lookup(x[0].ref)
			if !ok {
				if x[0].optional {
					return nil, false, nil
				}
				return nil, false, errMissing{x[0].raw}
			}
			return val, true, nil
		}
		s, err := interpolate(x, v, func(_ part, val any) (string, error) { return text(val) })
		if err != nil {
			return nil, false, err
		}
		return s, true, nil
	default:
		return x, true, nil
	}
}
