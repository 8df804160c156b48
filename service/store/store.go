// Package store keeps tokens in one bbolt file.
//
// Layout (schema version 3):
//
//	meta     "schema" → version, one byte; "usage_batch" → the last usage
//	         batch applied (8-byte big-endian); "ready_check" → the time of
//	         the last write check
//	tokens   id (8-byte big-endian) → record (binary, record.go; schema 1
//	         wrote JSON, migrated on open)
//	secrets  SHA-256 of the secret → id
//	users    user id → bucket of that user's token ids → empty
//	live     user id → bucket of that user's unrevoked token ids → expiry
//	         (8-byte big-endian Unix seconds, 0 for none); the quota counts
//	         from it and status=active lists walk it; a create under a quota
//	         prunes the user's expired entries
//	idempotency  SHA-256 of (user, Idempotency-Key) → record (JSON)
//
// Ids come from the tokens bucket's sequence, so they are unique across all
// users and never reused. Every method runs in one transaction, so a token,
// its secret index, its user index and its live index entry are written
// together or not at all.
package store

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// SchemaVersion is the layout this package reads and writes. Version 1
// stored token records as JSON; version 2 stores them in a compact binary
// form (record.go); version 3 adds the live index. Open migrates an older
// file in place.
const SchemaVersion = 3

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

// openError says that opening path failed with err, naming path once: a
// file system error on path itself names it already.
func openError(path string, err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) && pathErr.Path == path {
		return err
	}
	return fmt.Errorf("open %s: %w", path, err)
}

// ErrUnavailable means a transaction could not be begun or committed: for
// a write, the disk is full, the file may not grow, or the file system went
// read-only or failed, and reads still work; for any call, the database is
// closed or unreadable. Nothing of the transaction was written (unless the
// error is also ErrNotDurable), and the same call may succeed later. It
// wraps the cause, so errors.Is sees both. Errors of the transaction's own
// logic (token.ErrNotFound, token.ErrConflict, ErrCorrupt, ...) are never
// it.
var ErrUnavailable = errors.New("storage unavailable")

// ErrNotDurable, always with ErrUnavailable, means a write's commit failed
// only at its last step, the sync of the new meta page: the write is in
// the file's pages that later reads and writes see, so it took effect for
// this process, but the disk may not hold it, and a crash may undo it.
// bbolt reports this as a failed commit.
var ErrNotDurable = errors.New("write took effect but may not be on disk")

var (
	bucketMeta    = []byte("meta")
	bucketTokens  = []byte("tokens")
	bucketSecrets = []byte("secrets")
	bucketUsers   = []byte("users")
	bucketIdem    = []byte("idempotency")
	bucketLive    = []byte("live")
	keySchema     = []byte("schema")
	keyBatch      = []byte("usage_batch")
)

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for another process to release the file;
	// zero means one second. bbolt would otherwise wait forever.
	LockTimeout time.Duration
	// CacheEntries bounds the cache of recently authenticated tokens; zero
	// means DefaultCacheEntries, negative disables it.
	CacheEntries int
	// MustExist refuses to create a missing file, for commands that only
	// read or change existing tokens and must not leave an empty database
	// behind on a mistyped path.
	MustExist bool
}

// Store is a bbolt-backed token store, safe for concurrent use.
type Store struct {
	db    *bolt.DB
	cache *lookupCache

	checkMu  sync.Mutex
	checking *writeCheck // the write check in flight, if any

	// writeMu orders each write's commit and the cache upkeep after it, so
	// that upkeep happens in commit order (bbolt orders only commits).
	writeMu sync.Mutex
	// hookCommitted, if set, runs between a write's commit and its cache
	// upkeep. Tests only.
	hookCommitted func()
	// hookCommitErr, if set, runs after a write commits; an error it
	// returns is taken for one bbolt returned from that commit, as a
	// failed sync of the meta page makes it do. Tests only.
	hookCommitErr func() error
}

