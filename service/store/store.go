// Package store keeps tokens in one bbolt file.
//
// Layout (schema version 1):
//
//	meta     "schema" → version, one byte
//	tokens   id (8-byte big-endian) → record (JSON)
//	secrets  SHA-256 of the secret → id
//	users    user id → bucket of that user's token ids → empty
//
// Ids come from the tokens bucket's sequence, so they are unique across all
// users and never reused. Every method runs in one transaction, so a token,
// its secret index and its user index are written together or not at all.
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
)

// SchemaVersion is the layout this package reads and writes.
const SchemaVersion = 1

// Errors returned by Open, besides those of the file system.
var (
	// ErrInUse means another process holds the database open.
	ErrInUse = errors.New("database is in use by another process")
	// ErrNewerSchema means the file was written by a newer tokend.
	ErrNewerSchema = errors.New("database has a newer schema version than this tokend supports")
	// ErrCorrupt means the file is not a tokend database.
	ErrCorrupt = errors.New("database is corrupt or not a tokend database")
	// ErrNoDatabase means Options.MustExist was set and there is no file.
	ErrNoDatabase = errors.New("no database")
)

var (
	bucketMeta    = []byte("meta")
	bucketTokens  = []byte("tokens")
	bucketSecrets = []byte("secrets")
	bucketUsers   = []byte("users")
	keySchema     = []byte("schema")
)

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for another process to release the file;
	// zero means one second. bbolt would otherwise wait forever.
	LockTimeout time.Duration
	// MustExist refuses to create a missing file, for commands that only
	// read or change existing tokens and must not leave an empty database
	// behind on a mistyped path.
	MustExist bool
}

// Store is a bbolt-backed token store, safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the database at path with mode 0600, creating its
// buckets and checking its schema version.
func Open(path string, opts Options) (*Store, error) {
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	if opts.MustExist {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s", ErrNoDatabase, path)
		}
	}
	db, err := openBolt(path, timeout)
	var pathErr *fs.PathError
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("open %s: %w", path, ErrInUse)
	case errors.As(err, &pathErr):
		return nil, fmt.Errorf("open %s: %w", path, err)
	case err != nil:
		// Everything else bbolt reports on open (bad magic, checksum or
		// version, "file size too small", a panic on a broken freelist)
		// means the file's contents are not a usable database.
		return nil, fmt.Errorf("open %s: %w (%v)", path, ErrCorrupt, err)
	}
	if err := db.Update(initSchema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// openBolt opens the file, turning the panics with which bbolt meets some
// truncated files into errors. (The file's descriptor leaks in that case;
// callers exit on ErrCorrupt.)
func openBolt(path string, timeout time.Duration) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("bbolt: %v", r)
		}
	}()
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
}

func initSchema(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	switch v := meta.Get(keySchema); {
	case v == nil:
		if tx.Bucket(bucketTokens) != nil {
			return ErrCorrupt
		}
		if err := meta.Put(keySchema, []byte{SchemaVersion}); err != nil {
			return err
		}
	case len(v) != 1:
		return ErrCorrupt
	case v[0] > SchemaVersion:
		return fmt.Errorf("%w (file has %d, supported %d)", ErrNewerSchema, v[0], SchemaVersion)
	}
	for _, name := range [][]byte{bucketTokens, bucketSecrets, bucketUsers} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the database file.
func (s *Store) Close() error { return s.db.Close() }

// Path returns the file the store lives in.
func (s *Store) Path() string { return s.db.Path() }

// Create stores a new token, assigning its ID. t must be valid; its hash
// must be unique (a collision of 190-bit secrets means a broken RNG).
func (s *Store) Create(t token.Token) (token.Token, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		tokens := tx.Bucket(bucketTokens)
		secrets := tx.Bucket(bucketSecrets)
		if secrets.Get(t.SecretHash[:]) != nil {
			return errors.New("secret hash collision")
		}
		id, err := tokens.NextSequence()
		if err != nil {
			return err
		}
		t.ID = id
		key := idKey(id)
		val, err := encode(&t)
		if err != nil {
			return err
		}
		if err := tokens.Put(key[:], val); err != nil {
			return err
		}
		if err := secrets.Put(t.SecretHash[:], key[:]); err != nil {
			return err
		}
		user, err := tx.Bucket(bucketUsers).CreateBucketIfNotExists([]byte(t.UserID))
		if err != nil {
			return err
		}
		return user.Put(key[:], nil)
	})
	if err != nil {
		return token.Token{}, fmt.Errorf("create token: %w", err)
	}
	return t, nil
}

// GetForUser returns token id if user owns it, and token.ErrNotFound both
// when it does not exist and when someone else owns it.
func (s *Store) GetForUser(user string, id uint64) (token.Token, error) {
	var t token.Token
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		t, err = getOwned(tx, user, id)
		return err
	})
	return t, err
}

func getOwned(tx *bolt.Tx, user string, id uint64) (token.Token, error) {
	t, err := get(tx, id)
	if err != nil {
		return token.Token{}, err
	}
	if t.UserID != user {
		return token.Token{}, token.ErrNotFound
	}
	return t, nil
}

