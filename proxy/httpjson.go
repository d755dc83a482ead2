package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

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

// decodeBody reads at most limit bytes of JSON into dst. It refuses trailing
// data after the value, and names the problem in the returned error.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, dst any) *httpError {
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(r.Body)
	err := dec.Decode(dst)
	var tooBig *http.MaxBytesError
	if err == nil {
		_, terr := dec.Token()
		switch {
		case terr == io.EOF:
			return nil
		case errors.As(terr, &tooBig):
			err = terr
		default:
			return errorf(http.StatusBadRequest, "BadRequest", "unexpected data after the JSON value")
		}
	}
	var netErr net.Error
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		return errorf(http.StatusRequestTimeout, "RequestTimeout", "the request body did not arrive in time (SIDECAR_HTTP_READ_TIMEOUT)")
	case errors.As(err, &tooBig):
		return errorf(http.StatusRequestEntityTooLarge, "PayloadTooLarge", "request body is larger than %d bytes (SIDECAR_MAX_BODY_BYTES)", limit)
	case errors.As(err, &syntax):
		return errorf(http.StatusBadRequest, "BadRequest", "malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typeErr):
		return errorf(http.StatusBadRequest, "BadRequest", "field %q: JSON %s where %s was expected", typeErr.Field, typeErr.Value, typeErr.Type)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "BadRequest", "empty request body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "BadRequest", "truncated JSON body")
	default:
		return errorf(http.StatusBadRequest, "BadRequest", "reading request body: %v", err)
	}
}