// writeCheck is one CheckWritable write, which any number of callers may
// wait for.
type writeCheck struct {
	done chan struct{} // closed when err is set
	err  error
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
	if err := precheck(path); err != nil {
		return nil, openError(path, err)
	}
	db, err := openBolt(path, timeout)
	var pathErr *fs.PathError
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("open %s: %w", path, ErrInUse)
	case errors.As(err, &pathErr):
		return nil, openError(path, err)
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
	entries := opts.CacheEntries
	if entries == 0 {
		entries = DefaultCacheEntries
	}
	return &Store{db: db, cache: newLookupCache(entries)}, nil
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
	for _, name := range [][]byte{bucketTokens, bucketSecrets, bucketUsers, bucketIdem, bucketLive} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	if v := meta.Get(keySchema); v[0] < SchemaVersion {
		if err := migrate(tx, v[0], time.Now()); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v[0], SchemaVersion, err)
		}
		return meta.Put(keySchema, []byte{SchemaVersion})
	}
	return nil
}

// migrate upgrades a file from schema version from, in the open
// transaction, so a failed migration leaves the file as it was. A version
// no tokend ever wrote (0) is corruption, not something to relabel.
func migrate(tx *bolt.Tx, from byte, now time.Time) error {
	if from < 1 {
		return fmt.Errorf("%w: schema version %d", ErrCorrupt, from)
	}
	if from < 2 {
		if err := migrateBinary(tx); err != nil {
			return err
		}
	}
	if from < 3 {
		return buildLive(tx, now)
	}
	return nil
}

// migrateBinary rewrites every token record from JSON to the binary form.
func migrateBinary(tx *bolt.Tx) error {
	b := tx.Bucket(bucketTokens)
	var ts []token.Token
	err := b.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return ErrCorrupt
		}
		t, err := decodeJSON(binary.BigEndian.Uint64(k), v)
		if err != nil {
			return err
		}
		ts = append(ts, t)
		return nil
	})
	if err != nil {
		return err
	}
	for i := range ts {
		if err := put(tx, &ts[i]); err != nil {
			return err
		}
	}
	return nil
}

// buildLive fills the live index from the tokens: every token neither
// revoked nor expired at now (an expired token never counts again). It
// reads the tokens in chunks, writing each chunk's entries before reading
// on with a fresh cursor, since bbolt may remap the file as the writes
// grow it; so a file of any size is indexed in bounded memory. Tokens are
// indexed under the owner their record names: the records are the truth,
// and Verify reports an owner list that disagrees.
func buildLive(tx *bolt.Tx, now time.Time) error {
	const chunk = 4096
	var batch []token.Token
	var resume []byte
	for {
		c := tx.Bucket(bucketTokens).Cursor()
		k, v := c.First()
		if resume != nil {
			k, v = c.Seek(resume)
		}
		batch = batch[:0]
		for ; k != nil && len(batch) < chunk; k, v = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("token key %x: %w", k, ErrCorrupt)
			}
			id := binary.BigEndian.Uint64(k)
			t, err := decode(id, v)
			if err != nil {
				return fmt.Errorf("token %d: %w", id, err)
			}
			if t.Status(now) == token.StatusActive {
				batch = append(batch, t)
			}
		}
		resume = slices.Clone(k)
		for i := range batch {
			if err := setLive(tx, &batch[i]); err != nil {
				return err
			}
		}
		if resume == nil {
			return nil
		}
	}
}

// view runs fn in a read transaction. As with update, an error fn returns
// comes back as it is, and a failure to begin the transaction (the file
// closed or unreadable) is ErrUnavailable wrapping the cause.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	return inTx(s.db, false, fn)
}

// inTx runs fn in a transaction of db, writable or not: fn's error comes
// back as it is, and any other error, from beginning or committing the
// transaction, is ErrUnavailable wrapping it. (It calls db.View and
// db.Update itself, rather than taking either as a func value, so that fn
// does not escape: a cached Lookup allocates nothing.)
func inTx(db *bolt.DB, writable bool, fn func(*bolt.Tx) error) error {
	var fnErr error
	body := func(tx *bolt.Tx) error {
		fnErr = fn(tx)
		return fnErr
	}
	var err error
	if writable {
		err = db.Update(body)
	} else {
		err = db.View(body)
	}
	if err != nil && fnErr == nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// update runs fn in a write transaction, the one way this package writes.
// An error fn returns comes back as it is, so domain errors stay domain
// errors. Any other failure happened beginning or committing the
// transaction, that is in the file's I/O, and is ErrUnavailable wrapping
// the cause: bbolt reports those in many shapes (a wrapped errno, a
// formatted "file resize error", ErrDatabaseReadOnly), so matching each
// would miss some.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	return s.updateThen(fn, nil)
}

