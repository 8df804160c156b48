package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/token"
)

// maxVerifyErrors bounds what Verify reports of a badly broken file.
const maxVerifyErrors = 20

// Verify checks that the tokens, their secret index, their owners' lists
// and the live index agree: every token decodes and is listed under its
// owner and found by each of its live secret hashes; every index entry and
// every owner entry names an existing token that is its own; the live
// index lists no revoked token, every token active now, and each token it
// lists with its expiry. (An expired token may be missing: a create prunes
// expired entries by the clock of its request.) A write that reached disk
// only in part (a token without its index entry, or the reverse) fails it.
// It reads the whole file, so it is for tests and offline checks, not for
// every start. The error wraps ErrCorrupt.
func (s *Store) Verify() error { return s.verifyAt(time.Now()) }

// verifyAt is Verify judging expiry at now, which must be no earlier than
// the request time of any create that pruned the live index.
func (s *Store) verifyAt(now time.Time) error {
	var errs []error
	report := func(format string, args ...any) {
		if len(errs) < maxVerifyErrors {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	err := s.view(func(tx *bolt.Tx) error {
		tokens, secrets, users, live := tx.Bucket(bucketTokens), tx.Bucket(bucketSecrets), tx.Bucket(bucketUsers), tx.Bucket(bucketLive)
		var zero [32]byte
		err := tokens.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				report("token key %x is not 8 bytes", k)
				return nil
			}
			id := binary.BigEndian.Uint64(k)
			t, err := decode(id, v)
			if err != nil {
				report("token %d: %v", id, err)
				return nil
			}
			if ub := users.Bucket([]byte(t.UserID)); ub == nil || !hasKey(ub, k) {
				report("token %d is not listed under its owner %q", id, t.UserID)
			}
			var lv []byte
			if lb := live.Bucket([]byte(t.UserID)); lb != nil {
				lv = lb.Get(k)
			}
			switch want := liveValue(&t); {
			case !t.RevokedAt.IsZero():
				if lv != nil {
					report("token %d is revoked but listed as live", id)
				}
			case lv == nil:
				if t.Status(now) == token.StatusActive {
					report("token %d is active but not listed as live", id)
				}
			case !bytes.Equal(lv, want[:]):
				report("token %d is listed as live with expiry %x, want %x", id, lv, want)
			}
			for _, h := range [][32]byte{t.SecretHash, t.PrevSecretHash} {
				if h == zero {
					continue
				}
				if got := secrets.Get(h[:]); !bytes.Equal(got, k) {
					report("token %d: its secret hash %x is indexed to %x", id, h[:4], got)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = secrets.ForEach(func(h, k []byte) error {
			if len(k) != 8 {
				report("secret index entry %x: value %x is not a token key", h[:min(len(h), 4)], k)
				return nil
			}
			v := tokens.Get(k)
			if v == nil {
				report("secret index entry %x names missing token %d", h[:min(len(h), 4)], binary.BigEndian.Uint64(k))
				return nil
			}
			t, err := decode(binary.BigEndian.Uint64(k), v)
			if err == nil && !bytes.Equal(h, t.SecretHash[:]) && !bytes.Equal(h, t.PrevSecretHash[:]) {
				report("secret index entry %x names token %d, which has another secret", h[:min(len(h), 4)], t.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, index := range []struct {
			name   string
			bucket *bolt.Bucket
		}{{"user", users}, {"live index of user", live}} {
			err := index.bucket.ForEachBucket(func(user []byte) error {
				return index.bucket.Bucket(user).ForEach(func(k, _ []byte) error {
					v := tokens.Get(k)
					if len(k) != 8 || v == nil {
						report("%s %q lists missing token %x", index.name, user, k)
						return nil
					}
					if t, err := decode(binary.BigEndian.Uint64(k), v); err == nil && t.UserID != string(user) {
						report("%s %q lists token %d of %q", index.name, user, t.ID, t.UserID)
					}
					return nil
				})
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(errs...))
	}
	return nil
}

// hasKey reports whether b holds key k (with any value, even empty).
func hasKey(b *bolt.Bucket, k []byte) bool {
	got, _ := b.Cursor().Seek(k)
	return bytes.Equal(got, k)
}
