package engine

import (
	"context"
	"log/slog"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
)

// Notify pokes the subscribers of users (none: everyone), in every replica,
// at once: for the invalidate hook, which is the legacy service's own voice
// (it holds a secret) and so is not paced.
func (s *Core) Notify(log *slog.Logger, source string, users []string) {
	s.Metrics.PokeNotifications.WithLabelValues(source).Inc()
	log.Debug("poke", "source", source, "users", users)
	s.Bus.Publish(users)
}

// NoteChange moves the count of routed changes (store.NoteChange) for a
// write the API has answered whose poke reaches users (nil: everyone, as
// Notify and PokeUsers say), before its poke goes out, so that a pull the
// poke causes, through any replica, does not ride on a fetch that began
// before the write (see pull.Engine). Under SIDECAR_POKE_SCOPE=user it
// moves only those users' counts, which pulls of other users do not read;
// otherwise everyone's (the poke scope decides whose count, as ChangeFor
// does for a push's mutations, which move it with their settlement). A
// failure is logged and the poke still goes out: a pull it causes may
// then ride on such a fetch, as one poked by another replica could before
// the count existed.
func (s *Core) NoteChange(users []string) {
	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	defer cancel()
	var counted []string // everyone's
	if s.Cfg.PokeScope == "user" {
		counted = users
	}
	if err := s.Store.NoteChange(ctx, counted...); err != nil && s.Once.Due("changes", time.Minute) {
		s.Log.Warn("noting a routed change in the database failed; a pull its poke causes may ride on an older fetch of its group", "error", err)
	}
}

// ChangeFor is whose count of routed changes a write by user moves
// (store.Settlement.ChangeFor): under SIDECAR_POKE_SCOPE=user the user's
// own, the only streams its poke reaches (PokeUsers); otherwise, or when
// the user is not known, everyone's ("").
func (s *Core) ChangeFor(user string) string {
	if s.Cfg.PokeScope != "user" {
		return ""
	}
	return user
}

// PokeFor pokes, in every replica, whom a write by c concerns under
// SIDECAR_POKE_SCOPE, paced by c's key: one caller's pokes go out at most
// once per SIDECAR_POKE_CALLER_INTERVAL, merged, and none is lost. ok is
// false when nobody is to be poked (see PokeUsers).
func (s *Core) PokeFor(log *slog.Logger, source string, c identity.Caller) (ok bool) {
	return s.PokeForAt(log, source, c, time.Now())
}

// PokeForAt is PokeFor for a write that happened at at (for the change
// lag).
func (s *Core) PokeForAt(log *slog.Logger, source string, c identity.Caller, at time.Time) (ok bool) {
	users, ok := s.PokeUsers(c.User)
	if !ok {
		return false
	}
	s.Metrics.PokeNotifications.WithLabelValues(source).Inc()
	log.Debug("poke", "source", source, "users", users, "caller", c.Key())
	s.Bus.PublishFor(c.Key(), users, at)
	return true
}

// PokeUsers is whom a write by user pokes under SIDECAR_POKE_SCOPE: every
// subscriber (nil), or the user's own streams. ok is false when nobody is
// to be poked: under scope user, a write whose user is unknown (a
// pass-through write without a trusted identity).
func (s *Core) PokeUsers(user string) (users []string, ok bool) {
	if s.Cfg.PokeScope != "user" {
		return nil, true
	}
	if user == "" {
		return nil, false
	}
	return []string{user}, true
}
