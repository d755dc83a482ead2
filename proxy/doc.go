// Package proxy is the sidecar's HTTP surface: the Replicache push and pull
// handlers, the pass-through to the legacy service, and the admin endpoints
// (health, readiness, metrics). Its parts live below it: store (the
// Postgres bookkeeping), upstream (one client per kind of upstream call,
// the circuit breaker) and proxytest (what the tests share).
//
// A push: begin (read and check the body, check the sidecar serves, identify
// the caller) → for each mutation in order, in its own transaction holding
// the client group's lock: skip it if already processed, render it with
// mutators, call the upstream with its idempotency key, advance the client's
// lastMutationID (or stop, leaving it pending, on a transient failure) →
// answer the counts.
//
// A pull: begin → in one transaction holding the group's lock: read every
// client's lastMutationID, fetch the view with clientview (every page of
// every source, or nothing), issue the next cookie order → encode the reset
// patch after the transaction has committed.
package proxy
