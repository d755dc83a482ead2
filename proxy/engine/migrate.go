package engine

import (
	"context"

	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
)

// Migrate applies the schema migrations; pushes and pulls are served from
// then on.
func (s *Core) Migrate(ctx context.Context) error {
	if err := s.Store.Migrate(ctx); err != nil {
		return err
	}
	keys, err := s.keySecrets(ctx)
	if err != nil {
		return err
	}
	s.keys.Store(keys)
	s.dbUp.Store(true)
	s.Metrics.DatabaseUp.Set(1)
	s.migrated.Store(true)
	return nil
}

// keySecrets are the idempotency secrets: SIDECAR_IDEMPOTENCY_SECRET (or
// the one generated in the schema) and, during a rotation,
// SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS.
func (s *Core) keySecrets(ctx context.Context) (*KeySecrets, error) {
	secret := func(v string) ([]byte, error) {
		if v == "" || v == config.GeneratedSecret {
			return s.Store.IdempotencySecret(ctx)
		}
		return []byte(v), nil
	}
	current, err := secret(s.Cfg.IdempotencySecret)
	if err != nil {
		return nil, err
	}
	k := &KeySecrets{Current: current, CurrentFP: mutators.SecretFingerprint(current)}
	if s.Cfg.IdempotencySecretPrevious != "" {
		if k.Previous, err = secret(s.Cfg.IdempotencySecretPrevious); err != nil {
			return nil, err
		}
		k.PreviousFP = mutators.SecretFingerprint(k.Previous)
	}
	return k, nil
}
