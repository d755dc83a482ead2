// Package proxy is the sidecar: it builds the state the engines share
// (package engine), hands it to the push engine (package push), which
// turns Replicache mutations into a legacy REST API's calls, and to the
// pull engine (package pull), which builds client views from its GET
// endpoints; it serves the poke streams and the invalidate hook itself,
// routes every other request to the pass-through, and runs the lifecycle.
// Its parts live in packages below it; this package composes them.
//
// # Who owns what
//
//	proxy                the composition: routes and the admin handler
//	                     (sidecar.go), CORS and POST-only (edge.go), poke
//	                     streams, the invalidate hook and the pass-through's
//	                     pokes (pokes.go), one client group inspected
//	                     (inspect.go), start-up and shutdown (lifecycle.go)
//	proxy/engine         what the engines share: the Core (settings, store,
//	                     upstream parts, metrics, budgets, turns, the poke
//	                     bus, the mapping), built and migrated; the
//	                     preamble of every push and pull (Begin → Exchange)
//	proxy/push           the push engine: mutations → upstream calls
//	proxy/pull           the pull engine: GETs → a diff of the client view
//	proxy/config         every setting, read from SIDECAR_* and checked
//	proxy/identity       who is calling, decided once at the edge
//	proxy/verdict        what one upstream answer means, once per kind
//	proxy/upstream       one client and breaker per kind of upstream call
//	proxy/store          the bookkeeping in the sidecar's own Postgres schema
//	proxy/gate           a client group's turns before a database connection
//	proxy/budget         the process-wide budget of bytes in flight, fair by caller
//	proxy/body           a push's or pull's body: bounded, charged, paced
//	proxy/flight         pulls of one group sharing one fetch, and reads shared
//	                     between them
//	proxy/plan           per view source: read in full, by its changes, or not at all
//	proxy/poke           poke streams of this process, and pokes between replicas
//	proxy/lag            how long a change takes to reach the pulls it pokes
//	proxy/inspection     one client group as an operator sees it (GET /groups/{id})
//	proxy/metrics        the sidecar's own series and their label values
//	proxy/sse            poke streams written on their own connections, one
//	                     writer for all
//	proxy/passthrough    every other request, to the API and back
//	proxy/compress       gzip answers
//	proxy/mapping        the mapping file, loaded and compiled
//	proxy/problem        the errors clients see: status, code, message
//	proxy/tracing        W3C trace context and OTLP export
//	proxy/check          `replicache-sidecar check`
//	mutators, clientview the mapping's two halves: mutations → calls, GETs → entries
//
// # A push
//
// proxy routes it (sidecar.go: trace context, CORS, POST only, gzip) →
// engine.Core.Begin: refuse what a cross-site page could send; refuse
// while draining or before the schema is migrated; identity.Edge.Identify
// decides who is calling from the headers alone (trusted header, or the
// auth call with its verdict.Auth); only then is the body read (body:
// bounded by SIDECAR_MAX_BODY_BYTES, charged to the caller's lease of the
// budget, and cut off if it stops arriving). → push: ownership of the
// group and of every client is checked before anything is applied;
// consecutive mutations of one client are prepared (args bounded, the
// call rendered by mutators, the idempotency key computed), then, waiting
// for the group's turn in gate and holding its row lock in store
// (Core.Locked), each is rendered again if it names a temporary id the
// group has recorded a server id for, sent (upstream, admitted by the
// mutation breaker; once answered, the write's view sources are marked:
// engine.Core.MarkWrite, plan), judged (verdict.Mutation: applied,
// consumed as rejected, or pending, and whether the answer is evidence
// that the API is down or counts toward giving up) and settled in the
// same transaction, with the server id an applied create's answer holds
// (the settlement moves the count of routed changes). → the clients that
// may see the effects are poked (engine.Core.PokeFor: poke, in every
// replica) → push answers its counts.
//
// # A pull
//
// proxy routes it → engine.Core.Begin, as for a push, and the view
// breaker must not be open → pull: join a running fetch of the same group,
// user and credentials (flight) that began after every change routed so
// far that may poke the user (store's counts of routed changes: everyone's
// and the user's own), or lead one: holding the group's
// lock, read every client's last mutation id and each source's state in
// the group's record (store), and decide per source (plan, from that
// state and the writes this replica has seen): read it in full, read only
// what changed since its watermark (its `changes`), or not at all
// (`maxAge`, `shared`). Fetch the view that way (clientview, through
// upstream, admitted by the view breaker as one unit of work: every page
// of every source read, or nothing; the replica's copy of shared sources
// added, and a deletion a partial read cannot prove confirmed), seal the
// flight, compare the view with the group's record (store: a source not
// read in full keeps its entries), and issue every merged pull's cookie
// with the record's change and the sources' new states in one round trip.
// → after the commit each pull is answered: a diff from its cookie's
// version of the record, or a reset, gzipped when asked (compress), a
// large reset streamed as the view arrives. A failed fetch is answered
// from verdict.View.
//
// # Rules
//
//   - Data flows one way: cmd → proxy → its subpackages, mutators and
//     clientview. No subpackage of proxy imports proxy, except proxy/check,
//     for Config; check builds its upstream parts with the server's own
//     constructor (engine.NewParts). The engines (push, pull) import
//     engine and the leaves, never each other; engine imports only leaves.
//     mutators and clientview import nothing of the sidecar but the
//     shared JSON walker (clientview/jsonwalk).
//   - Within this package a file uses only names of files on lower floors:
//     edge, inspect and pokes, then sidecar (Sidecar composes them), then
//     lifecycle (runs it).
//   - Who the caller is is decided only at the identity edge, and every
//     fairness rule is keyed on identity.Caller.Key (the user, else the
//     client's address), never on a client group or client id.
//   - Each kind of upstream answer is judged in exactly one function
//     (verdict.Mutation, verdict.View, verdict.Auth); breakers, metrics, the
//     give-up valve, the client's answer and check read the verdict.
//   - Errors lose nothing: a mutation is consumed only when the API said
//     the mutation itself is done or wrong.
//   - A shared dependency (the sidecar's database, a breaker, a budget) may
//     make push and pull answer 503; it never fails the pass-through.
//   - Every label value of a metric comes from a constant set (proxy/metrics,
//     verdict.MutationLabels, problem.Codes) or the mapping's mutator names.
package proxy
