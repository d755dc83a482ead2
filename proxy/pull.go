package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// pullRequest is a Replicache PullRequest (v1).
type pullRequest struct {
	PullVersion   *int            `json:"pullVersion"`
	ProfileID     string          `json:"profileID"`
	ClientGroupID string          `json:"clientGroupID"`
	Cookie        json.RawMessage `json:"cookie"`
	SchemaVersion string          `json:"schemaVersion"`
}

// viewFetcher fetches the client view from the upstream.
type viewFetcher interface {
	Fetch(ctx context.Context, v *clientview.View, r clientview.Request) ([]clientview.Entry, error)
}

func (s *Sidecar) handlePull(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx := r.Context()
	requestID := replicacheRequestID(r)
	log := s.log.With("endpoint", "pull", "request_id", requestID)

	var req pullRequest
	if herr := decodeBody(w, r, s.cfg.MaxBodyBytes, &req); herr != nil {
		s.fail(w, log, herr)
		return
	}
	if req.PullVersion == nil {
		s.fail(w, log, errorf(http.StatusBadRequest, "BadRequest", "pullVersion is required"))
		return
	}
	if *req.PullVersion != 1 {
		writeVersionNotSupported(w, "pull")
		return
	}
	if herr := validID("clientGroupID", req.ClientGroupID); herr != nil {
		s.fail(w, log, herr)
		return
	}
	reqOrder, err := store.ParseCookieOrder(req.Cookie)
	if err != nil {
		s.fail(w, log, errorf(http.StatusBadRequest, "BadRequest", "%v", err))
		return
	}
	log = log.With("client_group", req.ClientGroupID)
	if herr := s.checkServing(ctx); herr != nil {
		s.fail(w, log, herr)
		return
	}
	if herr := s.breakerOpen(); herr != nil {
		s.fail(w, log, herr)
		return
	}
	fwd := forwardHeaders(r, s.cfg.ForwardHeaders)
	userID, herr := s.auth.identify(ctx, r, fwd, requestID)
	if herr != nil {
		s.fail(w, log, herr)
		return
	}

	mapping := s.mapping()
	var (
		lmids   map[string]int64
		entries []clientview.Entry
		order   int64
	)
	// The view is fetched while holding the group's lock, so no push of this
	// group commits in between: the patch holds the effects of exactly the
	// mutations that lmids reports.
	err = s.store.Locked(ctx, req.ClientGroupID, userID, func(g *store.GroupTx) error {
		var err error
		if lmids, err = g.LastMutationIDs(ctx); err != nil {
			return err
		}
		entries, err = s.fetcher.Fetch(withKind(ctx, kindView), mapping.View, clientview.Request{UserID: userID, Header: fwd, RequestID: requestID})
		if err != nil {
			return err
		}
		order, err = g.NextCookieOrder(ctx, reqOrder)
		return err
	})
	if err != nil {
		var se *clientview.SourceError
		if errors.Is(err, errCircuitOpen) {
			s.fail(w, log, &httpError{Status: http.StatusServiceUnavailable, Code: "UpstreamUnavailable",
				Message: "the upstream service is failing; calls are suspended for a moment", RetryAfter: s.retryAfterSeconds()})
			return
		}
		if errors.As(err, &se) {
			var status *clientview.StatusError
			var urlErr *url.Error
			if !errors.As(err, &status) && !errors.As(err, &urlErr) {
				s.metrics.upstreamErrors.WithLabelValues(kindView, "bad_response").Inc()
			}
			s.fail(w, log, &httpError{Status: http.StatusBadGateway, Code: "BadGateway", Message: se.Error(),
				Detail: map[string]any{"source": se.Source, "reason": se.Reason}})
			return
		}
		s.failStore(w, log, err, req.ClientGroupID)
		return
	}
	body := encodePullResponse(order, lmids, entries)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	s.metrics.pullEntries.Observe(float64(len(entries)))
	s.metrics.pullBytes.Observe(float64(len(body)))
	log.Info("pull", "entries", len(entries), "clients", len(lmids), "bytes", len(body), "cookie", order, "duration", time.Since(start))
}

// encodePullResponse writes the reset-strategy PullResponse by hand: entry
// values are already compact JSON and are copied, not re-encoded.
func encodePullResponse(order int64, lmids map[string]int64, entries []clientview.Entry) []byte {
	size := 96 + 48*len(lmids)
	for _, e := range entries {
		size += len(e.Key) + len(e.Value) + 32
	}
	b := bytes.NewBuffer(make([]byte, 0, size))
	b.WriteString(`{"cookie":{"order":`)
	b.WriteString(strconv.FormatInt(order, 10))
	b.WriteString(`},"lastMutationIDChanges":{`)
	ids := make([]string, 0, len(lmids))
	for id := range lmids {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(b, id)
		b.WriteByte(':')
		b.WriteString(strconv.FormatInt(lmids[id], 10))
	}
	b.WriteString(`},"patch":[{"op":"clear"}`)
	for _, e := range entries {
		b.WriteString(`,{"op":"put","key":`)
		writeJSONString(b, e.Key)
		b.WriteString(`,"value":`)
		b.Write(e.Value)
		b.WriteByte('}')
	}
	b.WriteString("]}")
	return b.Bytes()
}

func writeJSONString(b *bytes.Buffer, s string) {
	q, _ := json.Marshal(s) // a string always encodes
	b.Write(q)
}
