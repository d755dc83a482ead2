package flight

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type rider struct{ answer string }

// TestRidersShareOneRun: riders that board before the seal get the
// leader's answers; one that comes after the seal leads a run of its own;
// a refused newcomer starts its own flight; an error from accept joins
// nothing; a failed run gives every rider its error.
func TestRidersShareOneRun(t *testing.T) {
	var g Group[int, *rider]
	always := func(int) (bool, error) { return true, nil }

	lead, leader, err := g.Join("k", 1, nil, always)
	if err != nil || !leader {
		t.Fatalf("first Join: leader=%v err=%v", leader, err)
	}
	r1, r2 := &rider{}, &rider{}
	for _, r := range []*rider{r1, r2} {
		if f, leader, err := g.Join("k", 2, r, always); err != nil || leader || f != lead {
			t.Fatalf("rider Join: leader=%v same=%v err=%v", leader, f == lead, err)
		}
	}
	// A refused newcomer leads its own run; the open flight is then its.
	if _, leader, _ := g.Join("k", 3, &rider{}, func(m int) (bool, error) { return m == 99, nil }); !leader {
		t.Fatal("a newcomer refused by accept boarded anyway")
	}
	// accept's error joins nothing.
	boom := errors.New("busy")
	if _, _, err := g.Join("other", 4, &rider{}, always); err != nil {
		t.Fatal(err)
	}
	if f, _, err := g.Join("other", 5, &rider{}, func(int) (bool, error) { return false, boom }); !errors.Is(err, boom) || f != nil {
		t.Fatalf("accept's error: f=%v err=%v", f, err)
	}

	riders := lead.Seal()
	if len(riders) != 2 {
		t.Fatalf("Seal returned %d riders, want 2", len(riders))
	}
	if again := lead.Seal(); len(again) != 2 {
		t.Fatalf("a second Seal returned %d riders", len(again))
	}
	var wg sync.WaitGroup
	for _, r := range riders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := lead.Wait(context.Background()); err != nil {
				t.Errorf("Wait: %v", err)
			}
			if r.answer != "done" {
				t.Errorf("rider saw answer %q after Wait", r.answer)
			}
		}()
	}
	for _, r := range riders {
		r.answer = "done"
	}
	lead.Land(nil)
	wg.Wait()

	// A failed run: its riders get the error, and the key is free again.
	f, _, _ := g.Join("fail", 0, nil, always)
	if _, leader, err := g.Join("fail", 0, &rider{}, always); leader || err != nil {
		t.Fatalf("rider Join: leader=%v err=%v", leader, err)
	}
	f.Land(boom)
	if err := f.Wait(context.Background()); !errors.Is(err, boom) {
		t.Errorf("Wait on a failed flight = %v", err)
	}
	if _, leader, _ := g.Join("fail", 0, &rider{}, always); !leader {
		t.Error("a landed flight still took riders")
	}
}

// TestWaitEndsWithItsContext: a rider whose client leaves stops waiting.
func TestWaitEndsWithItsContext(t *testing.T) {
	var g Group[int, *rider]
	f, _, _ := g.Join("k", 0, nil, func(int) (bool, error) { return true, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := f.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want the context's error", err)
	}
	f.Land(nil)
}

// TestSealAlone: a flight no one joined is sealed by SealAlone (a newcomer
// then leads a flight of its own); one with a rider is not, and keeps
// taking riders until Seal.
func TestSealAlone(t *testing.T) {
	var g Group[int, *rider]
	always := func(int) (bool, error) { return true, nil }

	alone, _, _ := g.Join("a", 1, nil, always)
	if !alone.SealAlone() {
		t.Fatal("SealAlone of a flight without riders = false")
	}
	if again := alone.SealAlone(); !again {
		t.Fatal("SealAlone of a flight it sealed = false")
	}
	if f, leader, _ := g.Join("a", 2, &rider{}, always); !leader || f == alone {
		t.Fatal("a newcomer boarded a flight sealed alone")
	}

	lead, _, _ := g.Join("b", 1, nil, always)
	if _, leader, err := g.Join("b", 2, &rider{}, always); leader || err != nil {
		t.Fatalf("a second pull of b led a flight (%v, %v), want it to ride", leader, err)
	}
	if lead.SealAlone() {
		t.Fatal("SealAlone sealed a flight with a rider")
	}
	if f, leader, _ := g.Join("b", 3, &rider{}, always); leader || f != lead {
		t.Fatal("the flight stopped taking riders after a refused SealAlone")
	}
	if riders := lead.Seal(); len(riders) != 2 {
		t.Fatalf("Seal returned %d riders, want 2", len(riders))
	}
}

// TestOpenSaysWhetherANewcomerMayBoard: Open is true only while a flight
// of the key takes riders: not before one starts, not once it is sealed
// or landed.
func TestOpenSaysWhetherANewcomerMayBoard(t *testing.T) {
	var g Group[int, *rider]
	if g.Open("k") {
		t.Fatal("Open before any flight")
	}
	f, _, _ := g.Join("k", 0, nil, func(int) (bool, error) { return true, nil })
	if !g.Open("k") || g.Open("other") {
		t.Fatalf("Open with a flight of k: k %v, other %v; want true, false", g.Open("k"), g.Open("other"))
	}
	f.Seal()
	if g.Open("k") {
		t.Error("Open after the seal")
	}
	f.Land(nil)
	if g.Open("k") {
		t.Error("Open after the landing")
	}
}
