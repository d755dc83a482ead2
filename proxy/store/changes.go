package store

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// The routed changes count the writes the sidecar routed to the API, in
// the database every replica shares, so that a pull can tell whether a
// running fetch may have begun before a change it was poked for, whoever
// routed the change and whatever the replicas' notifications have
// delivered. The order that makes it work, for every write that pokes:
// the API answered the write, then the count moved (NoteChange, or with a
// settled mutation), then the poke went out, then the poked client pulled
// and read the count (ChangeCounts). A fetch that read a count at least as
// large before it began therefore began after the API had the write.
//
// There is a count per poke scope: everyone's (routed_changes), moved by a
// write that pokes everyone (or whose scope is not known), and a user's,
// moved by a write that pokes only that user's streams. A pull of user u
// reads everyone's count plus u's (ChangeCounts.For), so it sees every
// write that may poke it, and none that pokes only other users. A user's
// count is one of changeBuckets sequences (routed_changes_0 …), chosen by
// a hash of the user id: users sharing one only see each other's writes,
// which costs a fetch, never a wrong answer. A sum of counts that only
// grow only grows, and strictly when one of them moved: the reads of one
// sum need not be atomic (a leader's read that straddles a move counts
// the move only if its fetch began after it).

// changeBuckets is how many sequences users' counts are spread over. It
// is part of the schema (migration 19 made them) and, with changeBucket,
// of every release that reads them: changing either needs new sequences.
const changeBuckets = 16

// changeBucket is the bucket of user's count (FNV-1a, 32 bits).
func changeBucket(user string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(user))
	return int(h.Sum32() % changeBuckets)
}

// changeCountsSQL reads every count, everyone's first: each sequence's
// last value, 0 before its first.
var changeCountsSQL = func() string {
	read := func(seq string) string {
		return `(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.` + seq + `)`
	}
	var b strings.Builder
	b.WriteString(`SELECT ARRAY[` + read("routed_changes"))
	for i := range changeBuckets {
		b.WriteString(", " + read("routed_changes_"+strconv.Itoa(i)))
	}
	b.WriteString(`]::bigint[]`)
	return b.String()
}()

// noteChangeSQL moves the counts named by $1, qualified sequence names.
const noteChangeSQL = `SELECT nextval(n::regclass) FROM unnest($1::text[]) AS n`

// ChangeCounts is every count of routed changes, as read at one time.
type ChangeCounts struct {
	all   int64                // everyone's
	users [changeBuckets]int64 // users', by bucket
}

// For is the count a pull of user compares: everyone's, plus user's own
// unless user is "" (a caller without a user is poked only by writes that
// poke everyone).
func (c ChangeCounts) For(user string) int64 {
	if user == "" {
		return c.all
	}
	return c.all + c.users[changeBucket(user)]
}

func (c *ChangeCounts) scan(ns []int64) error {
	if len(ns) != 1+changeBuckets {
		return fmt.Errorf("read %d counts, want %d", len(ns), 1+changeBuckets)
	}
	c.all = ns[0]
	copy(c.users[:], ns[1:])
	return nil
}

// ChangeCounts reads the counts of routed changes, on a pooled connection
// of its own (one round trip, no lock): for pulls that rode on another's
// fetch, in reads they share.
func (s *Store) ChangeCounts(ctx context.Context) (ChangeCounts, error) {
	var ns []int64
	var c ChangeCounts
	err := s.pool.QueryRow(ctx, s.sql(changeCountsSQL)).Scan(&ns)
	if err == nil {
		err = c.scan(ns)
	}
	if err != nil {
		return ChangeCounts{}, fmt.Errorf("reading the routed changes: %w", err)
	}
	return c, nil
}

// NoteChange moves the counts of routed changes of users, or everyone's
// when there are none (or one is ""): for a write the API has answered, before the
// clients it concerns are poked (the pass-through's, the invalidate
// hook's; a settled mutation moves it with its transaction, see consume).
// Name users only when the write's poke reaches their streams alone. Not
// transactional: it holds no lock.
func (s *Store) NoteChange(ctx context.Context, users ...string) error {
	if _, err := s.pool.Exec(ctx, s.sql(noteChangeSQL), s.changeSequences(users)); err != nil {
		return fmt.Errorf("noting a routed change: %w", err)
	}
	return nil
}

// changeSequences names the sequences of users' counts, each once:
// everyone's when there are none or one is "" (For("") reads only
// everyone's).
func (s *Store) changeSequences(users []string) []string {
	if len(users) == 0 || slices.Contains(users, "") {
		return []string{s.schema + ".routed_changes"}
	}
	buckets := make([]int, 0, len(users))
	for _, u := range users {
		buckets = append(buckets, changeBucket(u))
	}
	slices.Sort(buckets)
	buckets = slices.Compact(buckets)
	out := make([]string, len(buckets))
	for i, b := range buckets {
		out[i] = s.schema + ".routed_changes_" + strconv.Itoa(b)
	}
	return out
}

// ChangeCounts returns the counts of routed changes as SourceStates read
// them in this transaction, or reads them now (one round trip): for the
// pull that leads a fetch, before the fetch begins.
func (g *GroupTx) ChangeCounts(ctx context.Context) (ChangeCounts, error) {
	if g.changesRead {
		return g.changes, nil
	}
	c, err := g.ChangeCountsNow(ctx)
	if err != nil {
		return ChangeCounts{}, err
	}
	g.changes, g.changesRead = c, true
	return c, nil
}

// noteChange holds the statement that moves the count of routed changes
// of user ("": everyone's) until the transaction's next statement or
// COMMIT, which come after the API answered the mutation being settled
// and before its push pokes anyone. One is held per count: a later
// settlement's replaces it, and runs after every call the transaction
// made. It moves the count even if the transaction then rolls back (a
// sequence is not transactional): a count moved for nothing only makes a
// pull fetch on its own.
func (g *GroupTx) noteChange(user string) {
	var users []string
	if user != "" {
		users = []string{user}
	}
	seqs := g.s.changeSequences(users)
	g.dtx.hold("routed_changes\x00"+seqs[0], g.s.sql(noteChangeSQL), []any{seqs}, func(_ pgconn.CommandTag, err error) error {
		if err != nil {
			return fmt.Errorf("noting a routed change: %w", err)
		}
		return nil
	})
}

// ChangeCountsNow reads the counts of routed changes now, in this
// transaction's connection (one round trip; a sequence is read as it is,
// not as the transaction's snapshot saw it): for the pull that leads a
// fetch, once it has sealed its flight.
func (g *GroupTx) ChangeCountsNow(ctx context.Context) (ChangeCounts, error) {
	var ns []int64
	var c ChangeCounts
	err := g.tx.QueryRow(ctx, g.s.sql(changeCountsSQL)).Scan(&ns)
	if err == nil {
		err = c.scan(ns)
	}
	if err != nil {
		return ChangeCounts{}, fmt.Errorf("reading the routed changes: %w", err)
	}
	return c, nil
}
