package mutators

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// IdempotencyKey is the key every call of mu carries: an HMAC-SHA256 of who
// sent it (the verified user, the client group, the client) and its id,
// under the deployment's secret. It is stable across retries, replicas and
// restarts, and nobody can send another user's key to the API first:
// client ids travel in the clear, the secret does not.
func IdempotencyKey(secret []byte, mu Mutation) string {
	mac := hmac.New(sha256.New, secret)
	for _, part := range []string{mu.UserID, mu.ClientGroupID, mu.ClientID, strconv.FormatInt(mu.ID, 10)} {
		mac.Write([]byte(part))
		mac.Write([]byte{0})
	}
	return hex.EncodeToString(mac.Sum(nil))
}

// LegacyIdempotencyKey is the key of the sidecar's first releases,
// "<clientID>:<mutationID>": kept for a client's mutations that may have
// been sent with it before the upgrade.
func LegacyIdempotencyKey(mu Mutation) string {
	return mu.ClientID + ":" + strconv.FormatInt(mu.ID, 10)
}