// updateThen is update, followed by after (if the write committed) before
// any other write can commit. Writes that change cached tokens do their
// cache upkeep in after: were it done once the next write is free to
// commit, a flush's late refresh could restore a copy of a token that a
// revoke committed meanwhile.
//
// A failed commit may have taken effect all the same (ErrNotDurable): then
// after runs too, for the cache must follow what reads of the file see (a
// revoked token must not go on authenticating from the cache).
func (s *Store) updateThen(fn func(*bolt.Tx) error, after func()) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var txid int
	err := inTx(s.db, true, func(tx *bolt.Tx) error {
		txid = tx.ID()
		return fn(tx)
	})
	if err == nil && s.hookCommitErr != nil {
		if herr := s.hookCommitErr(); herr != nil {
			err = fmt.Errorf("%w: %w", ErrUnavailable, herr)
		}
	}
	if errors.Is(err, ErrUnavailable) && s.tookEffect(txid) {
		err = fmt.Errorf("%w: %w", ErrNotDurable, err)
	}
	if err == nil || errors.Is(err, ErrNotDurable) {
		if s.hookCommitted != nil {
			s.hookCommitted()
		}
		if after != nil {
			after()
		}
	}
	return err
}

// tookEffect reports whether the write transaction txid (zero if it never
// began) is visible to a new read transaction, whose id is that of the
// last write whose meta page is in the file. bbolt rolls back a commit
// whose meta page sync fails, but the page is written already: the file
// as read by this process has the write.
func (s *Store) tookEffect(txid int) bool {
	if txid == 0 {
		return false
	}
	var seen bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		seen = tx.ID() >= txid
		return nil
	})
	return seen
}

// CheckWritable commits a small write (the time of the check, in the meta
// bucket), proving the file is open and the disk takes writes. Readiness
// probes and the health monitor use it; it costs one fsync.
//
// It returns when ctx ends even if the write does not: a disk that hangs
// (an fsync that never returns, a write lock held by a stuck transaction)
// is reported as ctx's error rather than hanging the probe. At most one
// check writes at a time; callers that arrive meanwhile wait for it, so
// probes of a hung disk do not pile up goroutines.
func (s *Store) CheckWritable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.checkMu.Lock()
	c := s.checking
	if c == nil {
		c = &writeCheck{done: make(chan struct{})}
		s.checking = c
		go func() {
			c.err = s.update(func(tx *bolt.Tx) error {
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(time.Now().Unix()))
				return tx.Bucket(bucketMeta).Put([]byte("ready_check"), b[:])
			})
			s.checkMu.Lock()
			s.checking = nil
			s.checkMu.Unlock()
			close(c.done)
		}()
	}
	s.checkMu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return fmt.Errorf("the write check did not finish: %w", ctx.Err())
	}
}

// Size returns the size of the database file in bytes, as of the last
// committed transaction.
func (s *Store) Size() int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error {
		n = tx.Size()
		return nil
	})
	return n
}

// Close closes the database file. Every read and write after it is
// ErrUnavailable, a lookup of a token cached before included: the cache is
// emptied once the file is closed, and a lookup that read the file before
// cannot fill it after (its fill predates the reset).
func (s *Store) Close() error {
	err := s.db.Close()
	s.cache.reset()
	return err
}

// CreateOptions govern Create.
type CreateOptions struct {
	// Now is the time of the request, for the live-token count and the
	// idempotency window.
	Now time.Time
	// MaxLive refuses the create with token.ErrConflict if the user already
	// has this many active tokens; zero means no limit.
	MaxLive int
	// Idempotency, if set, makes the create idempotent under its key.
	Idempotency *Idempotency
}

// Idempotency identifies a create request for safe retries.
type Idempotency struct {
	// Key is a hash of the user and the client's Idempotency-Key.
	Key [32]byte
	// Fingerprint is a hash of the request; a retry must match it.
	Fingerprint [32]byte
	// Sealed is the new secret, encrypted under the client's key, so that a
	// retry can be answered with it while the file never holds it in the
	// clear.
	Sealed []byte
	// Window is how long the key is remembered.
	Window time.Duration
}

// Replay is what Create returns instead of creating, for a retry of an
// earlier idempotent create.
type Replay struct {
	// Sealed is the Idempotency.Sealed of the original request.
	Sealed []byte
}

