package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// history: what recording each group's history (SIDECAR_MAX_HISTORY_PER_GROUP,
// for `replicache-sidecar inspect`) costs a push and a pull that changed
// something: the same push of 10 mutations, and the same diff pull of a
// 1,000-entity view with 1% changed, through a sidecar recording it and one
// that does not (=0), taken in turns on the same database and API.
func (b *bench) history(context.Context) error {
	on, err := b.sidecar()
	if err != nil {
		return err
	}
	defer on.stop()
	off, err := b.sidecar("SIDECAR_MAX_HISTORY_PER_GROUP=0")
	if err != nil {
		return err
	}
	defer off.stop()
	sidecars := []*sidecar{on, off}

	pushes := [2][]time.Duration{}
	for i := -3; i < b.iterations(500); i++ {
		for k, s := range sidecars {
			group := fmt.Sprintf("history-push-%d", k) // one each: the two share the database
			t0 := time.Now()
			status, raw, err := b.post(s.url+"/replicache/push", "historian", pushBody(group, group+"-c", 10*(i+3)+1, 10), false)
			d := time.Since(t0)
			if err != nil {
				return err
			}
			if status != http.StatusOK {
				return fmt.Errorf("push answered %d: %.300s", status, raw)
			}
			if i >= 0 {
				pushes[k] = append(pushes[k], d)
			}
		}
	}
	w, wo := median(pushes[0]), median(pushes[1])
	b.add(row{"push of 10 mutations, the group's history recorded", ms(w), ms(wo) + " (the same push, history off)", ratio(w, wo), "≤ 1.10×", met(w, wo, 1.10)})

	b.api.add("historian", 1000, false)
	cookies := [2]json.RawMessage{}
	for k, s := range sidecars {
		status, raw, err := b.post(s.url+"/replicache/pull", "historian", pullBody(fmt.Sprintf("history-pull-%d", k), nil), false)
		if err != nil {
			return err
		}
		if cookies[k], _, _, err = pulled(status, raw); err != nil {
			return err
		}
	}
	pulls := [2][]time.Duration{}
	for i := -2; i < b.iterations(300); i++ {
		changed := b.api.change("historian", 100)
		for k, s := range sidecars {
			t0 := time.Now()
			status, raw, err := b.post(s.url+"/replicache/pull", "historian", pullBody(fmt.Sprintf("history-pull-%d", k), cookies[k]), false)
			d := time.Since(t0)
			if err != nil {
				return err
			}
			var puts int
			if cookies[k], puts, _, err = pulled(status, raw); err != nil {
				return err
			}
			if puts != changed {
				return fmt.Errorf("history: a diff pull put %d for %d changes", puts, changed)
			}
			if i >= 0 {
				pulls[k] = append(pulls[k], d)
			}
		}
	}
	w, wo = median(pulls[0]), median(pulls[1])
	b.add(row{"diff pull, 1,000 entities, 1% changed, the group's history recorded", ms(w), ms(wo) + " (the same pull, history off)",
		ratio(w, wo), "≤ 1.10×", met(w, wo, 1.10)})
	return nil
}
