// Package engine is what the push and pull engines share: the process's
// state (Core: the configuration, the bookkeeping store, the upstream
// parts, the metrics, the budgets, the client groups' turns, the poke bus,
// the writes seen under each view source and the current mapping), and
// the preamble every push and pull goes through before its own work
// (Core.Begin, which yields an Exchange; Fail and FailStore answer a
// refusal).
//
// # Contract
//
//   - New builds a Core and registers its metrics; it touches no database
//     and starts nothing. Migrate applies the schema's migrations and loads
//     the idempotency keys, and only then do pushes and pulls get past
//     Begin (before: 503 SIDECAR_STARTING).
//   - A Core is safe for concurrent use. Its exported fields are set by New
//     and never replaced. What moves is behind methods: the mapping
//     (UseMapping, Mapping; a request keeps the one it began with), the
//     idempotency keys (set by Migrate, read by Keys), and the serving
//     state (Drain, Draining, Migrated, NoteDatabase, DatabaseUp), which
//     package proxy's lifecycle moves and Begin reads.
//   - Begin decides, in this order and from the headers alone until the
//     last step: a cross-site page's request is refused, a draining or
//     unmigrated sidecar refuses, an open breaker of the kind the request
//     needs refuses, the caller is identified (identity.Edge), and only
//     then is the body read, bounded and charged to the caller's lease of
//     the budget. The Exchange's Mem is released by the engine when done.
//   - Locked is the only way an engine holds a client group: a turn in
//     this process (gate) first, then the group's row lock (store).
//   - A routed write reaches the pulls it concerns, in every replica, in
//     this order: once the API answered it, its view sources are marked
//     (MarkWrite); the count of routed changes moves (a push's mutation
//     with its settlement, in store; any other write by NoteChange, which
//     its caller calls first); then the poke (PokeFor, PokeForAt, Notify),
//     which moves nothing itself. Whose count moves follows whom the poke
//     reaches: under SIDECAR_POKE_SCOPE=user, a write that pokes only its
//     user's streams moves that user's count (ChangeFor, NoteChange's
//     users), which only that user's pulls read; any other write moves
//     everyone's, which every pull reads (store.ChangeCounts.For).
//
// Package proxy builds the Core and gives it to the engines, package push
// and package pull, and to its own handlers (poke streams, the invalidate
// hook, the pass-through's pokes). engine imports nothing of proxy, push
// or pull, and neither engine imports the other.
package engine
