package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Cookie is what a pull's cookie says. Ours are
//
//	{"order": 12, "db": "<epoch>", "rec": "<record id>", "v": 7}
//
// order orders it (the protocol's part); db names the database that issued
// it (Epoch); rec and v name the client group's view record and the version
// of it the client holds, from which a pull may answer a diff. Cookies
// without rec and v (reset mode, older sidecars, other servers) are answered
// with a reset.
type Cookie struct {
	Order   int64
	Epoch   string // "" when the cookie names none
	Record  uint64 // 0 when the cookie names no record (or an unreadable one)
	Version int64
}

// FormatRecordID writes a record id as the cookie carries it: 16 hex
// digits (JavaScript numbers cannot hold 64 bits).
func FormatRecordID(id uint64) string { return fmt.Sprintf("%016x", id) }

// ParseCookie reads a pull request's cookie. Only its order can make it an
// error (ParseCookieOrder): an epoch, record or version that cannot be read
// is treated as absent, so the pull answers a reset rather than a diff.
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
		Rec json.RawMessage `json:"rec"`
		V   json.RawMessage `json:"v"`
	}
	if json.Unmarshal(raw, &obj) != nil {
		return c, nil
	}
	var db string
	if json.Unmarshal(obj.DB, &db) == nil {
		c.Epoch = db
	}
	var rec string
	var v int64
	if json.Unmarshal(obj.Rec, &rec) == nil && len(rec) == 16 && json.Unmarshal(obj.V, &v) == nil && v > 0 {
		if id, err := strconv.ParseUint(rec, 16, 64); err == nil && id != 0 {
			c.Record, c.Version = id, v
		}
	}
	return c, nil
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
