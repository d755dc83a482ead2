package check

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/replicache-sidecar/replicache-sidecar/proxy"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// idNames are the member names an API gives a user's id, most telling
// first, compared without case, '_' or '-' (so user_id, userId and _id
// are among them).
var idNames = []string{"id", "userid", "uuid", "uid", "pk", "sub"}

// maxIDDepth is how deep in an auth answer an id is looked for: the
// answer itself, an envelope ({"data": {…}}), and one level more
// ({"data": {"user": {…}}}).
const maxIDDepth = 3

// idField is an id-like member of an auth answer: its dotted path and value.
type idField struct {
	path, value string
	depth, rank int
}

// idElsewhere asks the auth endpoint once more, as the server does, and
// looks for the user's id elsewhere in its answer than
// SIDECAR_AUTH_USER_FIELD says. When it finds one it reports the setting
// to write and sets rep.User to the id found, so the rest is checked as
// that user; it returns whether it reported anything (otherwise the
// caller says what the server said).
func idElsewhere(ctx context.Context, cfg proxy.Config, client *upstream.Client, fwd http.Header, rep *Report) bool {
	var body io.Reader
	if cfg.AuthMethod == http.MethodPost {
		body = strings.NewReader("{}")
	}
	req, err := http.NewRequestWithContext(ctx, cfg.AuthMethod, strings.TrimSuffix(cfg.Upstream.String(), "/")+cfg.AuthPath, body)
	if err != nil {
		return false
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	obj := getObject(client, req, fwd, 1<<20)
	if obj == nil {
		return false
	}
	var found []idField
	findIDs(obj, "", 1, &found)
	slices.SortFunc(found, func(a, b idField) int {
		return cmp.Or(a.depth-b.depth, a.rank-b.rank, strings.Compare(a.path, b.path))
	})
	where := fmt.Sprintf("the auth endpoint %s %s answered without a string or number at %q (SIDECAR_AUTH_USER_FIELD)", cfg.AuthMethod, cfg.AuthPath, cfg.AuthUserField)
	if len(found) == 0 {
		names := make([]string, 0, len(obj))
		for k := range obj {
			names = append(names, k)
		}
		slices.Sort(names)
		rep.Identity = append(rep.Identity, fmt.Sprintf("%s; its answer holds no id-like field within %d levels (its members: %s): set SIDECAR_AUTH_USER_FIELD to the dotted path of the user's id in it",
			where, maxIDDepth, strings.Join(names, ", ")))
		return true
	}
	best := found[0]
	msg := fmt.Sprintf("%s; its answer holds an id at %s (%q): set SIDECAR_AUTH_USER_FIELD=%s", where, best.path, best.value, best.path)
	if len(found) > 1 {
		var others []string
		for _, f := range found[1:] {
			others = append(others, f.path)
		}
		msg += fmt.Sprintf(" (other id-like fields: %s)", strings.Join(others, ", "))
	}
	rep.Identity = append(rep.Identity, msg+"; the rest was checked as that user")
	rep.User = best.value
	return true
}

// findIDs gathers the id-like members of obj, at depth (1 for the answer's
// own) and below, down to maxIDDepth. Arrays are not entered: an id in a
// list (roles, groups) is not the user's.
func findIDs(obj map[string]any, prefix string, depth int, out *[]idField) {
	for k, v := range obj {
		if strings.Contains(k, ".") {
			continue // a dotted path cannot name it
		}
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		switch t := v.(type) {
		case map[string]any:
			if depth < maxIDDepth {
				findIDs(t, path, depth+1, out)
			}
			continue
		case string, json.Number:
			value := fmt.Sprint(t)
			rank := slices.Index(idNames, strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(k)))
			if rank >= 0 && value != "" {
				*out = append(*out, idField{path: path, value: value, depth: depth, rank: rank})
			}
		}
	}
}

// getObject sends req with the forwarded headers fwd, asking for JSON, and
// returns its answer's top-level object (numbers as json.Number), read up
// to limit bytes; nil for an error, an answer other than 2xx, or anything
// but an object.
func getObject(client *upstream.Client, req *http.Request, fwd http.Header, limit int64) map[string]any {
	for k, vs := range fwd {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil || resp.StatusCode/100 != 2 {
		return nil
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&doc) != nil {
		return nil
	}
	obj, _ := doc.(map[string]any)
	return obj
}
