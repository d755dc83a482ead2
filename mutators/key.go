package mutators

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
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

// SecretFingerprint names an idempotency secret without revealing it: the
// first 8 bytes of an HMAC-SHA256 of a fixed label under it, never 0. The
// sidecar records it with a consumed mutation, so that while the secret is
// rotated a replica can tell whether the last commit of a client was made
// keying with the new secret or the previous one.
func SecretFingerprint(secret []byte) int64 {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("replicache-sidecar idempotency secret fingerprint"))
	fp := int64(binary.BigEndian.Uint64(mac.Sum(nil)))
	if fp == 0 {
		return 1
	}
	return fp
}
