package clientview

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// What `replicache-sidecar check` needs to say whether a source fits its
// API, beyond a fetch: how the source was written (its items path, total
// and changes), what a full read's items hold in the changes and
// soft-delete fields, and the bounds of the delta reads it tries. Nothing
// here is on a pull's path.

func (si SourceInfo) compiled() *source { return si.View.sources[0] }

// Items is the source's items path as written ("": the answer itself).
func (si SourceInfo) Items() string { return strings.Join(si.compiled().items, ".") }

// Total is the source's total path as written ("": none named).
func (si SourceInfo) Total() string { return strings.Join(si.compiled().totalPath, ".") }

// Paging is the source's pagination with its defaults filled in (zero for
// one answer).
func (si SourceInfo) Paging() Pagination { return si.compiled().page }

// ChangesSpec is how a source with changes is read by them, as written.
type ChangesSpec struct {
	Field   string // changes.field
	Deleted string // changes.deleted ("": none)
	// Param is changes.param, or "" when the source has a Query template
	// (changes.query) instead.
	Param, Query string
}

// Changes returns the source's changes as written; false without.
func (si SourceInfo) Changes() (ChangesSpec, bool) {
	cc := si.compiled().changes
	if cc == nil {
		return ChangesSpec{}, false
	}
	spec := ChangesSpec{Field: strings.Join(cc.field, "."), Deleted: strings.Join(cc.deleted, "."), Param: cc.param}
	var pairs []string
	for _, p := range cc.query {
		pairs = append(pairs, p.key+"="+p.value)
	}
	spec.Query = strings.Join(pairs, "&")
	return spec, true
}

// ChangesSurvey is what the items of one read of a source hold in its
// changes field and soft-delete field.
type ChangesSurvey struct {
	Items int // items surveyed, soft-deleted ones included
	// Missing counts the items without the changes field; Near are the
	// member names beside where it was looked for in the first of them
	// (to tell the name meant).
	Missing int
	Near    []string
	// Unreadable counts the items whose changes field is neither a time
	// nor a number; Example is the first such value as the API wrote it.
	Unreadable int
	Example    string
	// Oldest and Newest are the least and greatest readable values, as
	// the API wrote them ("": none). Mixed: times and numbers both came.
	Oldest, Newest string
	Mixed          bool
	// DeletedSeen: an item carries the soft-delete field (set or not), or
	// the read marked items deleted. DeletedNear are the member names
	// beside where it was looked for, in the first item.
	DeletedSeen bool
	DeletedNear []string
}

// SurveyChanges looks at the entries of one read of the source (from a
// fetch of si.View) and at what the read found soft-deleted; false for a
// source without changes.
func (si SourceInfo) SurveyChanges(es []Entry, read SourceResult) (ChangesSurvey, bool) {
	cc := si.compiled().changes
	if cc == nil {
		return ChangesSurvey{}, false
	}
	sv := ChangesSurvey{Items: len(es) + len(read.Deleted), DeletedSeen: len(read.Deleted) > 0}
	var oldest, newest *mark
	for _, e := range es {
		if e.Value == nil {
			continue
		}
		raw, present := jsonwalk.Find(e.Value, cc.field)
		m, readable := parseMark(raw)
		switch {
		case !present || string(jsonwalk.Trim(raw)) == "null":
			if sv.Missing == 0 {
				sv.Near = memberNames(e.Value, cc.field)
			}
			sv.Missing++
		case !readable:
			if sv.Unreadable == 0 {
				sv.Example = string(jsonwalk.Trim(raw))
			}
			sv.Unreadable++
		default:
			if oldest == nil {
				oldest, newest = &m, &m
				break
			}
			c1, ok1 := m.cmp(*oldest)
			c2, ok2 := m.cmp(*newest)
			switch {
			case !ok1 || !ok2:
				sv.Mixed = true
			case c1 < 0:
				oldest = &m
			case c2 > 0:
				newest = &m
			}
		}
		if cc.deleted != nil {
			if _, present := jsonwalk.Find(e.Value, cc.deleted); present {
				sv.DeletedSeen = true
			} else if sv.DeletedNear == nil {
				sv.DeletedNear = memberNames(e.Value, cc.deleted)
			}
		}
	}
	if oldest != nil {
		sv.Oldest, sv.Newest = oldest.text, newest.text
	}
	return sv, true
}

// memberNames are the names of the members of the object at path less its
// last step in item, sorted.
func memberNames(item []byte, path []string) []string {
	parent, ok := jsonwalk.Find(item, path[:len(path)-1])
	if !ok {
		return nil
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(parent, &obj) != nil {
		return nil
	}
	names := make([]string, 0, len(obj))
	for k := range obj {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// ProbeSince returns the Plan.Since with which a delta read of the source
// asks for what changed after the changes-field value v (after), or since
// just before it (!after): v moved by the smallest step of how it is
// written (a second, or a unit of its last digit of a fraction of a
// second; one for a number), with the source's overlap added back, which
// the fetch takes off again.
func (si SourceInfo) ProbeSince(v string, after bool) (string, error) {
	cc := si.compiled().changes
	if cc == nil {
		return "", errors.New("the source has no changes")
	}
	m, ok := parseMarkText(v)
	if !ok {
		return "", fmt.Errorf("%q is neither a number nor a time", v)
	}
	sign := int64(1)
	if !after {
		sign = -1
	}
	if m.isTime {
		step := time.Second
		if i := strings.IndexByte(m.layout, '.'); i >= 0 {
			digits := len(m.layout[i+1:]) - len(strings.TrimLeft(m.layout[i+1:], "0"))
			step = time.Duration(pow10(9 - min(digits, 9)))
		}
		return m.t.Add(time.Duration(sign) * step).Add(cc.overlap).Format(m.layout), nil
	}
	n := new(big.Float).Add(m.n, new(big.Float).SetInt64(sign))
	if cc.overlapN != nil {
		n.Add(n, cc.overlapN)
	}
	if n.IsInt() {
		i, _ := n.Int(nil)
		return i.String(), nil
	}
	return n.Text('f', -1), nil
}

func pow10(n int) int64 {
	p := int64(1)
	for range n {
		p *= 10
	}
	return p
}
