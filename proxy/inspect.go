package proxy

import (
	"context"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/inspection"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// What an operator can see of one client group when a user says "my edit
// vanished": the group inspected on the admin listener (GET /groups/{id},
// and `replicache-sidecar inspect`), and the change lag histogram
// (replicache_sidecar_change_lag_seconds, package lag). The push and pull
// engines each make one call here: Settle records a mutation's event
// itself (store), a pull notes its answers (notePulls, in pullanswer.go)
// and reports its completion (answered).

// streamGroup is the client group a poke stream names (its clientGroupID
// query parameter; "" when none): its streams are counted for the group,
// and the lag of the changes that poke it is measured. Validated as a
// push's or pull's: a bad one answers 400.
func streamGroup(r *http.Request) (string, *problem.Error) {
	q := r.URL.Query()
	if !q.Has("clientGroupID") {
		return "", nil
	}
	group := q.Get("clientGroupID")
	if p := validID("clientGroupID", group); p != nil {
		return "", p
	}
	return group, nil
}

// inspectTimeout bounds the database's part of an inspection: it counts
// the group's record, which is large for a large view.
const inspectTimeout = 10 * time.Second

// handleInspect answers GET /groups/{id} on the admin listener: the group's
// inspection.Group, 404 for a group the sidecar does not know.
func (s *core) handleInspect(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if p := validID("the client group id", id); p != nil {
		problem.Write(w, p)
		return
	}
	if p := s.checkServing(); p != nil && p.Code != problem.ShuttingDown {
		problem.Write(w, p)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), inspectTimeout)
	defer cancel()
	st, err := s.store.Inspect(ctx, id)
	switch {
	case errors.Is(err, store.ErrNoGroup):
		problem.Write(w, problem.Errorf(http.StatusNotFound, problem.NotFound,
			"no client group %q: the sidecar has never seen it, or it was deleted long enough ago that its tombstone is gone too", id))
		return
	case err != nil:
		s.log.Warn("inspecting a client group failed", "group", id, "error", err)
		problem.Write(w, problem.Unavailable(problem.DatabaseUnavailable, dbProbeEvery, "reading the group from the sidecar's database failed; retry"))
		return
	}
	src := s.mapping().Sources
	host, _ := os.Hostname()
	problem.WriteJSON(w, http.StatusOK, inspection.Build(st, src, inspection.Streams{Replica: host, Open: s.lag.Streams(st.ID, st.User)}, s.cfg.MaxHistoryPerGroup))
}
