// Package jsonwalk is the project's shared JSON walker: it reads values out
// of a JSON document's bytes without decoding the document. Finding one
// field of a large document costs a scan of the bytes before it, not a
// decoded tree (a 16 MiB array decoded into []any takes more than 30 times
// its size). Package clientview uses it for the fields of upstream pages,
// package mutators for the placeholders of a mutation's args; Lookup and
// StringOrNumber read a user id out of an auth endpoint's answer. It
// imports only the standard library.
//
// # Contract
//
//   - Input: every function but Lookup assumes its input is valid JSON (as
//     json.Valid decides): a whole document, or a value cut out of one by
//     this package. Validate once, then walk as often as needed. On input
//     that is not valid JSON a function still returns, without panicking,
//     without reading outside the slice it was given and in time linear in
//     its length, but what it returns is unspecified. Lookup checks its
//     document first and returns ErrSyntax for one that is not valid JSON.
//   - Agreement with encoding/json: on valid input, a value found is the
//     one decoding the document with encoding/json finds at the same place.
//     A member name repeated in one object resolves to its last value, a
//     name written with escapes ("\u0069d") is compared as decoded, and a
//     string with invalid UTF-8 reads with U+FFFD in its place, as
//     json.Unmarshal decides.
//   - Paths: a path is a dotted path split at its dots ("items.0.id" is
//     {"items", "0", "id"}). A step into an object names a member; a step
//     into an array is an element's index as strconv.Atoi reads it (so
//     "01" and "+1" also name element 1; a negative index names nothing);
//     a step into anything else finds nothing. An empty path names the
//     document itself.
//   - Ownership: a returned []byte is a sub-slice of the input, never a
//     copy: it is valid as long as the input is, and the caller must not
//     modify it. A value is returned without the whitespace around it, as
//     the document wrote it (not compacted). Returned strings are copies.
//   - Concurrency: the package has no state; every function is safe for
//     concurrent use, on the same input too, as long as nobody writes to it.
package jsonwalk
