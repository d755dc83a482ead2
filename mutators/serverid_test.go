package mutators

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCompileServerIDAndBodyFormat: every problem of a serverID, a
// bodyFormat or a mapped Content-Type is reported at load, naming the
// mutator; Content-Type itself may be mapped now.
func TestCompileServerIDAndBodyFormat(t *testing.T) {
	_, err := Compile(map[string]Spec{
		"noArg":       {Method: "POST", Path: "/a", ServerID: &ServerIDSpec{Field: "id"}},
		"noField":     {Method: "POST", Path: "/a", ServerID: &ServerIDSpec{Arg: "id"}},
		"placeholder": {Method: "POST", Path: "/a", ServerID: &ServerIDSpec{Arg: "{args.id}", Field: "id"}},
		"argsPrefix":  {Method: "POST", Path: "/a", ServerID: &ServerIDSpec{Arg: "args.id", Field: "id"}},
		"emptyStep":   {Method: "POST", Path: "/a", ServerID: &ServerIDSpec{Arg: "id", Field: "data..id"}},
		"xml":         {Method: "POST", Path: "/a", Body: json.RawMessage(`{"a":1}`), BodyFormat: "xml"},
		"formNoBody":  {Method: "POST", Path: "/a", BodyFormat: "form"},
		"formArray":   {Method: "POST", Path: "/a", Body: json.RawMessage(`["{args.x}"]`), BodyFormat: "form"},
		"formNested":  {Method: "POST", Path: "/a", Body: json.RawMessage(`{"a":{"b":1},"c":[1],"ok":"{args.x}"}`), BodyFormat: "form"},
		"badType":     {Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "json, please"}},
		"ok": {Method: "POST", Path: "/a", Body: json.RawMessage(`{"t":"{args.t}"}`), BodyFormat: "form",
			Headers:  map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
			ServerID: &ServerIDSpec{Arg: "todo.id", Field: "data.id"}},
		"jsonAPI": {Method: "PATCH", Path: "/a", Headers: map[string]string{"Content-Type": "application/vnd.api+json"}},
	})
	if err == nil {
		t.Fatal("Compile accepted a broken mapping")
	}
	msg := err.Error()
	for _, want := range []string{
		`"noArg": serverID.arg is required`,
		`"noField": serverID.field is required`,
		`"placeholder": serverID.arg "{args.id}" is a dotted path, not a placeholder`,
		`"argsPrefix": serverID.arg "args.id" names an argument without "args." (write "id")`,
		`"emptyStep": serverID.field "data..id" has an empty step`,
		`"xml": bodyFormat "xml" is not json or form`,
		`"formNoBody": bodyFormat "form" needs a body template`,
		`"formArray": bodyFormat "form": the body template must be an object`,
		`"formNested": bodyFormat "form": body field "a" is an object or array`,
		`"formNested": bodyFormat "form": body field "c" is an object or array`,
		`"badType": header "content-type": "json, please" is not a media type`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q; got:\n%s", want, msg)
		}
	}
	for _, valid := range []string{`"ok"`, `"jsonAPI"`, `"formNested": bodyFormat "form": body field "ok"`} {
		if strings.Contains(msg, valid) {
			t.Errorf("error blames %s, which is valid: %s", valid, msg)
		}
	}
}

