package clientview

import (
	"encoding/json"
	"testing"
)

// TestProbeSince: the bound a check's delta read sends is the value moved
// by the smallest step of how the API writes it, whatever the source's
// overlap (which the fetch takes off again), so an API that honours the
// filter answers nothing at or before the newest value.
func TestProbeSince(t *testing.T) {
	for _, tc := range []struct {
		name, overlap, v string
		after            bool
		want             string // what the delta read sends
	}{
		{"seconds", ``, "2024-05-01T10:00:07Z", true, "2024-05-01T10:00:08Z"},
		{"milliseconds", ``, "2024-05-01T10:00:07.500Z", true, "2024-05-01T10:00:07.501Z"},
		{"microseconds before", `"1m"`, "2024-05-01T10:00:07.500000Z", false, "2024-05-01T10:00:07.499999Z"},
		{"space and offset", ``, "2024-05-01 10:00:07.123+02:00", true, "2024-05-01 10:00:07.124+02:00"},
		{"version", ``, "41", true, "42"},
		{"version with overlap", `3`, "41", false, "40"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := &Changes{Param: "since", Field: "at"}
			if tc.overlap != "" {
				ch.Overlap = json.RawMessage(tc.overlap)
			}
			v, err := Compile([]Source{{Path: "/x", Key: "x/{id}", Changes: ch}})
			if err != nil {
				t.Fatal(err)
			}
			si := v.Sources()[0]
			since, err := si.ProbeSince(tc.v, tc.after)
			if err != nil {
				t.Fatal(err)
			}
			sent, err := si.compiled().changes.since(since)
			if err != nil {
				t.Fatal(err)
			}
			if sent.text != tc.want {
				t.Errorf("ProbeSince(%s, %v) sends %s, want %s", tc.v, tc.after, sent.text, tc.want)
			}
		})
	}
}

// TestSurveyChanges: what a read's items hold in the changes and
// soft-delete fields.
func TestSurveyChanges(t *testing.T) {
	v, err := Compile([]Source{{Path: "/x", Key: "x/{id}", Changes: &Changes{Param: "since", Field: "meta.at", Deleted: "gone"}}})
	if err != nil {
		t.Fatal(err)
	}
	es := []Entry{
		{Key: "x/1", Value: json.RawMessage(`{"id":1,"meta":{"at":"2024-05-01T10:00:02Z"}}`)},
		{Key: "x/2", Value: json.RawMessage(`{"id":2,"meta":{"at":"2024-05-01T10:00:01Z"},"gone":false}`)},
		{Key: "x/3", Value: json.RawMessage(`{"id":3,"meta":{"updated":"2024-05-01T10:00:09Z"}}`)},
		{Key: "x/4", Value: json.RawMessage(`{"id":4,"meta":{"at":"yesterday"}}`)},
		{Key: "x/5", Value: json.RawMessage(`{"id":5,"meta":{"at":"2024-05-01T10:00:03Z"}}`)},
	}
	sv, ok := v.Sources()[0].SurveyChanges(es, SourceResult{Deleted: []string{"x/6"}})
	want := ChangesSurvey{Items: 6, Missing: 1, Near: []string{"updated"}, Unreadable: 1, Example: `"yesterday"`,
		Oldest: "2024-05-01T10:00:01Z", Newest: "2024-05-01T10:00:03Z", DeletedSeen: true, DeletedNear: []string{"id", "meta"}}
	got, _ := json.Marshal(sv)
	w, _ := json.Marshal(want)
	if !ok || string(got) != string(w) {
		t.Errorf("survey %s\nwant   %s", got, w)
	}
}