// Caller is the credential a write is asked with: the token that
// authenticated the request and the hash of the secret it presented,
// which must be the token's current one (a previous secret only reads).
// A write on behalf of a Caller (Store.As) checks it again in its own
// transaction, so that a credential that lost the right to change tokens
// after the request was authenticated (its token revoked or expired, or
// rotated by a concurrent request) changes nothing: two rotations asked
// with one secret cannot both succeed, and a revoked token's writes still
// in flight when the revoke commits do not commit after it. The zero
// Caller is the administrator on the local socket, who is not a token and
// is not checked.
type Caller struct {
	TokenID uint64
	Hash    secret.Hash
	// At is the time of the request, for the expiry check.
	At time.Time
}

// Errors of a Caller's check.
var (
	// ErrCallerRotated means the caller's secret is now its token's
	// previous one, in a grace period: a rotation committed after the
	// request was authenticated.
	ErrCallerRotated = errors.New("the caller's secret was rotated out")
	// ErrCallerInvalid means the caller's credential no longer
	// authenticates: its token was revoked, had expired at the request's
	// time or is gone, or its secret was rotated out with no grace period.
	ErrCallerInvalid = errors.New("the caller's credential no longer authenticates")
)

// check returns an error of the Caller's check if c may not write at c.At.
func (c Caller) check(tx *bolt.Tx) error {
	if c.TokenID == 0 {
		return nil
	}
	t, err := get(tx, c.TokenID)
	switch {
	case errors.Is(err, token.ErrNotFound):
		return ErrCallerInvalid
	case err != nil:
		return err
	case t.Status(c.At) != token.StatusActive:
		return ErrCallerInvalid
	case subtle.ConstantTimeCompare(c.Hash[:], t.SecretHash[:]) == 1:
		return nil
	case matches(&t, c.Hash, c.At):
		return ErrCallerRotated // the previous secret, in its grace period
	}
	return ErrCallerInvalid // rotated out with no grace, or rotated twice
}

// Writer is the store's writes on behalf of one Caller; Store.As makes
// one. The Store's own write methods are its writes as the zero Caller.
type Writer struct {
	s  *Store
	as Caller
}

// As returns the store's writes on behalf of c: each checks c in its own
// transaction first, and fails with ErrCallerRotated or ErrCallerInvalid,
// writing nothing, if c may no longer change tokens.
func (s *Store) As(c Caller) Writer { return Writer{s: s, as: c} }

// Create is Store.Create, checking w's Caller.
func (w Writer) Create(t token.Token, opts CreateOptions) (token.Token, *Replay, error) {
	return w.s.create(w.as, t, opts)
}

// Mutate is Store.Mutate, checking w's Caller.
func (w Writer) Mutate(user string, id uint64, fn func(*token.Token) error) (token.Token, error) {
	return w.s.mutate(w.as, user, id, fn)
}

// Revoke is Store.Revoke, checking w's Caller.
func (w Writer) Revoke(user string, id uint64, at time.Time) (token.Token, error) {
	return w.s.mutate(w.as, user, id, revokeAt(at))
}

// Create stores a new token, assigning its ID, unless the options refuse
// it. For a retry of an idempotent create within its window it writes
// nothing and returns the token created the first time with a non-nil
// Replay; a reused key with a different fingerprint is token.ErrConflict.
// t must be valid; its hash must be unique (a collision of 190-bit secrets
// means a broken RNG).
func (s *Store) Create(t token.Token, opts CreateOptions) (token.Token, *Replay, error) {
	return s.create(Caller{}, t, opts)
}

