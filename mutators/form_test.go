package mutators

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClientSendsMappedContentType: a mapped Content-Type goes out with the
// body the template renders (JSON:API, merge-patch), and a "form" body is
// the object's fields urlencoded in key order; the API receives exactly
// these bytes and this header.
func TestClientSendsMappedContentType(t *testing.T) {
	type seen struct {
		contentType string
		body        string
	}
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Header.Get("Content-Type"), string(b)}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, time.Second)
	m := mustCompile(t, map[string]Spec{
		// JSON:API (application/vnd.api+json): the document is the template.
		"jsonAPI": {Method: "PATCH", Path: "/articles/{args.id}", Headers: map[string]string{"Content-Type": "application/vnd.api+json"},
			Body: json.RawMessage(`{"data":{"type":"articles","id":"{args.id}","attributes":{"title":"{args.title}"}}}`)},
		// JSON merge patch: the args as they are.
		"mergePatch": {Method: "PATCH", Path: "/todos/1", Headers: map[string]string{"content-type": "application/merge-patch+json"}},
		// Rails- or PHP-era forms.
		"form": {Method: "POST", Path: "/todos", BodyFormat: "form",
			Body: json.RawMessage(`{"title":"{args.title}","done":"{args.done}","note":"{args.note}","count":"{args.n}","who":"by {userID}","gone":"{args.gone?}"}`)},
		"formCharset": {Method: "POST", Path: "/todos", BodyFormat: "form", Body: json.RawMessage(`{"todo[title]":"{args.title}"}`),
			Headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}},
	})
	tests := []struct {
		name, mutator, args string
		wantType, wantBody  string
	}{
		{"JSON:API", "jsonAPI", `{"id":"1","title":"Hi"}`, "application/vnd.api+json",
			`{"data":{"attributes":{"title":"Hi"},"id":"1","type":"articles"}}`},
		{"merge patch", "mergePatch", `{"title":null, "done":true}`, "application/merge-patch+json", `{"title":null, "done":true}`},
		// A string as itself, a number as its JSON text, true as "true",
		// null as the empty value; an absent optional field is left out.
		{"form", "form", `{"title":"milk & honey é","done":true,"note":null,"n":1.50}`, "application/x-www-form-urlencoded",
			`count=1.50&done=true&note=&title=milk+%26+honey+%C3%A9&who=by+u1`},
		{"form with the mapping's Content-Type", "formCharset", `{"title":"a=b"}`, "application/x-www-form-urlencoded; charset=utf-8",
			`todo%5Btitle%5D=a%3Db`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := m.Render(Mutation{ClientID: "c", ID: 1, Name: tc.mutator, Args: json.RawMessage(tc.args), UserID: "u1"})
			if err != nil {
				t.Fatal(err)
			}
			if res := c.Do(context.Background(), req, http.Header{"Content-Type": {"text/plain"}}); res.Outcome != Applied {
				t.Fatalf("result %+v", res)
			}
			s := <-got
			if s.contentType != tc.wantType || s.body != tc.wantBody {
				t.Errorf("the API received Content-Type %q and body %q; want %q and %q", s.contentType, s.body, tc.wantType, tc.wantBody)
			}
		})
	}
	t.Run("an argument that brings an object to a form is the mutation's error", func(t *testing.T) {
		_, err := m.Render(Mutation{Name: "form", Args: json.RawMessage(`{"title":{"a":1},"done":true,"note":null,"n":1}`)})
		var re *renderError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), `body field "title": an object or array cannot be sent in a form body`) {
			t.Errorf("Render = %v, want a renderError naming the field", err)
		}
	})
}
