// Package store keeps the sidecar's Replicache bookkeeping in its own
// Postgres schema: client groups (owner, last cookie order, deletion, view
// record), clients (group, last mutation id, the keys of a secret
// rotation), rejected mutations, the answered retryable attempts of
// pending mutations (for the give-up valve), the ids the API chose for
// what clients created under temporary ids, who holds which view record
// (for its cap), and each group's recent history (for operators). It
// imports pgx and nothing of the sidecar's; the engines (proxy/engine,
// proxy/push, proxy/pull) and package proxy's handlers are its only users.
//
// # Contract
//
//   - New and NewPool only build; nothing touches the database until a call.
//     Migrate creates the schema and applies every pending migration, each
//     in its own transaction, under an advisory lock, so replicas starting
//     together take turns. A database migrated further than this binary
//     knows is accepted (rolling deploys), so a release only expands the
//     schema: a migration adds tables, nullable or defaulted columns,
//     indexes on new tables and functions; it never changes a type, drops,
//     renames, truncates or tightens anything, and no query selects "*",
//     so the previous release keeps working on the migrated schema, its
//     prepared statements included; and it is cheap on a large table (no
//     rewrite, no index built on an existing table, a table lock waited
//     for at most a few seconds, or Migrate fails and is retried).
//     Contracting is a later release's step, once no running release reads
//     what it drops: it is listed in contracts with the oldest release that
//     may still run, and raises the database's floor, so Ready and Migrate
//     of an older binary fail with ErrSchemaContracted instead of it
//     serving on a schema it cannot read. TestMigrationsAreExpandOnly
//     checks every migration after 8 on the database and in its text;
//     migration 8 predates the rule and broke it (column types: issue
//     #26). Ready reports whether the database answers, holds every
//     migration this binary needs and is not contracted past it.
//   - Locked and LockedClient run a callback in a READ COMMITTED transaction
//     holding the client group's row lock (SELECT … FOR UPDATE), creating the
//     group for its user if it is new. Every push step and every pull of one
//     group is serialized by that lock, across processes: it is the only
//     coordination between replicas, so everything here is safe for any
//     number of them sharing one database.
//   - Lock order: one group per transaction, its row first; client rows and
//     rejections are only touched under their group's lock. No transaction
//     ever holds two groups' locks, so groups cannot deadlock each other.
//   - Contexts: the caller's ctx bounds the wait for a pooled connection and
//     for the lock (and Options.WaitTimeout bounds both whatever ctx says;
//     the pool's lock_timeout ends a lock wait with an error IsLockTimeout
//     recognises). The callback's work may use a context detached from ctx:
//     a push step has called the upstream and must record the outcome even
//     if the client went away. If the callback returns nil the transaction
//     commits with a context that ignores ctx's cancellation (bounded by its
//     own timeout); otherwise it rolls back and Locked returns the
//     callback's error unchanged, so errors.Is/As work on it.
//   - Ownership: a group belongs to the user who first locked it
//     (ErrGroupForbidden), a client to the group it first appeared in
//     (ErrClientForbidden), and a deleted group stays deleted
//     (ErrGroupDeleted). These are checked under the lock and roll back,
//     with one exception: SetLastMutationID's deferred check, when it
//     fails at COMMIT, reports ErrClientForbidden although the COMMIT, sent
//     in the same round trip, has committed the transaction's other writes
//     (Settle's check aborts the transaction instead).
//   - Clients: a client's row is created when one of its mutations is
//     processed (ClaimClient, before the upstream call), never by a refused
//     push. CheckClients and ClaimClient keep a group within its client cap
//     by pruning clients idle for over a day, never the clients of the push
//     making room (their mutations may be in it). TrimRejections keeps a
//     group's rejection records within a count and an age.
//   - Settling a mutation: Settle records what one upstream answer came to
//     in one store call. Consumed (Applied, Rejected): the last mutation id
//     advances, the attempts of the mutations it consumes are forgotten and
//     a rejection is recorded, in one statement deferred to the
//     transaction's next statement or COMMIT. Pending: the answered attempt
//     is recorded, counted toward giving up only when the failure is the
//     mutation's own (an uncounted one is kept for operators, its status
//     and time); the count survives restarts and is shared by replicas
//     once its transaction commits. SetLastMutationID, RecordAttempt and
//     RecordRejection do the same in separate calls (a rejection takes a
//     round trip more); they remain until their callers use Settle.
//   - Routed changes: counts of the writes the sidecar routed, per poke
//     scope: everyone's, and each user's (one of a fixed set of sequences,
//     by a hash of the user id: a collision costs a pull a fetch, never a
//     wrong answer). NoteChange moves the counts of the users named (none,
//     or a user "": everyone's); a consumed settlement moves its
//     ChangeFor's with the transaction's next statement or COMMIT. Reads
//     take every count at once (ChangeCounts; GroupTx.ChangeCounts, read
//     with SourceStates; GroupTx.ChangeCountsNow), and ChangeCounts.For(u)
//     is what a pull of u compares: everyone's plus u's, which only grows,
//     and grows with every change noted for u or for everyone. Sequences:
//     not transactional, no lock (a rolled-back settlement's move stays).
//   - Server ids: RecordServerID notes, deferred like Settle's consumed
//     outcomes, the id the API chose for a temporary id of the group; the
//     first record of a temporary id stands. ServerIDs reads those of a
//     list of temporary ids, as the transaction sees them. The records
//     (server_ids, keyed by group, then temporary id) go with their group.
//   - Cookies: NextCookieOrder issues an order strictly greater than the
//     request's and every order the group was issued before; a rolled-back
//     pull issues nothing. IssueCookies lets a pull holding the group's
//     current cookie keep it when nothing its clients hold changed since
//     (the record, and the last mutation ids, noted as a hash with every
//     order issued): such a pull writes no row of the group, but for the
//     group's last use, once per Options.TouchInterval. GroupTx.Epoch names
//     the database (made at its first migration, read with the lock);
//     cookies carry it.
//   - View records: CompareView reads the group's record (key → value hash
//     and the version it last changed at; removed keys as tombstones) and
//     compares a fetched view with it, writing nothing; IssueCookies writes
//     the change (only the keys that changed, a new version) with the
//     cookies, in one round trip. An unchanged view writes nothing to the
//     record. Each version has a random tag (view_versions), kept for
//     Options.RecordVersions versions. A change Covers a (version, tag)
//     from which a diff is complete: removals are kept as long and at most
//     max(1024, live keys) of them, and forgetting one raises MinVersion.
//     Foreign reports a version of the group's record that this database
//     issued differently or never (a restore from a backup). Records are
//     capped per holder (the caller's fairness key, HoldRecord): a pull
//     that makes a group one more of its holder's records says so
//     (HeldAnew), and EvictRecords, after the commit, evicts the records of
//     the holder's least recently used groups beyond the cap: their rows
//     and tags go, the group keeps its record id and version numbers (and
//     everything else) and is marked (ViewRecord.Evicted), so a cookie of
//     it is neither Foreign nor Covered: a reset. ViewPages
//     remembers, per source page, its validators and what it produced, for
//     conditional GETs; written only when a page's answer changes.
//   - The record cache (Options.RecordCacheBytes) relies on one rule:
//     nothing changes a group's view_entries without writing a new version
//     with a new random tag. (record id, version, tag) then names one state
//     of a record for good, and a cached record is used only when all three
//     match the database's.
//   - Idempotency secret rotation: a consumed mutation records which
//     secret the consuming replica keys new mutations with
//     (Settlement.KeySecret); PreviousKeysThrough works out, from that and
//     the committed last mutation id, which of a client's mutations may
//     have gone out keyed with the previous secret, and records the mark
//     with the transaction.
//   - History: each settlement, and each pull noted (NotePulls) that
//     changed what its client holds, is an event of the group's history
//     (group_history), written with the transaction's COMMIT or its
//     cookies' batch (never a round trip of its own) and trimmed to
//     Options.HistoryPerGroup by the statement that adds to it. Inspect
//     reads a group (its clients, pending attempts, record size, sources,
//     rejections and history) in one read-only snapshot, without the
//     group's lock.
//   - A GroupTx is valid only inside its callback and not safe for
//     concurrent use.
//
// # Queries and groups
//
// Every query on the push and pull path is keyed by the client group: look
// it up, lock it, read or write its clients, rejections, server ids, view
// record and remembered pages (the primary keys of view_entries,
// view_versions, view_pages and server_ids start with client_group_id). None joins or aggregates across
// groups, so the tables could later be distributed by client_group_id. One
// table is keyed by something else, and distributed by it: the holders of
// view records (view_record_holders, keyed by holder, then group); the
// pull path reads only its own holder's rows from it (EvictRecords: count
// and least recently used), then evicts each victim by its group id, in a
// transaction of its own. The only cross-group statements are the
// migrations, Ready (reads schema_migrations and settings), the pool
// statistics and RecordStorageBytes, which read no table, and the sweeps,
// one replica at a time and off the request path: SweepRejections (expired
// records of idle groups, in bounded batches), SweepGroups (picks idle
// groups through an index on last_used_at, then deletes each in its own
// transaction keyed by the group; expires tombstones in batches) and
// SweepRecords (holders over the cap, and notes of deleted groups).
package store
