package clientview

import "testing"

// TestReviewDeletedFlagSpelledAsText: a soft-delete flag that an API
// writes as text ("0" and "false", as PHP and MySQL drivers often do)
// marks a live item, as do a number zero however written and a JSON
// false; read as "set", every live item was dropped from the view.
func TestReviewDeletedFlagSpelledAsText(t *testing.T) {
	for raw, want := range map[string]bool{
		`"0"`: false, `"false"`: false, `"FALSE"`: false, `" 0 "`: true, // text: "0", or false in any case
		`0`: false, `false`: false, `null`: false, `""`: false, `0.0`: false,
		`"1"`: true, `"true"`: true, `true`: true, `1`: true, `"2026-12-01T10:00:00Z"`: true,
	} {
		if got := deletedValue([]byte(raw), true); got != want {
			t.Errorf("deletedValue(%s) = %v, want %v", raw, got, want)
		}
	}
	if deletedValue(nil, false) {
		t.Error("an absent field marks the item deleted")
	}
}
