package store

import (
	"errors"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/token"
)

// TestVerify checks that Verify passes a store written only through its
// methods (creates, a rotation, a revoke) and fails each kind of partial
// write: a token missing from its index or its owner's list, and index or
// owner entries naming no token.
func TestVerify(t *testing.T) {
	for _, tc := range []struct {
		name  string
		apply func(tx *bolt.Tx, tok token.Token) error // nil: left intact
	}{
		{"intact", nil},
		{"index entry lost", func(tx *bolt.Tx, tok token.Token) error {
			return tx.Bucket(bucketSecrets).Delete(tok.SecretHash[:])
		}},
		{"owner entry lost", func(tx *bolt.Tx, tok token.Token) error {
			k := idKey(tok.ID)
			return tx.Bucket(bucketUsers).Bucket([]byte(tok.UserID)).Delete(k[:])
		}},
		{"token record lost", func(tx *bolt.Tx, tok token.Token) error {
			k := idKey(tok.ID)
			return tx.Bucket(bucketTokens).Delete(k[:])
		}},
		{"index entry names another token", func(tx *bolt.Tx, tok token.Token) error {
			k := idKey(tok.ID + 1)
			return tx.Bucket(bucketSecrets).Put(tok.SecretHash[:], k[:])
		}},
		{"live entry lost", func(tx *bolt.Tx, tok token.Token) error {
			k := idKey(tok.ID)
			return tx.Bucket(bucketLive).Bucket([]byte(tok.UserID)).Delete(k[:])
		}},
		{"live entry lost for a token that expires later", func(tx *bolt.Tx, tok token.Token) error {
			tok.ExpiresAt = token.Clock(time.Now().Add(time.Hour))
			if err := put(tx, &tok); err != nil {
				return err
			}
			k := idKey(tok.ID)
			return tx.Bucket(bucketLive).Bucket([]byte(tok.UserID)).Delete(k[:])
		}},
		{"live entry with another expiry", func(tx *bolt.Tx, tok token.Token) error {
			k := idKey(tok.ID)
			return tx.Bucket(bucketLive).Bucket([]byte(tok.UserID)).Put(k[:], []byte{0, 0, 0, 0, 0, 0, 0, 1})
		}},
		{"revoked token still live", func(tx *bolt.Tx, tok token.Token) error {
			tok.RevokedAt = t0
			return put(tx, &tok)
		}},
		{"live entry names a missing token", func(tx *bolt.Tx, tok token.Token) error {
			k := idKey(tok.ID + 100)
			return tx.Bucket(bucketLive).Bucket([]byte(tok.UserID)).Put(k[:], make([]byte, 8))
		}},
		{"live index lists another's token", func(tx *bolt.Tx, tok token.Token) error {
			b, err := tx.Bucket(bucketLive).CreateBucketIfNotExists([]byte("mallory"))
			if err != nil {
				return err
			}
			k := idKey(tok.ID)
			return b.Put(k[:], make([]byte, 8))
		}},
		{"owner lists another's token", func(tx *bolt.Tx, tok token.Token) error {
			b, err := tx.Bucket(bucketUsers).CreateBucketIfNotExists([]byte("mallory"))
			if err != nil {
				return err
			}
			k := idKey(tok.ID)
			return b.Put(k[:], nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := openTemp(t)
			now := time.Now()
			var toks []token.Token
			for _, user := range []string{"alice", "alice", "bob"} {
				tok, _ := create(t, st, user, "n")
				toks = append(toks, tok)
			}
			_, next := newToken(t, "alice", "next")
			if _, err := st.Mutate("alice", toks[0].ID, func(tk *token.Token) error {
				tk.PrevSecretHash, tk.PrevSecretUntil = tk.SecretHash, now.Add(time.Hour)
				tk.SecretHash = next
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Revoke("bob", toks[2].ID, now); err != nil {
				t.Fatal(err)
			}
			if tc.apply == nil {
				if err := st.Verify(); err != nil {
					t.Fatalf("Verify of an intact store: %v", err)
				}
				return
			}
			if err := st.db.Update(func(tx *bolt.Tx) error { return tc.apply(tx, toks[1]) }); err != nil {
				t.Fatal(err)
			}
			if err := st.Verify(); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify after %s = %v, want ErrCorrupt", tc.name, err)
			}
		})
	}
}