// TestRenderSubstitutesServerIDs: a placeholder whose whole value is a
// recorded temporary id renders as the server's id, with its JSON type (a
// number stays a number in a body, its decimal text in a path, query or
// longer string); a value that merely contains one is left alone; the
// idempotency key stays the mutation's.
func TestRenderSubstitutesServerIDs(t *testing.T) {
	m := mustCompile(t, map[string]Spec{
		"createTodo": {Method: "POST", Path: "/api/todos/", Body: json.RawMessage(`{"title":"{args.title}"}`),
			ServerID: &ServerIDSpec{Arg: "id", Field: "id"}},
		"tag": {Method: "POST", Path: "/api/todos/{args.id}/tags/?list={args.list}",
			Body: json.RawMessage(`{"todo":"{args.id}","list":"{args.list}","note":"on {args.id}","other":"{args.other}","nested":"{args.ref.id}"}`)},
		"form": {Method: "PATCH", Path: "/api/todos/{args.id}/", Body: json.RawMessage(`{"todo":"{args.id}","list":"{args.list}"}`), BodyFormat: "form"},
		"raw":  {Method: "PUT", Path: "/api/todos/{args.id}/"}, // the args are the body
	})
	if !m.HasServerIDs() {
		t.Fatal("HasServerIDs = false with a serverID mutator")
	}
	ids := ServerIDs{"tmp-1": `17`, "tmp-2": `"a 2"`}
	args := json.RawMessage(`{"id":"tmp-1","list":"tmp-2","other":"tmp-10","ref":{"id":"tmp-2"},"title":"milk"}`)
	tests := []struct {
		name, mutator      string
		ids                ServerIDs
		wantPath, wantBody string
		wantMentions       []string
		wantRefers         bool // Refers(ids) of the call rendered without records
	}{
		{"number and string ids, by type", "tag", ids,
			"/api/todos/17/tags/?list=a+2",
			`{"list":"a 2","nested":"a 2","note":"on 17","other":"tmp-10","todo":17}`,
			nil, true},
		{"no records: the temporary ids go out", "tag", nil,
			"/api/todos/tmp-1/tags/?list=tmp-2",
			`{"list":"tmp-2","nested":"tmp-2","note":"on tmp-1","other":"tmp-10","todo":"tmp-1"}`,
			nil, true},
		{"form bodies carry the number's text", "form", ids,
			"/api/todos/17/", `list=a+2&todo=17`, nil, true},
		// Args sent as the body: every whole string value, at any depth.
		{"args as the body", "raw", ids,
			"/api/todos/17/", `{"id":17,"list":"a 2","other":"tmp-10","ref":{"id":"a 2"},"title":"milk"}`,
			nil, true},
		{"args as the body, no records: byte for byte", "raw", nil,
			"/api/todos/tmp-1/", string(args), nil, true},
		// A create's own temporary id is looked up (Mentions) so a record
		// made before is seen, but nothing in its call refers to it.
		{"a create mentions its temporary id", "createTodo", nil,
			"/api/todos/", `{"title":"milk"}`, []string{"milk", "tmp-1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu := Mutation{ClientGroupID: "g", ClientID: "c", ID: 4, Name: tc.mutator, Args: args, IdempotencyKey: "key-4"}
			plain, err := m.Render(mu)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantMentions != nil && !slices.Equal(plain.Mentions(), tc.wantMentions) {
				t.Errorf("Mentions = %q, want %q", plain.Mentions(), tc.wantMentions)
			}
			if got := plain.Refers(ids); got != tc.wantRefers {
				t.Errorf("Refers = %v, want %v", got, tc.wantRefers)
			}
			mu.ServerIDs = tc.ids
			req, err := m.Render(mu)
			if err != nil {
				t.Fatal(err)
			}
			if req.PathQuery != tc.wantPath || string(req.Body) != tc.wantBody {
				t.Errorf("rendered %s %s, want %s %s", req.PathQuery, req.Body, tc.wantPath, tc.wantBody)
			}
			if req.IdempotencyKey != "key-4" {
				t.Errorf("idempotency key = %q, want the mutation's", req.IdempotencyKey)
			}
		})
	}
	t.Run("a create's temporary id", func(t *testing.T) {
		for args, want := range map[string]string{
			`{"id":"tmp-9","title":"x"}`: "tmp-9",
			`{"id":9,"title":"x"}`:       "", // a number is no temporary id
			`{"title":"x"}`:              "",
			`{"id":"` + strings.Repeat("x", MaxIDBytes+1) + `","title":"x"}`: "",
		} {
			req, err := m.Render(Mutation{Name: "createTodo", Args: json.RawMessage(args)})
			if err != nil || req.TempID != want || (want == "") == (req.noTempID == "") {
				t.Errorf("args %.40s: TempID %q (%q, %v), want %q", args, req.TempID, req.noTempID, err, want)
			}
		}
	})
}

