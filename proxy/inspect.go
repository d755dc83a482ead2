package proxy

import (
	"context"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/inspection"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// What an operator can see of one client group when a user says "my edit
// vanished": the group inspected on the admin listener (GET /groups/{id},
// and `replicache-sidecar inspect`), and the change lag histogram
// (replicache_sidecar_change_lag_seconds, package lag). The push and pull
// engines write it themselves: Settle records a mutation's event
// (store), a pull notes its answers and reports its completion
// (package pull).

// inspectTimeout bounds the database's part of an inspection: it counts
// the group's record, which is large for a large view.
const inspectTimeout = 10 * time.Second

// handleInspect answers GET /groups/{id} on the admin listener: the group's
// inspection.Group, 404 for a group the sidecar does not know.
// inspector serves GET /groups/{id} on the admin listener.
type inspector struct{ *engine.Core }

func (s inspector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if p := engine.ValidID("the client group id", id); p != nil {
		problem.Write(w, p)
		return
	}
	if p := s.CheckServing(); p != nil && p.Code != problem.ShuttingDown {
		problem.Write(w, p)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), inspectTimeout)
	defer cancel()
	st, err := s.Store.Inspect(ctx, id)
	switch {
	case errors.Is(err, store.ErrNoGroup):
		problem.Write(w, problem.Errorf(http.StatusNotFound, problem.NotFound,
			"no client group %q: the sidecar has never seen it, or it was deleted long enough ago that its tombstone is gone too", id))
		return
	case err != nil:
		s.Log.Warn("inspecting a client group failed", "group", id, "error", err)
		problem.Write(w, problem.Unavailable(problem.DatabaseUnavailable, engine.DBProbeEvery, "reading the group from the sidecar's database failed; retry"))
		return
	}
	src := s.Mapping().Sources
	host, _ := os.Hostname()
	problem.WriteJSON(w, http.StatusOK, inspection.Build(st, src, inspection.Streams{Replica: host, Open: s.Lag.Streams(st.ID, st.User)}, s.Cfg.MaxHistoryPerGroup))
}
