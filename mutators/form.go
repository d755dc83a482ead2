package mutators

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/url"
	"sort"
	"strconv"
)

// A "form" body (bodyFormat) is the rendered body object's top-level fields
// as application/x-www-form-urlencoded, in key order: a string as itself,
// a number as its JSON text (exactly as the args or the template have it),
// true and false as "true" and "false", null as the empty value ("note=").
// Nested objects and arrays have no one form encoding (Rails writes
// a[b]=…, PHP a[]=…, others repeat the key): a template that holds one is
// a mapping error, and an argument that brings one is a business error of
// that mutation.

// checkFormBody reports why a body template cannot be sent as a form.
func checkFormBody(hasBody bool, tree any) []error {
	obj, ok := tree.(map[string]any)
	switch {
	case !hasBody:
		return []error{errors.New(`bodyFormat "form" needs a body template: an object whose fields become the form's`)}
	case tree == nil:
		return nil // the body did not compile; that is reported already
	case !ok:
		return []error{errors.New(`bodyFormat "form": the body template must be an object`)}
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		switch obj[k].(type) {
		case map[string]any, []any:
			errs = append(errs, fmt.Errorf(`bodyFormat "form": body field %q is an object or array; a form holds strings, numbers, booleans and null`, k))
		}
	}
	return errs
}

// formBody encodes a rendered body object as a form.
func formBody(out any) ([]byte, error) {
	obj, ok := out.(map[string]any)
	if !ok {
		return nil, errors.New("the form body is not an object") // checkFormBody makes this impossible
	}
	form := make(url.Values, len(obj))
	for k, val := range obj {
		switch x := val.(type) {
		case string:
			form.Set(k, x)
		case json.Number:
			form.Set(k, x.String())
		case bool:
			form.Set(k, strconv.FormatBool(x))
		case nil:
			form.Set(k, "")
		default: // an object or array an argument brought
			return nil, fmt.Errorf("body field %q: an object or array cannot be sent in a form body", k)
		}
	}
	return []byte(form.Encode()), nil
}

// validMediaType reports whether v is a Content-Type value: a media type
// with optional parameters.
func validMediaType(v string) bool {
	_, _, err := mime.ParseMediaType(v)
	return err == nil
}
