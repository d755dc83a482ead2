package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Cookie is what a pull's cookie says. Ours are
//
//	{"order": 12, "db": "<epoch>", "g": "<group>", "rec": "<record>", "v": 7, "t": "<tag>"}
//
// order orders it (the protocol's part); db names the database that issued
// it (its epoch), g the client group it was issued to (GroupTag); rec, v
// and t name the group's view record, the version of it the client holds
// and that version's random tag, from which a pull may answer a diff.
// Cookies without them (reset mode, older sidecars, other servers) are
// answered with a reset. Every hex field is 16 digits (JavaScript numbers
// cannot hold 64 bits).
type Cookie struct {
	Order   int64
	Epoch   string // "" when the cookie names none
	Group   string // "" when the cookie names none
	Record  uint64 // 0 when the cookie names no record (or an unreadable one)
	Version int64
	Tag     uint64
}

// FormatID writes a 64-bit id as a cookie carries it: 16 hex digits.
func FormatID(id uint64) string { return fmt.Sprintf("%016x", id) }

// GroupTag is the g of the cookies issued to a client group: a hash of its
// id, so a cookie tells whether it was issued to the group that sends it or
// was handed down to a group forked from that one.
func GroupTag(groupID string) string { return FormatID(xxhash.Sum64String(groupID)) }

// ParseCookie reads a pull request's cookie. Only its order can make it an
// error (ParseCookieOrder): an epoch, group, record, version or tag that
// cannot be read is treated as absent, so the pull answers a reset rather
// than a diff.
func ParseCookie(raw json.RawMessage) (Cookie, error) {
	order, err := ParseCookieOrder(raw)
	if err != nil {
		return Cookie{}, err
	}
	c := Cookie{Order: order}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return c, nil
	}
	var obj struct {
		DB  json.RawMessage `json:"db"`
		G   json.RawMessage `json:"g"`
		Rec json.RawMessage `json:"rec"`
		V   json.RawMessage `json:"v"`
		T   json.RawMessage `json:"t"`
	}
	if json.Unmarshal(raw, &obj) != nil {
		return c, nil
	}
	if _, ok := hexID(obj.DB); ok {
		_ = json.Unmarshal(obj.DB, &c.Epoch)
	}
	if _, ok := hexID(obj.G); ok {
		_ = json.Unmarshal(obj.G, &c.Group)
	}
	var v int64
	rec, okRec := hexID(obj.Rec)
	tag, okTag := hexID(obj.T)
	if okRec && okTag && rec != 0 && json.Unmarshal(obj.V, &v) == nil && v > 0 {
		c.Record, c.Version, c.Tag = rec, v, tag
	}
	return c, nil
}

// hexID reads a JSON string of 16 hex digits.
func hexID(raw json.RawMessage) (uint64, bool) {
	var s string
	if json.Unmarshal(raw, &s) != nil || len(s) != 16 {
		return 0, false
	}
	id, err := strconv.ParseUint(s, 16, 64)
	return id, err == nil
}

// maxCookieOrder is the largest order a cookie may carry: JSON's (and
// JavaScript's) largest safe integer. The sidecar never issues more, and a
// cookie at it can no longer be exceeded.
const maxCookieOrder = 1<<53 - 1

// ErrCookieExhausted: a cookie's order (the request's, or the group's
// last) cannot be exceeded within JSON's safe integers. The client must
// start over (ClientStateNotFound); a larger order would be refused at the
// next pull and wedge the group for good.
var ErrCookieExhausted = errors.New("cookie order cannot grow any further")

// ParseCookieOrder reads the order of a pull request's cookie, the value
// NextCookieOrder must exceed. An order that cannot be exceeded within
// JSON's safe integers is ErrCookieExhausted, not a malformed cookie. Replicache cookies may be null, a number, a
// string, or an object with an "order" that is a number or string; ours are
// {"order": n}. A string must hold a number: a cookie we cannot order
// against would let us issue one the client refuses forever.
func ParseCookieOrder(raw json.RawMessage) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return 0, nil
	}
	if raw[0] == '{' {
		var obj struct {
			Order json.RawMessage `json:"order"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil || len(obj.Order) == 0 || obj.Order[0] == '{' {
			return 0, errors.New(`cookie object needs an "order" that is a number or string`)
		}
		raw = obj.Order
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, errors.New("cookie is not a JSON value")
	}
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case string:
		p, err := strconv.ParseFloat(x, 64)
		if err != nil {
			return 0, fmt.Errorf("cookie order %q is not a number", x)
		}
		f = p
	default:
		return 0, errors.New("cookie must be null, a number, a string or {\"order\": …}")
	}
	switch {
	case math.IsNaN(f) || f < 0:
		return 0, fmt.Errorf("cookie order %v is out of range", f)
	case f >= maxCookieOrder:
		return 0, ErrCookieExhausted
	}
	return int64(math.Floor(f)), nil
}
