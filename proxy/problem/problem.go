// Package problem is how the sidecar tells a client that a request cannot
// be served: an HTTP status, a stable code, a short message, optional
// detail fields, the request id and the trace id, as JSON.
//
// # Contract
//
//   - A Code is one of the constants below: a small fixed set, stable across
//     releases (clients and alerts match on them; the metric
//     replicache_sidecar_request_errors_total{code} is labelled with them).
//   - Messages are for a person reading the answer: they name the setting,
//     field or mapping entry to look at, never an internal URL, address or
//     Go error text (those go to the log).
//   - Write is the only way an *Error reaches the wire; it takes the
//     request and trace ids from the response's X-Request-ID and X-Trace-ID
//     headers, which the edge sets before any handler runs.
//   - The Replicache protocol's own errors (VersionNotSupported,
//     ClientStateNotFound) go out with HTTP 200, which is the only status
//     under which the client reads them.
//
// Everything here is safe for concurrent use; an *Error is a value the
// caller owns.
package problem

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// Code names what went wrong, in a word a client or an alert can match.
type Code string

// The codes of the sidecar's own answers.
const (
	BadRequest            Code = "BadRequest"
	Unauthorized          Code = "Unauthorized"
	Forbidden             Code = "Forbidden"
	NotFound              Code = "NotFound"
	MethodNotAllowed      Code = "MethodNotAllowed"
	RequestTimeout        Code = "RequestTimeout"
	PayloadTooLarge       Code = "PayloadTooLarge"
	UnsupportedMediaType  Code = "UnsupportedMediaType"
	TooManyClients        Code = "TooManyClients"
	TooManyRequests       Code = "TooManyRequests"
	MutationIDGap         Code = "MutationIDGap"
	Internal              Code = "Internal"
	BadGateway            Code = "BadGateway"
	MappingError          Code = "MappingError"
	ConfigurationError    Code = "ConfigurationError"
	ViewTooLarge          Code = "ViewTooLarge"
	UpstreamUnavailable   Code = "UpstreamUnavailable"
	ViewShifted           Code = "ViewShifted"
	GroupBusy             Code = "GroupBusy"
	DatabaseUnavailable   Code = "DatabaseUnavailable"
	MemoryBudgetExhausted Code = "MemoryBudgetExhausted"
	TooManySubscribers    Code = "TooManySubscribers"
	ShuttingDown          Code = "ShuttingDown"
	Starting              Code = "Starting"
)

// Codes lists every code, for metrics that pre-create their series.
var Codes = []Code{
	BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, RequestTimeout, PayloadTooLarge,
	UnsupportedMediaType, TooManyClients, TooManyRequests, MutationIDGap, Internal, BadGateway, MappingError,
	ConfigurationError, ViewTooLarge, UpstreamUnavailable, ViewShifted, GroupBusy, DatabaseUnavailable,
	MemoryBudgetExhausted, TooManySubscribers, ShuttingDown, Starting,
}

// Error is an answer to a request that cannot be served.
type Error struct {
	Status  int
	Code    Code
	Message string
	Detail  map[string]any // extra members of the JSON body
	// RetryAfter, when positive, is sent as Retry-After (seconds).
	RetryAfter int
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// Errorf returns an *Error with a formatted message.
func Errorf(status int, code Code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unavailable is a 503 the client should retry after retryAfter seconds.
func Unavailable(code Code, retryAfter int, format string, args ...any) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: code, Message: fmt.Sprintf(format, args...), RetryAfter: retryAfter}
}

// Write sends e as JSON: {"error": code, "message": …, "requestID": …,
// "traceID": …} plus its detail members, with Retry-After when set.
func Write(w http.ResponseWriter, e *Error) {
	body := make(map[string]any, len(e.Detail)+4)
	for k, v := range e.Detail {
		body[k] = v
	}
	body["error"] = e.Code
	body["message"] = e.Message
	if id := w.Header().Get("X-Request-ID"); id != "" {
		body["requestID"] = id
	}
	if id := w.Header().Get("X-Trace-ID"); id != "" {
		body["traceID"] = id
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	WriteJSON(w, e.Status, body)
}

// WriteJSON sends v as a JSON answer that no cache keeps.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"Internal","message":"encoding response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// WriteVersionNotSupported answers a push or pull of another protocol
// version (versionType "push" or "pull").
func WriteVersionNotSupported(w http.ResponseWriter, versionType string) {
	WriteJSON(w, http.StatusOK, map[string]string{"error": "VersionNotSupported", "versionType": versionType})
}

// WriteClientStateNotFound tells the client its server state is gone: it
// starts over (a browser reloads; the group it then forks is answered
// normally).
func WriteClientStateNotFound(w http.ResponseWriter) {
	WriteJSON(w, http.StatusOK, map[string]string{"error": "ClientStateNotFound"})
}
