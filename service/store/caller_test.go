package store

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
)

// TestWriterChecksItsCaller: a write on behalf of a token checks, in its
// own transaction, that the token is still active and the secret still
// its current one, and writes nothing if not; the zero Caller (the
// administrator) is not checked.
func TestWriterChecksItsCaller(t *testing.T) {
	s, _ := openTemp(t)
	caller, callerHash := create(t, s, "alice", "caller")
	target, _ := create(t, s, "alice", "target")
	expiring, expiringHash := newToken(t, "alice", "expiring")
	expiring.ExpiresAt = t0.Add(time.Hour)
	expiring, _, err := s.Create(expiring, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rotated, oldHash := create(t, s, "alice", "rotated")
	if _, err := s.Mutate("alice", rotated.ID, func(tk *token.Token) error {
		tk.PrevSecretHash, tk.PrevSecretUntil = tk.SecretHash, t0.Add(time.Hour)
		tk.SecretHash = secret.HashOf("tkd_new")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	revoked, revokedHash := create(t, s, "alice", "revoked")
	if _, err := s.Revoke("alice", revoked.ID, t0); err != nil {
		t.Fatal(err)
	}

	rename := func(tk *token.Token) error { tk.Name = "renamed"; return nil }
	for _, tc := range []struct {
		name string
		as   Caller
		want error
	}{
		{"active, current secret", Caller{TokenID: caller.ID, Hash: callerHash, At: t0}, nil},
		{"administrator", Caller{}, nil},
		{"rotated out since", Caller{TokenID: rotated.ID, Hash: oldHash, At: t0}, ErrCallerRotated},
		{"another token's secret", Caller{TokenID: caller.ID, Hash: expiringHash, At: t0}, ErrCallerInvalid},
		{"rotated out, grace over", Caller{TokenID: rotated.ID, Hash: oldHash, At: t0.Add(time.Hour)}, ErrCallerInvalid},
		{"revoked since", Caller{TokenID: revoked.ID, Hash: revokedHash, At: t0}, ErrCallerInvalid},
		{"expired since", Caller{TokenID: expiring.ID, Hash: expiringHash, At: t0.Add(time.Hour)}, ErrCallerInvalid},
		{"gone", Caller{TokenID: 999, Hash: callerHash, At: t0}, ErrCallerInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := s.List("alice")
			if err != nil {
				t.Fatal(err)
			}
			w := s.As(tc.as)
			tok, _ := newToken(t, "alice", "minted")
			writes := map[string]func() error{
				"Create": func() error { _, _, err := w.Create(tok, CreateOptions{Now: t0}); return err },
				"Mutate": func() error { _, err := w.Mutate("alice", target.ID, rename); return err },
				"Revoke": func() error { _, err := w.Revoke("alice", target.ID, t0); return err },
			}
			for name, write := range writes {
				err := write()
				if tc.want == nil {
					if err != nil {
						t.Errorf("%s = %v, want success", name, err)
					}
					continue
				}
				if !errors.Is(err, tc.want) {
					t.Errorf("%s = %v, want %v", name, err, tc.want)
				}
			}
			if tc.want != nil {
				after, err := s.List("alice")
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(after, before) {
					t.Errorf("a refused write changed alice's tokens")
				}
			}
		})
	}

	t.Run("an idempotent retry is no way around it", func(t *testing.T) {
		idem := idemFor("alice", clientKey, "req", "sealed")
		tok, _ := newToken(t, "alice", "idempotent")
		first, replay, err := s.As(Caller{TokenID: caller.ID, Hash: callerHash, At: t0}).Create(tok, CreateOptions{Now: t0, Idempotency: idem})
		if err != nil || replay != nil {
			t.Fatalf("first create = %v, replay %v", err, replay)
		}
		_, replay, err = s.As(Caller{TokenID: revoked.ID, Hash: revokedHash, At: t0}).Create(tok, CreateOptions{Now: t0, Idempotency: idem})
		if !errors.Is(err, ErrCallerInvalid) || replay != nil {
			t.Errorf("retry by a revoked caller = %v, replay %v; want ErrCallerInvalid and no replay of token %d", err, replay, first.ID)
		}
	})
}
