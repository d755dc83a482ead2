package clientview

import (
	"encoding/binary"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// A page is read in one pass over its bytes: the scan below checks that it
// is JSON exactly as json.Valid does, and on the way notes what the pull
// needs: the top-level members (pagination and total fields), the selected
// items array split into items, whether each item holds whitespace outside
// its strings (only those are compacted), and the values of each item's
// top-level fields that its key names. Nothing is decoded or copied: every
// span is a sub-slice of the page. (Before, json.Valid, finding the items,
// splitting them, reading the keys and the pagination fields were five
// passes; the scan is one.)

// maxDepth bounds nesting, as encoding/json does: deeper documents are
// refused rather than recursed into.
const maxDepth = 10000

// plain marks the bytes a JSON string holds unescaped: not '"', '\\' or a
// control character. Read-only.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// pageScan is what one scan of a page found.
type pageScan struct {
	top      []member // the top-level members in order, when the page is an object
	selected []byte   // the value at the items path (the page itself without one); nil if absent
	// items and fields, when selected is an array: its elements, and for
	// each element (an object) the values of the key's first field names
	// (fields[i*len(keyFields)+f]; nil where absent).
	items  []scannedItem
	fields [][]byte
}

type member struct{ key, val []byte } // key still quoted

type scannedItem struct {
	raw    []byte
	spaced bool
}

// topMember returns the value of a top-level member (the last, when the
// key repeats, as encoding/json decides).
func (p *pageScan) topMember(name string) ([]byte, bool) {
	for i := len(p.top) - 1; i >= 0; i-- {
		if jsonwalk.KeyEquals(p.top[i].key, name) {
			return p.top[i].val, true
		}
	}
	return nil, false
}

// lookup is lookupPath over the scanned page, its first step read from the
// top-level members.
func (p *pageScan) lookup(body []byte, path []string) (value []byte, present bool, err error) {
	if p.top == nil {
		return lookupPath(body, path) // not an object: lookupPath says so
	}
	v, ok := p.topMember(path[0])
	if !ok {
		return nil, false, nil
	}
	if len(path) == 1 {
		return v, true, nil
	}
	if v, present, err := lookupPath(v, path[1:]); err == nil {
		return v, present, nil
	}
	return lookupPath(body, path) // for the error naming the whole path
}

type scanner struct {
	b         []byte
	items     []string // the items path
	keyFields []string // first names of the key's fields, in item objects
	out       *pageScan
}

// scanPage reads body in one pass. ok is false when body is not JSON.
// reuse, when not nil, is an earlier page's scan whose items and fields
// are no longer needed: their arrays are reused.
func scanPage(body []byte, items, keyFields []string, reuse *pageScan) (p pageScan, ok bool) {
	if reuse != nil {
		p.items, p.fields = reuse.items[:0], reuse.fields[:0]
	}
	s := scanner{b: body, items: items, keyFields: keyFields, out: &p}
	i := s.space(0)
	end, _, ok := s.value(i, 0, 0, nil)
	if !ok || s.space(end) != len(body) {
		return pageScan{}, false
	}
	return p, true
}

func (s *scanner) space(i int) int { return jsonwalk.SkipSpace(s.b, i) }

// value scans the value at b[i]. onPath is how many steps of the items path
// lead here (-1: off the path); into, when not nil, receives the members
// an item object holds for the key's fields.
func (s *scanner) value(i, depth, onPath int, into [][]byte) (end int, spaced, ok bool) {
	if i >= len(s.b) {
		return i, false, false
	}
	switch c := s.b[i]; {
	case (c == '{' || c == '[') && depth >= maxDepth:
		return i, false, false // the 10001st level
	case c == '{':
		end, spaced, ok = s.object(i, depth, onPath, into)
	case c == '[':
		end, spaced, ok = s.array(i, depth, onPath == len(s.items))
	case c == '"':
		end, ok = s.str(i)
	case c == '-' || (c >= '0' && c <= '9'):
		end, ok = s.number(i)
	case c == 't':
		end, ok = s.literal(i, "true")
	case c == 'f':
		end, ok = s.literal(i, "false")
	case c == 'n':
		end, ok = s.literal(i, "null")
	default:
		return i, false, false
	}
	if ok && onPath == len(s.items) {
		s.out.selected = s.b[i:end]
	}
	return end, spaced, ok
}

func (s *scanner) object(i, depth, onPath int, into [][]byte) (end int, spaced, ok bool) {
	top := depth == 0
	if top {
		s.out.top = s.out.top[:0]
		if s.out.top == nil {
			s.out.top = make([]member, 0, 8)
		}
	}
	j := s.space(i + 1)
	spaced = j != i+1
	if j < len(s.b) && s.b[j] == '}' {
		return j + 1, spaced, true
	}
	for {
		if j >= len(s.b) || s.b[j] != '"' {
			return j, false, false
		}
		kEnd, ok := s.str(j)
		if !ok {
			return kEnd, false, false
		}
		key := s.b[j:kEnd]
		k := s.space(kEnd)
		if k >= len(s.b) || s.b[k] != ':' {
			return k, false, false
		}
		v := s.space(k + 1)
		spaced = spaced || k != kEnd || v != k+1
		// Is this member the next step of the items path?
		next := -1
		if onPath >= 0 && onPath < len(s.items) && jsonwalk.KeyEquals(key, s.items[onPath]) {
			next = onPath + 1
			// A repeated key: the last wins, even where it leads nowhere.
			s.out.selected = nil
		}
		vEnd, vSpaced, ok := s.value(v, depth+1, next, nil)
		if !ok {
			return vEnd, false, false
		}
		spaced = spaced || vSpaced
		if top {
			s.out.top = append(s.out.top, member{key, s.b[v:vEnd]})
		}
		for f, name := range s.keyFields {
			if into != nil && jsonwalk.KeyEquals(key, name) {
				into[f] = s.b[v:vEnd]
			}
		}
		var more, sp bool
		if j, sp, more, ok = s.after(vEnd, '}'); !ok || !more {
			return j, spaced || sp, ok
		}
		spaced = spaced || sp
	}
}

// array scans the array at b[i]; collect makes its elements the page's
// items (a repeated items key: the last array wins).
func (s *scanner) array(i, depth int, collect bool) (end int, spaced, ok bool) {
	nf := len(s.keyFields)
	if collect {
		s.out.items, s.out.fields = s.out.items[:0], s.out.fields[:0]
	}
	j := s.space(i + 1)
	spaced = j != i+1
	if j < len(s.b) && s.b[j] == ']' {
		return j + 1, spaced, true
	}
	for {
		var into [][]byte
		if collect && nf > 0 {
			n := len(s.out.fields)
			s.out.fields = append(s.out.fields, make([][]byte, nf)...)
			into = s.out.fields[n : n+nf]
		}
		vEnd, vSpaced, ok := s.value(j, depth+1, -1, into)
		if !ok {
			return vEnd, false, false
		}
		if collect {
			s.out.items = append(s.out.items, scannedItem{s.b[j:vEnd], vSpaced})
		}
		spaced = spaced || vSpaced
		var more, sp bool
		if j, sp, more, ok = s.after(vEnd, ']'); !ok || !more {
			return j, spaced || sp, ok
		}
		spaced = spaced || sp
	}
}

// after reads what follows a member or element ending at i: a comma (more:
// j is where the next one starts) or the closing byte (j is past it);
// spaced when it skipped whitespace.
func (s *scanner) after(i int, closing byte) (j int, spaced, more, ok bool) {
	j = s.space(i)
	spaced = j != i
	if j >= len(s.b) {
		return j, false, false, false
	}
	switch s.b[j] {
	case closing:
		return j + 1, spaced, false, true
	case ',':
		k := s.space(j + 1)
		return k, spaced || k != j+1, true, true
	}
	return j, false, false, false
}

// str scans the string at b[i] (b[i] is '"').
func (s *scanner) str(i int) (int, bool) {
	b := s.b
	i++
	for {
		// The bulk of a page is plain string bytes: skip them eight at a
		// time while no byte of the eight is '"', '\\' or a control byte.
		for i+8 <= len(b) && !special(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			return i, false
		}
		switch b[i] {
		case '"':
			return i + 1, true
		case '\\':
			if i+1 >= len(b) {
				return i, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return i, false
				}
				i += 6
			default:
				return i, false
			}
		default: // a control character
			return i, false
		}
	}
}

// special reports whether one of the eight bytes of x may be '"', '\\' or
// below 0x20 (it may say so wrongly, never the other way round; the byte
// loop then decides).
func special(x uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	quote, backslash := x^(lo*'"'), x^(lo*'\\')
	zero := func(v uint64) uint64 { return (v - lo) & ^v & hi }
	return (zero(quote) | zero(backslash) | ((x - lo*0x20) & ^x & hi)) != 0
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(b []byte, i int) bool { return i < len(b) && b[i] >= '0' && b[i] <= '9' }

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at b[i].
func (s *scanner) number(i int) (int, bool) {
	b := s.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case isDigit(b, i):
		for isDigit(b, i) {
			i++
		}
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !isDigit(b, i) {
			return i, false
		}
		for isDigit(b, i) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !isDigit(b, i) {
			return i, false
		}
		for isDigit(b, i) {
			i++
		}
	}
	return i, true
}

func (s *scanner) literal(i int, lit string) (int, bool) {
	if len(s.b)-i < len(lit) || string(s.b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}
