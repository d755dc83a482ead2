// Package clientview builds a Replicache client view from a legacy API's own
// GET endpoints, following the "clientView" section of a mapping file: each
// source is a path whose answer (following its pagination) holds items, and
// each item becomes one entry, keyed by a template over its fields. It
// imports nothing of the sidecar's but its JSON walker, clientview/jsonwalk;
// the sidecar's pull engine (proxy/pull, through the Fetcher proxy/engine
// builds) and proxy/check are its users.
//
// # Contract
//
//   - Compile checks every source and reports every problem in one joined
//     error. A View is immutable but for one flag per source noting that a
//     warning was logged (once per compiled mapping); a View and a Fetcher
//     are safe for concurrent use, and a Fetcher keeps nothing from one
//     fetch to the next.
//   - Never a partial view: Fetch and FetchResult return every entry of
//     every source, in source order then item order, or an error and no
//     entries. Under the Reset Strategy a view cut short deletes on the
//     client every entity it lacks, so whatever could cut it fails the
//     fetch instead: a non-2xx answer (*StatusError; redirects are never
//     followed), an answer that is not JSON or not where the mapping says,
//     an item without its key fields, a next page that cannot be followed
//     or leaves the upstream (another scheme, host or path prefix, or
//     credentials in the URL), more than MaxPages pages or a page fetched
//     twice, and signs of more items than received: a total above them, a
//     next link or field the source's pagination does not follow (unless
//     the mapping says "pagination": {"type": "none"}).
//   - Errors: a source that fails is a *SourceError naming it; its Err is
//     the cause when there is one (the *StatusError, the Memory's refusal),
//     for errors.Is and errors.As. Sources are fetched concurrently and the
//     first failure cancels the others; the error returned is a failed
//     source's own, not a cancelled one's, or the caller's ctx's error
//     when ctx ended.
//   - Keys are never empty, at most MaxKeyBytes, never under
//     ReservedPrefix, and unique across the whole view: a key twice on one
//     page or in two sources fails the fetch. A key on two pages of one
//     source means the collection moved between the requests: the source
//     is fetched once more, and fails with SourceError.Shifted if it moves
//     again (worth retrying), or without it if the second fetch disagrees
//     the same way (the API's doing: for the mapping to fix).
//   - Values are each item's bytes as the upstream sent them, compacted
//     when they hold whitespace outside their strings; Entry.Hash is
//     Hash(Value). Entries are the caller's; a Value may share memory with
//     the page it came from, which nothing else holds.
//   - Bounds: FetcherOptions.MaxBodyBytes bounds the bytes one fetch reads,
//     every page of every source together (the bytes of a source fetched
//     again replace those of its first attempt); Request.Memory is charged
//     for each of them.
//   - Conditional requests: given Request.Memos, a page whose URL is its
//     memo's and whose memo has validators is asked for with them; a 304
//     stands for the memo's entries, which then carry a Key and a Hash but
//     no Value (the caller must know the client holds them). The last page
//     of a paginated source is always fetched in full: more pages can
//     appear behind it without its own answer changing. A source fetched
//     again after it moved is fetched without memos. Result.Pages reports
//     each page's new memo.
package clientview
