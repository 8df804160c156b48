package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
)

// TestVerify checks that Verify passes a store written only through its
// methods (creates, a rotation, a revoke) and fails each kind of partial
// write: a token missing from its index or its owner's list, and index or
// owner entries naming no token.
func TestVerify(t *testing.T) {
	breaks := []struct {
		name  string
		apply func(tx *bolt.Tx, tok token.Token) error
	}{
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
		{"owner lists another's token", func(tx *bolt.Tx, tok token.Token) error {
			b, err := tx.Bucket(bucketUsers).CreateBucketIfNotExists([]byte("mallory"))
			if err != nil {
				return err
			}
			k := idKey(tok.ID)
			return b.Put(k[:], nil)
		}},
	}
	for _, tc := range append([]struct {
		name  string
		apply func(tx *bolt.Tx, tok token.Token) error
	}{{"intact", nil}}, breaks...) {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Open(filepath.Join(t.TempDir(), "v.db"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			now := time.Now()
			var toks []token.Token
			for _, user := range []string{"alice", "alice", "bob"} {
				sec, err := secret.New()
				if err != nil {
					t.Fatal(err)
				}
				tok, _, err := st.Create(token.Token{UserID: user, Name: "n", SecretHash: secret.HashOf(sec), CreatedAt: now}, CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				toks = append(toks, tok)
			}
			next, err := secret.New()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Mutate("alice", toks[0].ID, func(tk *token.Token) error {
				tk.PrevSecretHash, tk.PrevSecretUntil = tk.SecretHash, now.Add(time.Hour)
				tk.SecretHash = secret.HashOf(next)
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
