package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// maxCookieOrder keeps cookie orders exact in JavaScript numbers.
const maxCookieOrder = 1<<53 - 2

// ParseCookieOrder reads the order of a pull request's cookie, the value
// NextCookieOrder must exceed. Replicache cookies may be null, a number, a
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
	if math.IsNaN(f) || f < 0 || f > maxCookieOrder {
		return 0, fmt.Errorf("cookie order %v is out of range", f)
	}
	return int64(math.Floor(f)), nil
}
