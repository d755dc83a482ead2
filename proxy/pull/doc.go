// Package pull is the pull engine: Engine serves Replicache pulls with the
// client view read from the API's GET endpoints, answered as a diff
// against the group's durable record.
//
// A pull (pull.go): Begin (package engine; the view breaker must not be
// open) → join a running fetch of the same group, user and credentials
// (package flight) that began after every change routed so far, or lead
// one → holding the group's lock: read every client's last mutation id and
// each source's state in the group's record, plan each source (package
// plan: read in full, by its changes, or not at all), fetch the view that
// way (package clientview; view.go adds the replica's copy of shared
// sources and confirms what a partial read cannot prove), seal the flight,
// compare the view with the record, and issue every merged pull's cookie
// with the record's change in one round trip → after the commit, answer
// each pull (answer.go): a diff from its cookie's version of the record,
// or a reset. A large reset goes out as the view arrives (stream.go).
//
// # Contract
//
//   - Never a partial view: every page of every source is read, or the
//     pull fails (verdict.View says how) and the record is unchanged.
//   - A cookie only grows, and an answer is never older than any change
//     routed before the pull began: a rider is answered from the leader's
//     fetch only when the count of routed changes proves it (leading.seal):
//     the count of the pull's user, which every write that may poke that
//     user moves (store.ChangeCounts.For). The same holds for a shared
//     source: the replica's copy, or a read of it under way, is used only
//     when it began after every write seen under the source (view.go).
//   - A leader whose client left still fetches and commits (riders may
//     wait for it), and its answer goes nowhere; a rider whose client left
//     ends as one, answered nothing.
//
// Engine is safe for concurrent use; StreamAfter is set before it serves.
package pull
