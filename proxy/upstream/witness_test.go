package upstream

import (
	"testing"
	"time"
)

// TestWitness: a normal answer of any kind is "healthy" for the window; a
// failing status counts as seen elsewhere only from another source; a 429
// is no sign of a working API; old observations fall out of the window.
func TestWitness(t *testing.T) {
	w := newWitness()
	if healthy, same := w.Others(500, "a"); healthy || same {
		t.Fatalf("empty witness: healthy=%v same=%v", healthy, same)
	}
	w.saw(kindMutation, Evidence{Health: Healthy, Status: 429, Source: "b"})
	if healthy, _ := w.Others(500, "a"); healthy {
		t.Error("a 429 counted as a normal answer")
	}
	w.saw(kindView, Evidence{Health: Healthy, Source: "b"})
	if healthy, same := w.Others(500, "a"); !healthy || same {
		t.Errorf("after a view read: healthy=%v same=%v; want healthy, nothing shared", healthy, same)
	}
	w.saw(kindMutation, Evidence{Health: Sick, Status: 500, Source: "a"})
	if _, same := w.Others(500, "a"); same {
		t.Error("a source's own failure counted as seen elsewhere")
	}
	w.saw(kindMutation, Evidence{Health: Sick, Status: 500, Source: "b"})
	if _, same := w.Others(500, "a"); !same {
		t.Error("another source's 500 not seen")
	}
	if _, same := w.Others(409, "a"); same {
		t.Error("another status counted as the same")
	}
	w.window = time.Millisecond
	time.Sleep(5 * time.Millisecond)
	if healthy, same := w.Others(500, "a"); healthy || same {
		t.Errorf("after the window: healthy=%v same=%v; want neither", healthy, same)
	}
}
