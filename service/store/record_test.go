package store

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/token"
)

func TestRecordRoundTrip(t *testing.T) {
	ips, err := token.ParseAllowedIPs([]string{"10.0.0.0/8", "2001:db8::1", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []token.Token{
		{ID: 1, UserID: "u", Name: "n", CreatedAt: time.Unix(1700000000, 0).UTC()},
		{
			ID: 2, UserID: "alice@example.com", Name: "Jürgen's 令牌 🔑", SecretHash: [32]byte{1, 2, 3},
			PrevSecretHash: [32]byte{9}, PrevSecretUntil: time.Unix(1700000500, 0).UTC(),
			CreatedAt: time.Unix(1700000000, 0).UTC(), ExpiresAt: time.Unix(1800000000, 0).UTC(),
			RevokedAt: time.Unix(1700000100, 0).UTC(), LastUsedAt: time.Unix(1700000200, 0).UTC(),
			UsageCount: 1 << 40, UsageBatch: 77, AllowedIPs: ips,
		},
	} {
		b, err := encode(&in)
		if err != nil {
			t.Fatal(err)
		}
		out, err := decode(in.ID, b)
		if err != nil {
			t.Fatalf("decode(encode(%+v)) = %v", in, err)
		}
		if !equalTokens(in, out) {
			t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
		}
		// Every truncation is refused, never misread or panicked on.
		for n := range len(b) {
			if _, err := decode(in.ID, b[:n]); !errors.Is(err, ErrCorrupt) {
				t.Errorf("decode of %d of %d bytes = %v, want ErrCorrupt", n, len(b), err)
			}
		}
	}
}

func equalTokens(a, b token.Token) bool {
	return a.ID == b.ID && a.UserID == b.UserID && a.Name == b.Name && a.SecretHash == b.SecretHash &&
		a.PrevSecretHash == b.PrevSecretHash && a.PrevSecretUntil.Equal(b.PrevSecretUntil) &&
		a.CreatedAt.Equal(b.CreatedAt) && a.ExpiresAt.Equal(b.ExpiresAt) && a.RevokedAt.Equal(b.RevokedAt) &&
		a.LastUsedAt.Equal(b.LastUsedAt) && a.UsageCount == b.UsageCount && a.UsageBatch == b.UsageBatch &&
		slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

func FuzzDecode(f *testing.F) {
	tok := token.Token{ID: 1, UserID: "u", Name: "n", AllowedIPs: token.AllowedIPs{}}
	b, _ := encode(&tok)
	f.Add(b)
	f.Add([]byte(`{"user":"u","name":"n","hash":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1}`))
	f.Add([]byte{recordFormat, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decode(7, b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error %v is not ErrCorrupt", err)
			}
			return
		}
		// What decodes re-encodes to something that decodes the same.
		again, err := encode(&got)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decode(7, again)
		if err != nil || !equalTokens(got, back) {
			t.Fatalf("re-decode = %+v, %v; want %+v", back, err, got)
		}
	})
}

// TestMigrateV1 opens a schema-1 file, whose records are JSON, and checks
// that Open rewrites it to the current schema with every field intact.
func TestMigrateV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	hash, prev := [32]byte{4, 5, 6}, [32]byte{9, 9}
	// Mid-rotation (the old secret still in its grace period) and revoked
	// later: every field a schema-1 record could hold.
	rec, _ := json.Marshal(recordV1{
		User: "alice", Name: "old", Hash: hash[:], PrevHash: prev[:], PrevUntil: 1700000500,
		Created: 1700000000, Expires: 1800000000, Revoked: 1750000000,
		LastUsed: 1700000300, Uses: 12, UsageBatch: 3, AllowedIPs: []string{"10.0.0.0/24", "203.0.113.12"},
	})
	key := idKey(1)
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		if err := meta.Put(keySchema, []byte{1}); err != nil {
			return err
		}
		tokens, _ := tx.CreateBucket(bucketTokens)
		if err := tokens.SetSequence(1); err != nil {
			return err
		}
		if err := tokens.Put(key[:], rec); err != nil {
			return err
		}
		secrets, _ := tx.CreateBucket(bucketSecrets)
		for _, h := range [][32]byte{hash, prev} {
			if err := secrets.Put(h[:], key[:]); err != nil {
				return err
			}
		}
		users, _ := tx.CreateBucket(bucketUsers)
		ub, _ := users.CreateBucket([]byte("alice"))
		return ub.Put(key[:], nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open of a schema-1 file = %v", err)
	}
	got, err := s.GetForUser("alice", 1)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "old" || got.UsageCount != 12 || got.SecretHash != hash ||
		!slices.Equal(got.AllowedIPs.Strings(), []string{"10.0.0.0/24", "203.0.113.12"}) ||
		got.ExpiresAt.Unix() != 1800000000 || got.LastUsedAt.Unix() != 1700000300 ||
		got.PrevSecretHash != prev || got.PrevSecretUntil.Unix() != 1700000500 ||
		got.RevokedAt.Unix() != 1750000000 || got.UsageBatch != 3 || got.CreatedAt.Unix() != 1700000000 {
		t.Errorf("migrated token = %+v", got)
	}
	if err := s.Verify(); err != nil {
		t.Errorf("Verify after migration: %v", err)
	}
	if l, err := s.Lookup(hash, time.Unix(1700000400, 0)); err != nil || l.ID != 1 {
		t.Errorf("Lookup after migration = %+v, %v", l, err)
	}
	var schema byte
	var raw []byte
	_ = s.db.View(func(tx *bolt.Tx) error {
		schema = tx.Bucket(bucketMeta).Get(keySchema)[0]
		raw = slices.Clone(tx.Bucket(bucketTokens).Get(key[:]))
		return nil
	})
	if schema != SchemaVersion || len(raw) == 0 || raw[0] != recordFormat {
		t.Errorf("after Open: schema %d, record starts %q; want %d and the binary format", schema, raw[:1], SchemaVersion)
	}
	if next, _, err := s.Create(token.Token{UserID: "alice", Name: "new", SecretHash: [32]byte{7}, CreatedAt: time.Now()}, CreateOptions{}); err != nil || next.ID != 2 {
		t.Errorf("Create after migration = %d, %v; want id 2", next.ID, err)
	}
	s.Close()
}
