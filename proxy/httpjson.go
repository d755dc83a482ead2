package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// httpError is an answer to a request that cannot be served. Every error the
// sidecar itself produces goes out as JSON: {"error": Code, "message": ...,
// "requestID": ...} plus optional detail fields. Codes are stable; messages
// are short and never carry internal URLs or Go error text (logs do).
type httpError struct {
	Status  int
	Code    string
	Message string
	Detail  map[string]any
	// RetryAfter, when positive, is sent as Retry-After (seconds).
	RetryAfter int
}

func (e *httpError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

func errorf(status int, code, format string, args ...any) *httpError {
	return &httpError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *httpError) {
	body := make(map[string]any, len(e.Detail)+2)
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
	writeJSON(w, e.Status, body)
}

// upstreamSuspended answers a request that needs the upstream while the
// circuit breaker is open: retry when the next probe may go through.
func upstreamSuspended(retryAfter int) *httpError {
	return &httpError{Status: http.StatusServiceUnavailable, Code: "UpstreamUnavailable",
		Message: "the upstream service is failing; calls are suspended for a moment", RetryAfter: retryAfter,
		Detail: map[string]any{"cause": upstream.ErrCircuitOpen.Error()}}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"Internal","message":"encoding response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// Protocol errors of the Replicache wire protocol. The client recognises them
// only with HTTP 200.
func writeVersionNotSupported(w http.ResponseWriter, versionType string) {
	writeJSON(w, http.StatusOK, map[string]string{"error": "VersionNotSupported", "versionType": versionType})
}

func writeClientStateNotFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]string{"error": "ClientStateNotFound"})
}

// decodeBody reads at most limit bytes of JSON into dst, charging mem for
// them (nil: not charged). It refuses trailing data after the value, and
// names the problem in the returned error.
//
// The body is read into one buffer, sized by Content-Length when the client
// sent one, and decoded from there: about twice the body in memory at the
// peak (the buffer, and the args kept as raw bytes), where a streaming
// decoder's doubling buffer took four times.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, mem *budget.Lease, dst any) *httpError {
	tooLarge := errorf(http.StatusRequestEntityTooLarge, "PayloadTooLarge", "request body is larger than %d bytes (SIDECAR_MAX_BODY_BYTES)", limit)
	if r.ContentLength > limit {
		return tooLarge
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, limit)
	if mem != nil {
		if r.ContentLength > mem.Limit() {
			return budgetError(&budget.TooLargeError{Limit: mem.Limit()}, "request body")
		}
		// Charged as the bytes arrive, not as declared: a slow client
		// holds no more of the budget than it has sent.
		body = mem.Reader(r.Context(), body)
	}
	var buf []byte
	if r.ContentLength > 0 {
		buf = make([]byte, r.ContentLength)
		if n, err := io.ReadFull(body, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return errorf(http.StatusBadRequest, "BadRequest", "the body ended after %d of %d bytes (Content-Length)", n, r.ContentLength)
			}
			return readError(err, tooLarge)
		}
	} else {
		var err error
		if buf, err = io.ReadAll(body); err != nil {
			return readError(err, tooLarge)
		}
	}
	err := json.Unmarshal(buf, dst)
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case len(bytes.TrimSpace(buf)) == 0:
		return errorf(http.StatusBadRequest, "BadRequest", "empty request body")
	case errors.As(err, &syntax) && strings.Contains(syntax.Error(), "after top-level value"):
		return errorf(http.StatusBadRequest, "BadRequest", "unexpected data after the JSON value (byte %d)", syntax.Offset)
	case errors.As(err, &syntax) && syntax.Offset >= int64(len(buf)):
		return errorf(http.StatusBadRequest, "BadRequest", "truncated JSON body")
	case errors.As(err, &syntax):
		return errorf(http.StatusBadRequest, "BadRequest", "malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typeErr):
		return errorf(http.StatusBadRequest, "BadRequest", "field %q: JSON %s where %s was expected", typeErr.Field, typeErr.Value, typeErr.Type)
	default:
		return errorf(http.StatusBadRequest, "BadRequest", "decoding request body: %v", err)
	}
}

// readError names why a request body could not be read.
func readError(err error, tooLarge *httpError) *httpError {
	var netErr net.Error
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return tooLarge
	case errors.Is(err, budget.ErrBusy), errors.As(err, new(*budget.TooLargeError)):
		return budgetError(err, "request body")
	case errors.As(err, &netErr) && netErr.Timeout():
		return errorf(http.StatusRequestTimeout, "RequestTimeout", "the request body did not arrive in time (SIDECAR_HTTP_READ_TIMEOUT)")
	default:
		return errorf(http.StatusBadRequest, "BadRequest", "reading request body: %v", err)
	}
}

// budgetError answers a request whose bytes (what) found no room in the
// process-wide in-flight budget: 503 to retry in a moment, or 413 when it
// needs more than the whole budget.
func budgetError(err error, what string) *httpError {
	var tooLarge *budget.TooLargeError
	if errors.As(err, &tooLarge) {
		return errorf(http.StatusRequestEntityTooLarge, "PayloadTooLarge", "the %s %s", what, tooLarge.Error())
	}
	if errors.Is(err, budget.ErrBusy) {
		return &httpError{Status: http.StatusServiceUnavailable, Code: "MemoryBudgetExhausted", RetryAfter: 1,
			Message: "the sidecar holds as many request and view bytes as its memory allows (SIDECAR_MAX_INFLIGHT_VIEW_BYTES); retry in a moment"}
	}
	return errorf(http.StatusBadRequest, "BadRequest", "reading the %s: %v", what, err)
}