func get(tx *bolt.Tx, id uint64) (token.Token, error) {
	key := idKey(id)
	val := tx.Bucket(bucketTokens).Get(key[:])
	if val == nil {
		return token.Token{}, token.ErrNotFound
	}
	t, err := decode(id, val)
	if err != nil {
		return token.Token{}, fmt.Errorf("token %d: %w", id, err)
	}
	return t, nil
}

// Use authenticates with a secret hash: it finds the token, lets check
// refuse it (revoked, expired, wrong address), and otherwise counts the use
// at time at, all in one transaction, so a token revoked concurrently is
// never counted and N uses always add exactly N. It returns the token as
// updated, or token.ErrNotFound for an unknown hash, or check's error.
func (s *Store) Use(h secret.Hash, at time.Time, check func(*token.Token) error) (token.Token, error) {
	var t token.Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		idv := tx.Bucket(bucketSecrets).Get(h[:])
		if len(idv) != 8 {
			return token.ErrNotFound
		}
		var err error
		t, err = get(tx, binary.BigEndian.Uint64(idv))
		if err != nil {
			return err
		}
		if err := check(&t); err != nil {
			return err
		}
		t.UsageCount++
		t.LastUsedAt = token.Clock(at)
		return put(tx, &t)
	})
	if err != nil {
		return token.Token{}, err
	}
	return t, nil
}

// Revoke revokes user's token id at time at. Revoking a revoked token keeps
// its first revocation time and is not an error.
func (s *Store) Revoke(user string, id uint64, at time.Time) (token.Token, error) {
	var t token.Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers).Bucket([]byte(user)) == nil {
			return token.ErrUserNotFound
		}
		var err error
		t, err = getOwned(tx, user, id)
		if err != nil {
			return err
		}
		if !t.RevokedAt.IsZero() {
			return nil
		}
		t.RevokedAt = token.Clock(at)
		return put(tx, &t)
	})
	if err != nil {
		return token.Token{}, err
	}
	return t, nil
}

// List returns user's tokens, newest first, or token.ErrUserNotFound if the
// user owns none.
func (s *Store) List(user string) ([]token.Token, error) {
	var out []token.Token
	err := s.db.View(func(tx *bolt.Tx) error {
		ub := tx.Bucket(bucketUsers).Bucket([]byte(user))
		if ub == nil {
			return token.ErrUserNotFound
		}
		c := ub.Cursor()
		for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
			if len(k) != 8 {
				return fmt.Errorf("user %q: %w", user, ErrCorrupt)
			}
			t, err := get(tx, binary.BigEndian.Uint64(k))
			if err != nil {
				return err
			}
			out = append(out, t)
		}
		return nil
	})
	return out, err
}

func put(tx *bolt.Tx, t *token.Token) error {
	val, err := encode(t)
	if err != nil {
		return err
	}
	key := idKey(t.ID)
	return tx.Bucket(bucketTokens).Put(key[:], val)
}

func idKey(id uint64) [8]byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], id)
	return k
}

// record is the stored form of a token. Times are Unix seconds, 0 for
// "never"; the secret is present only as its hash.
type record struct {
	User       string   `json:"user"`
	Name       string   `json:"name"`
	Hash       []byte   `json:"hash"`
	Created    int64    `json:"created"`
	Expires    int64    `json:"expires,omitempty"`
	Revoked    int64    `json:"revoked,omitempty"`
	LastUsed   int64    `json:"last_used,omitempty"`
	Uses       uint64   `json:"uses,omitempty"`
	AllowedIPs []string `json:"allowed_ips,omitempty"`
}

func encode(t *token.Token) ([]byte, error) {
	return json.Marshal(record{
		User:       t.UserID,
		Name:       t.Name,
		Hash:       t.SecretHash[:],
		Created:    unix(t.CreatedAt),
		Expires:    unix(t.ExpiresAt),
		Revoked:    unix(t.RevokedAt),
		LastUsed:   unix(t.LastUsedAt),
		Uses:       t.UsageCount,
		AllowedIPs: t.AllowedIPs.Strings(),
	})
}

// decode parses a stored record. It copies everything out of val, which
// bbolt owns only until the transaction ends.
func decode(id uint64, val []byte) (token.Token, error) {
	var r record
	dec := json.NewDecoder(bytes.NewReader(val))
	if err := dec.Decode(&r); err != nil {
		return token.Token{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	t := token.Token{
		ID:         id,
		UserID:     r.User,
		Name:       r.Name,
		CreatedAt:  fromUnix(r.Created),
		ExpiresAt:  fromUnix(r.Expires),
		RevokedAt:  fromUnix(r.Revoked),
		LastUsedAt: fromUnix(r.LastUsed),
		UsageCount: r.Uses,
	}
	if copy(t.SecretHash[:], r.Hash) != len(t.SecretHash) {
		return token.Token{}, fmt.Errorf("%w: bad secret hash", ErrCorrupt)
	}
	for _, s := range r.AllowedIPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return token.Token{}, fmt.Errorf("%w: bad allowed IP %q", ErrCorrupt, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		t.AllowedIPs = append(t.AllowedIPs, p)
	}
	return t, nil
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func fromUnix(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}
