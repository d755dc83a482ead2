package mutators

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// outcomeRules decide what an upstream status means for one mutator: exact
// statuses first, then status classes, then the defaults (classify). The
// zero value is the defaults alone.
type outcomeRules struct {
	exact map[int]Outcome
	class [6]Outcome // by status/100; 0: not set
}

// outcomeNames are the values a mapping's "outcomes" may use.
var outcomeNames = map[string]Outcome{"applied": Applied, "rejected": Rejected, "retry": Transient}

// compileOutcomes checks a mutator's "outcomes": keys are statuses ("404")
// or classes ("4xx"), values "applied", "rejected" or "retry". Every
// problem is reported.
func compileOutcomes(spec map[string]string) (outcomeRules, []error) {
	var r outcomeRules
	var errs []error
	keys := make([]string, 0, len(spec))
	for k := range spec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o, ok := outcomeNames[spec[k]]
		if !ok {
			errs = append(errs, fmt.Errorf("outcomes[%q]: %q is not applied, rejected or retry", k, spec[k]))
			continue
		}
		if len(k) == 3 && strings.HasSuffix(k, "xx") && k[0] >= '2' && k[0] <= '5' {
			r.class[k[0]-'0'] = o
			continue
		}
		status, err := strconv.Atoi(k)
		if err != nil || len(k) != 3 || status < 200 || status > 599 {
			errs = append(errs, fmt.Errorf("outcomes: %q is not a status (200-599) or a class (2xx-5xx)", k))
			continue
		}
		if r.exact == nil {
			r.exact = map[int]Outcome{}
		}
		r.exact[status] = o
	}
	return r, errs
}

// classify maps an upstream status to an Outcome: the mutator's own rules
// first, then the defaults.
func (r outcomeRules) classify(status int) Outcome {
	if o, ok := r.exact[status]; ok {
		return o
	}
	if c := status / 100; c >= 0 && c < len(r.class) && r.class[c] != 0 {
		return r.class[c]
	}
	return classify(status)
}

// classify is the default rule: 2xx applied; 401 unauthorized (expired
// credentials are no business error: the mutation waits for a fresh token);
// 4xx other than 408 (timeout), 425 (too early) and 429 (rate limited)
// rejected; anything else, including 3xx (redirects are never followed),
// transient.
func classify(status int) Outcome {
	switch {
	case status >= 200 && status < 300:
		return Applied
	case status == http.StatusUnauthorized:
		return Unauthorized
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly, status == http.StatusTooManyRequests:
		return Transient
	case status >= 400 && status < 500:
		return Rejected
	default:
		return Transient
	}
}