// TestClientReadsServerID: an applied answer of a serverID mutator is read
// for the id at serverID.field, kept as the JSON text the API gave; an
// answer without one says why; answers of other calls are not read.
func TestClientReadsServerID(t *testing.T) {
	answers := map[string]struct {
		status int
		body   string
	}{
		"/number":    {201, `{"id": 17, "title": "x"}`},
		"/big":       {201, `{"id": 12345678901234567890123}`},
		"/envelope":  {200, `{"data": {"id": "9b2f\u00e9", "title": "x"}}`},
		"/nofield":   {201, `{"pk": 17}`},
		"/empty":     {204, ``},
		"/html":      {201, `<p>created</p>`},
		"/null":      {201, `{"id": null}`},
		"/object":    {201, `{"id": {"v": 1}}`},
		"/blank":     {201, `{"id": ""}`},
		"/huge":      {201, `{"pad": "` + strings.Repeat("x", serverIDAnswerMax) + `", "id": 1}`},
		"/rejected":  {422, `{"id": 17}`},
		"/conflict":  {409, `{"id": 18}`}, // mapped applied
		"/longid":    {201, `{"id": "` + strings.Repeat("i", MaxIDBytes) + `"}`},
		"/truncated": {201, `{"id": 1`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answers[r.URL.Path]
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, time.Second)
	tests := []struct {
		path, field, args string
		want              ServerID
		why               string // part of NoServerID; "" when none is expected
	}{
		{"/number", "id", `{"id":"tmp-1"}`, `17`, ""},
		{"/big", "id", `{"id":"tmp-1"}`, `12345678901234567890123`, ""},
		{"/envelope", "data.id", `{"id":"tmp-1"}`, `"9b2f\u00e9"`, ""},
		{"/conflict", "id", `{"id":"tmp-1"}`, `18`, ""},
		{"/nofield", "id", `{"id":"tmp-1"}`, "", "the answer has no field id"},
		{"/empty", "id", `{"id":"tmp-1"}`, "", "no body"},
		{"/html", "id", `{"id":"tmp-1"}`, "", "not JSON"},
		{"/truncated", "id", `{"id":"tmp-1"}`, "", "not JSON"},
		{"/null", "id", `{"id":"tmp-1"}`, "", "not a non-empty string or a number"},
		{"/object", "id", `{"id":"tmp-1"}`, "", "not a non-empty string or a number"},
		{"/blank", "id", `{"id":"tmp-1"}`, "", "not a non-empty string or a number"},
		{"/longid", "id", `{"id":"tmp-1"}`, "", "longer than 256 bytes"},
		{"/huge", "id", `{"id":"tmp-1"}`, "", "larger than"},
		{"/number", "id", `{"title":"no id"}`, "", "has no argument id"},
		{"/rejected", "id", `{"id":"tmp-1"}`, "", ""}, // not applied: not read
	}
	for _, tc := range tests {
		t.Run(tc.path+" "+tc.field, func(t *testing.T) {
			m := mustCompile(t, map[string]Spec{"create": {Method: "POST", Path: tc.path,
				ServerID: &ServerIDSpec{Arg: "id", Field: tc.field}, Outcomes: map[string]string{"409": "applied"}}})
			req, err := m.Render(Mutation{Name: "create", Args: json.RawMessage(tc.args)})
			if err != nil {
				t.Fatal(err)
			}
			res := c.Do(context.Background(), req, nil)
			if res.ServerID != tc.want || !strings.Contains(res.NoServerID, tc.why) || (tc.why == "") != (res.NoServerID == "") {
				t.Errorf("ServerID %q, NoServerID %q; want %q and a reason with %q", res.ServerID, res.NoServerID, tc.want, tc.why)
			}
		})
	}
	t.Run("a mutator without serverID reads nothing", func(t *testing.T) {
		m := mustCompile(t, map[string]Spec{"create": {Method: "POST", Path: "/number"}})
		req, _ := m.Render(Mutation{Name: "create", Args: json.RawMessage(`{"id":"tmp-1"}`)})
		if res := c.Do(context.Background(), req, nil); res.ServerID != "" || res.NoServerID != "" || m.HasServerIDs() {
			t.Errorf("result %+v", res)
		}
	})
}
