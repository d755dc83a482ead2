package compress

import "testing"

// TestAcceptsGzip: gzip by name or by *, unless its q-value is 0.
func TestAcceptsGzip(t *testing.T) {
	for in, want := range map[string]bool{
		"gzip, deflate, br, zstd": true,
		"br;q=1.0, gzip;q=0.8":    true,
		"GZIP":                    true,
		"gzip;q=0":                false,
		"identity":                false,
		"":                        false,
		"*":                       true,
		"*;q=0":                   false,
		"gzip;q=0, *":             false,
		"deflate, x-gzip":         true,
	} {
		if got := acceptsGzip([]string{in}); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", in, got, want)
		}
	}
}
