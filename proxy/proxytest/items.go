package proxytest

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Item renders item i at revision rev, for benchmarks: about 130 bytes
// (1.29 MB for 10,000, as the fan-out issue measured), with a title of
// words drawn at random so it compresses like text, not like a repeated
// constant.
func Item(i, rev int) []byte {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(rev)))
	words := make([]string, 5)
	for w := range words {
		words[w] = itemWords[rng.IntN(len(itemWords))]
	}
	return fmt.Appendf(nil, `{"id":"i%06d","title":%q,"done":%v,"rev":%d,"owner":"u%d","due":"2026-%02d-%02d"}`,
		i, strings.Join(words, " "), rng.IntN(2) == 0, rev, rng.IntN(500), 1+rng.IntN(12), 1+rng.IntN(28))
}

var itemWords = strings.Fields(`buy milk call mother about the weekend plans fix the leaking kitchen tap send
	invoice to client review pull request book flights for conference renew passport water plants
	walk dog pay rent update resume clean garage schedule dentist order printer ink prepare slides
	read chapter seven return library books backup laptop photos cancel gym membership`)
