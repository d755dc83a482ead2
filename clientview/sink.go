package clientview

import "errors"

// PageSink receives a fetch's pages as they are read (Request.Pages), for
// an answer that goes out while the view is still being read. Its calls
// never overlap (the sources, read concurrently, take turns) and come in
// each source's page order; the pages of different sources interleave.
type PageSink interface {
	// Page is given the entries of one page of a source (by its
	// fingerprint), once the page is known to fit the pages before it (no
	// key twice), without the items its changes say are deleted. Entries
	// of a page answered 304 have no value. release: the sink keeps what
	// it needs of the values, so the fetch lets them go; its result then
	// holds these entries by key and hash only. An error ends the fetch.
	Page(source string, entries []Entry) (release bool, err error)
	// Again says that a source's pages did not fit together and that it
	// is read again from its first page. sent: the sink has passed on
	// what it was given of the source (its client holds it), so the
	// fetch's result keeps those entries where the second read lacks
	// their key. Otherwise the sink forgets them, as the result does.
	Again(source string) (sent bool)
}

// give hands one page's entries to the sink. es are the page's entries
// for the sink, held are the same page's entries as the fetch holds them
// (with the soft-deleted): their values are dropped when the sink releases
// them.
func (r Request) give(s *source, es, held []Entry) error {
	r.sinkMu.Lock()
	release, err := r.Pages.Page(s.id, es)
	r.sinkMu.Unlock()
	if err != nil {
		return err
	}
	if release {
		for i := range held {
			held[i].Value = nil
		}
	}
	return nil
}

// again tells the sink that s is read again, and returns whether it sent
// on what it was given.
func (r Request) again(s *source) bool {
	r.sinkMu.Lock()
	defer r.sinkMu.Unlock()
	return r.Pages.Again(s.id)
}

// withGiven notes in a *shiftedError what the sink was given of the pages
// that did not fit together.
func withGiven(err error, given []Entry) error {
	var se *shiftedError
	if errors.As(err, &se) {
		se.given = given
	}
	return err
}
