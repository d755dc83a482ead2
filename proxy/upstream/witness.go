package upstream

import (
	"sync"
	"time"
)

// Witness remembers, for a short window, what the upstream answered whom:
// the last normal answer of any kind, and which callers got each failing
// status of a mutation. It answers the question the give-up valve asks of a
// failing mutation: is this failure the mutation's own (the API answers
// other calls normally meanwhile, and nobody else gets the same answer), or
// the API's (an outage, a rate limit, a mapping that fails for everyone)?
// Only the former may ever lead to giving up.
//
// It is per process: each replica sees a share of every caller's traffic,
// which is enough to tell an outage from one poisoned mutation. It is safe
// for concurrent use; memory is bounded by the distinct (status, source)
// pairs seen within the window.
type Witness struct {
	window time.Duration

	mu          sync.Mutex
	lastHealthy time.Time
	// failing[status][source] is when source last got status to a mutation.
	failing map[int]map[string]time.Time
	swept   time.Time
}

// witnessWindow is how far back the Witness looks.
const witnessWindow = 2 * time.Minute

func newWitness() *Witness {
	return &Witness{window: witnessWindow, failing: map[int]map[string]time.Time{}}
}

// saw records the evidence of one unit of work of kind k.
func (w *Witness) saw(k kind, e Evidence) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch e.Status {
	case 408, 425, 429: // answered, but "not now": no sign of a working API
	default:
		if e.Health == Healthy {
			w.lastHealthy = now
		}
	}
	if k == kindMutation && e.Status >= 400 {
		bySource := w.failing[e.Status]
		if bySource == nil {
			bySource = map[string]time.Time{}
			w.failing[e.Status] = bySource
		}
		bySource[e.Source] = now
	}
	if now.Sub(w.swept) > w.window {
		w.swept = now
		for status, bySource := range w.failing {
			for src, at := range bySource {
				if now.Sub(at) > w.window {
					delete(bySource, src)
				}
			}
			if len(bySource) == 0 {
				delete(w.failing, status)
			}
		}
	}
}

// Others says what the upstream answered others within the window, as a
// mutation from source has just been answered status: whether some call
// got a normal answer (a mutation applied or refused for good, a view
// read, an identity), and whether a mutation of another source got the
// same status.
func (w *Witness) Others(status int, source string) (healthy, sameStatus bool) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	healthy = now.Sub(w.lastHealthy) <= w.window
	for src, at := range w.failing[status] {
		if src != source && now.Sub(at) <= w.window {
			return healthy, true
		}
	}
	return healthy, false
}
