// Package push is the push engine: Engine serves Replicache pushes by
// applying each mutation through the upstream call its mapping names.
//
// A push (push.go): Begin (package engine) → ownership of the group and
// of every client checked before anything is applied → the mutations in
// order, a client's consecutive ones in one transaction holding the
// group's lock (at most MaxBatch, or batchWindow), each one prepared,
// sent, judged and settled (mutation.go) → rejection records trimmed →
// the clients that may see the effects poked → the counts answered.
//
// # Contract
//
//   - A mutation is consumed (its client's last mutation id moves past
//     it) only when the API said the mutation itself is done (applied) or
//     wrong (rejected, recorded for the client), or the give-up valve
//     closed it; a transient failure leaves it pending for the client's
//     next push, with an attempt counted. Never lost, never doubled: the
//     idempotency key (mutators.IdempotencyKey) is the same for every
//     retry, across replicas and releases, and through a rotation of its
//     secret.
//   - The upstream answer is judged by verdict.Mutation alone; the
//     breaker's evidence, the metrics, the give-up valve and the client's
//     answer read that verdict.
//   - A push stops early, answering what it did, when its time budget
//     (SIDECAR_PUSH_TIME_BUDGET) is spent, the sidecar drains or the
//     budget pre-empts it, and at a mutation left pending: what is
//     committed stays committed, the client pushes the rest next time.
//
// Engine is safe for concurrent use.
package push