func (s *Store) create(as Caller, t token.Token, opts CreateOptions) (token.Token, *Replay, error) {
	var replay *Replay
	if idem := opts.Idempotency; idem != nil {
		// A retry is answered from a read transaction: it writes nothing,
		// so it costs no disk sync and works while the disk takes no
		// writes. The write transaction below looks again, for a retry
		// racing its original.
		var orig token.Token
		err := s.view(func(tx *bolt.Tx) (err error) {
			if err := as.check(tx); err != nil {
				return err
			}
			orig, replay, err = replayOf(tx, idem, t.UserID, opts.Now)
			return err
		})
		if err != nil {
			return token.Token{}, nil, fmt.Errorf("create token: %w", err)
		}
		if replay != nil {
			return orig, replay, nil
		}
	}
	var refused error
	err := s.update(func(tx *bolt.Tx) error {
		if err := as.check(tx); err != nil {
			return err
		}
		if idem := opts.Idempotency; idem != nil {
			orig, rep, err := replayOf(tx, idem, t.UserID, opts.Now)
			if err != nil {
				return err
			}
			if rep != nil {
				t, replay = orig, rep
				return nil
			}
		}
		if opts.MaxLive > 0 {
			n, pruned, err := countLive(tx, t.UserID, opts.Now)
			if err != nil {
				return err
			}
			if n >= opts.MaxLive {
				refused = fmt.Errorf("%w: the limit of %d live tokens per user is reached; revoke one first", token.ErrConflict, opts.MaxLive)
				if pruned {
					// Keep the prune, or a user at the limit would
					// walk the same expired entries on every attempt.
					return nil
				}
				return refused
			}
		}
		if err := insert(tx, &t); err != nil {
			return err
		}
		if idem := opts.Idempotency; idem != nil {
			v, err := json.Marshal(idemRecord{Fingerprint: idem.Fingerprint[:], TokenID: t.ID, Created: opts.Now.Unix(), CreatedNs: opts.Now.UnixNano(), Sealed: idem.Sealed})
			if err != nil {
				return err
			}
			return tx.Bucket(bucketIdem).Put(idem.Key[:], v)
		}
		return nil
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		return token.Token{}, nil, fmt.Errorf("create token: %w", err)
	}
	return t, replay, nil
}

// CreateBatch stores many new tokens in one transaction, assigning their
// IDs, for seeding large databases (benchmarks, imports); Create's quota
// and idempotency rules do not apply. It returns the tokens with IDs.
func (s *Store) CreateBatch(ts []token.Token) ([]token.Token, error) {
	out := make([]token.Token, len(ts))
	err := s.update(func(tx *bolt.Tx) error {
		for i, t := range ts {
			if err := insert(tx, &t); err != nil {
				return err
			}
			out[i] = t
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create tokens: %w", err)
	}
	return out, nil
}

// insert stores a new token with a fresh ID, with its secret and user
// index entries.
func insert(tx *bolt.Tx, t *token.Token) error {
	secrets := tx.Bucket(bucketSecrets)
	if secrets.Get(t.SecretHash[:]) != nil {
		return errors.New("secret hash collision")
	}
	id, err := tx.Bucket(bucketTokens).NextSequence()
	if err != nil {
		return err
	}
	t.ID = id
	key := idKey(id)
	if err := put(tx, t); err != nil {
		return err
	}
	if err := secrets.Put(t.SecretHash[:], key[:]); err != nil {
		return err
	}
	user, err := tx.Bucket(bucketUsers).CreateBucketIfNotExists([]byte(t.UserID))
	if err != nil {
		return err
	}
	if err := user.Put(key[:], nil); err != nil {
		return err
	}
	return setLive(tx, t)
}

// setLive keeps t's entry in the live index in step with t: an unrevoked
// token is listed with its expiry, a revoked one is not.
func setLive(tx *bolt.Tx, t *token.Token) error {
	key := idKey(t.ID)
	if !t.RevokedAt.IsZero() {
		lb := tx.Bucket(bucketLive).Bucket([]byte(t.UserID))
		if lb == nil {
			return nil
		}
		return lb.Delete(key[:])
	}
	lb, err := tx.Bucket(bucketLive).CreateBucketIfNotExists([]byte(t.UserID))
	if err != nil {
		return err
	}
	exp := liveValue(t)
	return lb.Put(key[:], exp[:])
}

// liveValue is t's value in the live index: its expiry.
func liveValue(t *token.Token) [8]byte {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(unix(t.ExpiresAt)))
	return v
}

// countLive counts user's active tokens at now from the live index, so its
// cost follows the tokens the user holds, not every token the user ever
// had. Entries expired at now are pruned, and pruned reports whether any
// were: expiry is fixed when a token is created, so an expired token never
// counts again. (A clock stepped back after a prune undercounts by the
// pruned tokens until it passes their expiry again, and leaves them out of
// status=active lists meanwhile, though they authenticate; the quota is a
// limit on abuse, not a ledger.)
func countLive(tx *bolt.Tx, user string, now time.Time) (n int, pruned bool, err error) {
	lb := tx.Bucket(bucketLive).Bucket([]byte(user))
	if lb == nil {
		return 0, false, nil
	}
	var expired [][]byte
	err = lb.ForEach(func(k, v []byte) error {
		if len(k) != 8 || len(v) != 8 {
			return fmt.Errorf("live tokens of user %q: %w", user, ErrCorrupt)
		}
		if exp := int64(binary.BigEndian.Uint64(v)); exp != 0 && !now.Before(time.Unix(exp, 0)) {
			expired = append(expired, slices.Clone(k))
			return nil
		}
		n++
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	for _, k := range expired {
		if err := lb.Delete(k); err != nil {
			return 0, false, err
		}
	}
	return n, len(expired) > 0, nil
}

// replayOf returns the token created by an earlier request of user under
// idem's key, and a non-nil Replay, if that request is within the window;
// nil if there is none. A request within the window with another
// fingerprint is token.ErrConflict, and so is a key whose token another
// user owns: callers mix the user into the key, and if one ever failed to,
// a replay must still never hand out someone else's token.
func replayOf(tx *bolt.Tx, idem *Idempotency, user string, now time.Time) (token.Token, *Replay, error) {
	v := tx.Bucket(bucketIdem).Get(idem.Key[:])
	if v == nil {
		return token.Token{}, nil, nil
	}
	rec, err := decodeIdem(v)
	if err != nil {
		return token.Token{}, nil, err
	}
	if !now.Before(rec.Created.Add(idem.Window)) {
		return token.Token{}, nil, nil
	}
	if rec.Fingerprint != idem.Fingerprint {
		return token.Token{}, nil, fmt.Errorf("%w: this Idempotency-Key was used for a different request", token.ErrConflict)
	}
	orig, err := get(tx, rec.TokenID)
	if err != nil {
		return token.Token{}, nil, err
	}
	if orig.UserID != user {
		return token.Token{}, nil, fmt.Errorf("%w: this Idempotency-Key was used for a different request", token.ErrConflict)
	}
	return orig, &Replay{Sealed: rec.Sealed}, nil
}

// idemRecord is the stored form of an idempotent create.
type idemRecord struct {
	Fingerprint []byte `json:"fp"`
	TokenID     uint64 `json:"id"`
	// Created is the request's time in Unix seconds, rounded down, and
	// CreatedNs the same time in Unix nanoseconds. The window and purges
	// go by CreatedNs, so that a window is exactly as long as configured;
	// records written before it existed have only Created.
	Created   int64  `json:"created"`
	CreatedNs int64  `json:"created_ns,omitempty"`
	Sealed    []byte `json:"sealed"`
}

type idemEntry struct {
	Fingerprint [32]byte
	TokenID     uint64
	Created     time.Time
	Sealed      []byte
}

func decodeIdem(v []byte) (idemEntry, error) {
	var r idemRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return idemEntry{}, fmt.Errorf("%w: idempotency record: %v", ErrCorrupt, err)
	}
	e := idemEntry{TokenID: r.TokenID, Created: time.Unix(r.Created, 0), Sealed: r.Sealed}
	if r.CreatedNs != 0 {
		e.Created = time.Unix(0, r.CreatedNs)
	}
	if copy(e.Fingerprint[:], r.Fingerprint) != len(e.Fingerprint) {
		return idemEntry{}, fmt.Errorf("%w: idempotency record fingerprint", ErrCorrupt)
	}
	return e, nil
}

// PurgeIdempotency forgets idempotency keys created before cutoff and
// returns how many it removed.
func (s *Store) PurgeIdempotency(cutoff time.Time) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIdem)
		var stale [][]byte
		err := b.ForEach(func(k, v []byte) error {
			e, err := decodeIdem(v)
			if err != nil || e.Created.Before(cutoff) {
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(stale)
		return nil
	})
	return n, err
}

// GetForUser returns token id if user owns it, and token.ErrNotFound both
// when it does not exist and when someone else owns it. A user who owns no
// tokens at all is token.ErrUserNotFound.
func (s *Store) GetForUser(user string, id uint64) (token.Token, error) {
	var t token.Token
	err := s.view(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers).Bucket([]byte(user)) == nil {
			return token.ErrUserNotFound
		}
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

// Lookup finds the token whose secret (or, within a rotation's grace
// period at time at, previous secret) hashes to h, in a read-only
// transaction. It returns token.ErrNotFound for an unknown hash.
func (s *Store) Lookup(h secret.Hash, at time.Time) (token.Token, error) {
	t, ok, epoch := s.cache.get(h)
	if ok {
		if !matches(&t, h, at) {
			return token.Token{}, token.ErrNotFound
		}
		return t, nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		idv := tx.Bucket(bucketSecrets).Get(h[:])
		if len(idv) != 8 {
			return token.ErrNotFound
		}
		var err error
		t, err = get(tx, binary.BigEndian.Uint64(idv))
		if err != nil {
			return err
		}
		if !matches(&t, h, at) {
			return token.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return token.Token{}, err
	}
	s.cache.fill(h, t, epoch)
	return t, nil
}

// ApplyUsage adds counted uses to tokens in one transaction, stamping each
// with batch, and records batch as the last one applied. Uses of a token
// that no longer exists are dropped.
func (s *Store) ApplyUsage(batch uint64, deltas map[uint64]usage.Delta) error {
	applied := make([]token.Token, 0, len(deltas))
	// In key order, a flush walks the B-tree's pages once, front to back,
	// instead of jumping to a random page (cold in the CPU's caches) for
	// every token.
	ids := slices.Sorted(maps.Keys(deltas))
	return s.updateThen(func(tx *bolt.Tx) error {
		for _, id := range ids {
			d := deltas[id]
			t, err := get(tx, id)
			if errors.Is(err, token.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			t.UsageCount += d.Count
			if last := time.Unix(d.Last, 0).UTC(); last.After(t.LastUsedAt) {
				t.LastUsedAt = last
			}
			t.UsageBatch = batch
			if err := put(tx, &t); err != nil {
				return err
			}
			applied = append(applied, t)
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], batch)
		return tx.Bucket(bucketMeta).Put(keyBatch, b[:])
	}, func() { s.cache.refresh(applied) })
}

// LastUsageBatch returns the number of the last usage batch applied.
func (s *Store) LastUsageBatch() (uint64, error) {
	var n uint64
	err := s.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyBatch); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return n, err
}

// matches reports whether h is t's secret hash, or its previous one within
// the rotation grace period.
func matches(t *token.Token, h secret.Hash, at time.Time) bool {
	if subtle.ConstantTimeCompare(h[:], t.SecretHash[:]) == 1 {
		return true
	}
	return !t.PrevSecretUntil.IsZero() && at.Before(t.PrevSecretUntil) &&
		subtle.ConstantTimeCompare(h[:], t.PrevSecretHash[:]) == 1
}

// Revoke revokes user's token id at time at. Revoking a revoked token keeps
// its first revocation time and is not an error.
func (s *Store) Revoke(user string, id uint64, at time.Time) (token.Token, error) {
	return s.mutate(Caller{}, user, id, revokeAt(at))
}

// revokeAt is Revoke's change to a token.
func revokeAt(at time.Time) func(*token.Token) error {
	return func(t *token.Token) error {
		if t.RevokedAt.IsZero() {
			t.RevokedAt = token.Clock(at)
		}
		return nil
	}
}

// Mutate applies fn to user's token id in one transaction and stores the
// result, keeping the secret index in step with the token's current and
// previous secret hashes (so a rotation is one call). If fn returns an
// error nothing is written. It returns token.ErrUserNotFound for an
// unknown user and token.ErrNotFound for a token user does not own.
func (s *Store) Mutate(user string, id uint64, fn func(*token.Token) error) (token.Token, error) {
	return s.mutate(Caller{}, user, id, fn)
}

func (s *Store) mutate(as Caller, user string, id uint64, fn func(*token.Token) error) (token.Token, error) {
	var t, before token.Token
	err := s.updateThen(func(tx *bolt.Tx) error {
		if err := as.check(tx); err != nil {
			return err
		}
		if tx.Bucket(bucketUsers).Bucket([]byte(user)) == nil {
			return token.ErrUserNotFound
		}
		var err error
		if before, err = getOwned(tx, user, id); err != nil {
			return err
		}
		t = before
		t.AllowedIPs = slices.Clone(before.AllowedIPs)
		if err := fn(&t); err != nil {
			return err
		}
		t.ID, t.UserID = before.ID, before.UserID
		if err := reindex(tx, &before, &t); err != nil {
			return err
		}
		if !t.RevokedAt.Equal(before.RevokedAt) || !t.ExpiresAt.Equal(before.ExpiresAt) {
			if err := setLive(tx, &t); err != nil {
				return err
			}
		}
		return put(tx, &t)
	}, func() {
		// The old and new hashes: a rotation moves the token between them.
		s.cache.drop(t.SecretHash, t.PrevSecretHash, before.SecretHash, before.PrevSecretHash)
	})
	if err != nil {
		return token.Token{}, err
	}
	return t, nil
}

// reindex updates the secret index from before's hashes to after's.
func reindex(tx *bolt.Tx, before, after *token.Token) error {
	secrets := tx.Bucket(bucketSecrets)
	key := idKey(after.ID)
	var zero [32]byte
	live := func(t *token.Token) [][32]byte {
		hs := [][32]byte{t.SecretHash}
		if t.PrevSecretHash != zero {
			hs = append(hs, t.PrevSecretHash)
		}
		return hs
	}
	old, cur := live(before), live(after)
	for _, h := range old {
		if !slices.Contains(cur, h) {
			if err := secrets.Delete(h[:]); err != nil {
				return err
			}
		}
	}
	for _, h := range cur {
		if slices.Contains(old, h) {
			continue
		}
		if secrets.Get(h[:]) != nil {
			return errors.New("secret hash collision")
		}
		if err := secrets.Put(h[:], key[:]); err != nil {
			return err
		}
	}
	return nil
}

// List returns all of user's tokens, newest first, or
// token.ErrUserNotFound if the user owns none.
func (s *Store) List(user string) ([]token.Token, error) {
	ts, _, err := s.ListPage(user, Page{})
	return ts, err
}

// Page selects part of a user's tokens for ListPage.
type Page struct {
	// Before, if not zero, starts after the token with this id: the cursor
	// of the previous page. Ids only grow, so pages stay stable while new
	// tokens are created.
	Before uint64
	// Limit is the most tokens to return; zero means all.
	Limit int
	// Keep, if set, skips tokens for which it returns false.
	Keep func(*token.Token) bool
	// Live walks only the user's live index: unrevoked tokens, less
	// expired ones a create has pruned. Set it when Keep accepts only
	// active tokens, so that a list of them costs what the user holds,
	// not the user's whole history. Keep still judges each token: the
	// index may hold tokens that expired since they were listed (only a
	// create under a quota prunes, so with no quota it holds every
	// unrevoked token).
	Live bool
}

// ListPage returns a page of user's tokens, newest first, and the id to
// pass as Page.Before for the next page (zero on the last page). It
// returns token.ErrUserNotFound if the user owns no tokens.
func (s *Store) ListPage(user string, p Page) ([]token.Token, uint64, error) {
	var out []token.Token
	var next uint64
	err := s.view(func(tx *bolt.Tx) error {
		ub := tx.Bucket(bucketUsers).Bucket([]byte(user))
		if ub == nil {
			return token.ErrUserNotFound
		}
		if p.Live {
			if ub = tx.Bucket(bucketLive).Bucket([]byte(user)); ub == nil {
				return nil
			}
		}
		c := ub.Cursor()
		var k []byte
		if p.Before != 0 {
			start := idKey(p.Before)
			k, _ = c.Seek(start[:])
			if k == nil {
				k, _ = c.Last()
			}
			for k != nil && bytes.Compare(k, start[:]) >= 0 {
				k, _ = c.Prev()
			}
		} else {
			k, _ = c.Last()
		}
		for ; k != nil; k, _ = c.Prev() {
			if len(k) != 8 {
				return fmt.Errorf("user %q: %w", user, ErrCorrupt)
			}
			t, err := get(tx, binary.BigEndian.Uint64(k))
			if err != nil {
				return err
			}
			if p.Keep != nil && !p.Keep(&t) {
				continue
			}
			if p.Limit > 0 && len(out) == p.Limit {
				next = out[len(out)-1].ID
				break
			}
			out = append(out, t)
		}
		return nil
	})
	return out, next, err
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

func prevHash(t *token.Token) []byte {
	if t.PrevSecretHash == ([32]byte{}) {
		return nil
	}
	return t.PrevSecretHash[:]
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
