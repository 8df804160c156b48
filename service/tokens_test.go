package service

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// openStore opens a store in a fresh file, closed when the test ends.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "t.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestWritesRunOnceWhileUsageFlushes checks that a change is applied
// exactly once even when usage flushes commit while it runs. (Retrying a
// write as if it were a read once minted duplicate tokens and let a
// rotation forget the secret it was meant to keep for the grace period.)
func TestWritesRunOnceWhileUsageFlushes(t *testing.T) {
	st := openStore(t)
	rec, err := usage.New(st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tokens := NewTokens(st, rec, DefaultLimits(), time.Now)
	c, err := tokens.Create(context.Background(), CreateInput{UserID: "alice", Name: "rotating"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // keep flushes committing
		defer wg.Done()
		for ctx.Err() == nil {
			rec.Record(c.Token.ID, time.Now())
			if err := rec.Flush(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	sec := c.Secret
	for i := range 100 {
		r, err := tokens.Rotate(context.Background(), store.Caller{}, "alice", int64(c.Token.ID), time.Hour, "grace")
		if err != nil {
			t.Fatal(err)
		}
		// The secret before this rotation must still work: a rotation run
		// twice would have made the new secret the "previous" one.
		if got, err := st.Lookup(secret.HashOf(sec), time.Now()); err != nil || got.ID != c.Token.ID {
			t.Fatalf("rotation %d: the previous secret stopped working at once: %v", i, err)
		}
		sec = r.Secret
	}
	before, _, _ := tokens.List(ListInput{UserID: "alice", Limit: -1})
	for range 50 {
		if _, err := tokens.Create(context.Background(), CreateInput{UserID: "alice", Name: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	after, _, _ := tokens.List(ListInput{UserID: "alice", Limit: -1})
	if len(after)-len(before) != 50 {
		t.Errorf("50 creates made %d tokens", len(after)-len(before))
	}
}

// TestWriteEndsAtTheCallDeadline holds the store's writer lock, as a hung
// disk would, and checks that a revoke gives up when its context (the
// call's deadline, which the server caps) ends, instead of waiting for the
// lock; and that the write, once the lock is free, still happens exactly
// as asked.
func TestWriteEndsAtTheCallDeadline(t *testing.T) {
	st := openStore(t)
	tokens := NewTokens(st, nil, DefaultLimits(), time.Now)
	c, err := tokens.Create(context.Background(), CreateInput{UserID: "alice", Name: "stuck"})
	if err != nil {
		t.Fatal(err)
	}
	release, held := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a write that holds the lock until released
		defer wg.Done()
		_, _ = st.Mutate("alice", c.Token.ID, func(*token.Token) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := tokens.Revoke(ctx, store.Caller{}, "alice", int64(c.Token.ID)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Revoke while the writer lock is held = %v, want DeadlineExceeded", err)
	}
	close(release)
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := st.GetForUser("alice", c.Token.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !got.RevokedAt.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the timed-out revoke never took effect once the lock was free")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestListByStatusAfterPrune lists by status after a create has pruned an
// expired token from the live index, which lists of active tokens walk:
// the expired token must still be listed as expired, and every status
// must list exactly its tokens.
func TestListByStatusAfterPrune(t *testing.T) {
	st := openStore(t)
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tokens := NewTokens(st, nil, DefaultLimits(), func() time.Time { return now })
	ctx := context.Background()
	create := func(name string, expiresIn time.Duration) uint64 {
		t.Helper()
		c, err := tokens.Create(ctx, CreateInput{UserID: "alice", Name: name, ExpiresIn: expiresIn})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		return c.Token.ID
	}
	short := create("short", time.Hour)
	kept := create("kept", 0)
	gone := create("gone", 0)
	if _, err := tokens.Revoke(ctx, store.Caller{}, "alice", int64(gone)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	fresh := create("fresh", 0) // prunes short from the live index

	for status, want := range map[string][]uint64{
		"active":  {fresh, kept},
		"expired": {short},
		"revoked": {gone},
		"":        {fresh, gone, kept, short},
	} {
		for _, limit := range []int{1, 0} {
			var got []uint64
			cursor := ""
			for page := 0; ; page++ {
				ts, next, err := tokens.List(ListInput{UserID: "alice", Status: status, Limit: limit, Cursor: cursor})
				if err != nil {
					t.Fatalf("List(status %q, limit %d) = %v", status, limit, err)
				}
				for _, tk := range ts {
					got = append(got, tk.ID)
				}
				if next == "" || page > 10 {
					break
				}
				cursor = next
			}
			if !slices.Equal(got, want) {
				t.Errorf("List(status %q, limit %d) = %v, want %v", status, limit, got, want)
			}
		}
	}
}

// TestListStatusFilterAndShownStatusAgree lists with ?status=active on a
// clock that moves on every read, past a token's expiry: the filter and
// the status shown must be judged at one time, so no token is listed
// under status=active showing "expired".
func TestListStatusFilterAndShownStatusAgree(t *testing.T) {
	st := openStore(t)
	start := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	reads := 0
	clock := func() time.Time { // an hour later on every read
		mu.Lock()
		defer mu.Unlock()
		reads++
		return start.Add(time.Duration(reads) * time.Hour)
	}
	created, _, err := st.Create(token.Token{UserID: "alice", Name: "expiring", SecretHash: secret.HashOf("tkd_x"), CreatedAt: start,
		ExpiresAt: start.Add(90 * time.Minute)}, store.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc := NewTokenService(NewTokens(st, nil, DefaultLimits(), clock), clock)
	ctx := auth.NewContext(context.Background(), auth.Principal{UserID: "alice", TokenID: created.ID})
	resp, err := svc.ListTokens(ctx, &tokenv1.ListTokensRequest{Status: "active"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range resp.GetTokens() {
		if tk.GetStatus() != tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE {
			t.Errorf("status=active listed token %d as %v", tk.GetId(), tk.GetStatus())
		}
	}
}

// TestChangesRecheckTheCaller: a change is checked against the caller's
// credential as it stands when the change commits, not as authentication
// saw it. A request authenticated just before a concurrent rotation (or
// revoke) of its own token reaches the handler with a principal that is
// already stale; its change is refused as that credential would be now,
// and writes nothing.
func TestChangesRecheckTheCaller(t *testing.T) {
	st := openStore(t)
	tokens := NewTokens(st, nil, DefaultLimits(), time.Now)
	svc := NewTokenService(tokens, time.Now)
	ctxOf := func(c Created) context.Context { // as authentication left it
		return auth.NewContext(context.Background(), auth.Principal{UserID: "alice", TokenID: c.Token.ID, Token: c.Token})
	}
	mint := func(name string) Created {
		t.Helper()
		c, err := tokens.Create(context.Background(), CreateInput{UserID: "alice", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	count := func() int {
		t.Helper()
		ts, err := st.List("alice")
		if err != nil {
			t.Fatal(err)
		}
		return len(ts)
	}

	t.Run("rotated meanwhile", func(t *testing.T) {
		c := mint("rotated")
		ctx := ctxOf(c)
		// A concurrent rotation commits first.
		if _, err := tokens.Rotate(context.Background(), store.Caller{}, "alice", int64(c.Token.ID), time.Hour, "grace"); err != nil {
			t.Fatal(err)
		}
		after, err := st.GetForUser("alice", c.Token.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.RotateToken(ctx, &tokenv1.RotateTokenRequest{TokenId: int64(c.Token.ID)}); !errors.Is(err, auth.ErrPreviousSecret) {
			t.Errorf("second rotation with the replaced secret = %v, want ErrPreviousSecret", err)
		}
		now, err := st.GetForUser("alice", c.Token.ID)
		if err != nil {
			t.Fatal(err)
		}
		if now.SecretHash != after.SecretHash {
			t.Error("the refused rotation replaced the secret")
		}
	})

	t.Run("rotated meanwhile with no grace", func(t *testing.T) {
		c := mint("rotated at once")
		ctx := ctxOf(c)
		if _, err := tokens.Rotate(context.Background(), store.Caller{}, "alice", int64(c.Token.ID), 0, "grace"); err != nil {
			t.Fatal(err)
		}
		// The secret no longer authenticates at all: 401, not 403.
		if _, err := svc.RotateToken(ctx, &tokenv1.RotateTokenRequest{TokenId: int64(c.Token.ID)}); !errors.Is(err, auth.ErrInvalidToken) {
			t.Errorf("rotation with a secret rotated out at once = %v, want ErrInvalidToken", err)
		}
	})

	t.Run("revoked meanwhile", func(t *testing.T) {
		c := mint("revoked")
		ri := &request.Info{}
		ctx := request.NewContext(ctxOf(c), ri)
		if _, err := tokens.Revoke(context.Background(), store.Caller{}, "alice", int64(c.Token.ID)); err != nil {
			t.Fatal(err)
		}
		n := count()
		if _, err := svc.CreateToken(ctx, &tokenv1.CreateTokenRequest{Name: "minted by a revoked token"}); !errors.Is(err, auth.ErrInvalidToken) {
			t.Errorf("create by a token revoked meanwhile = %v, want ErrInvalidToken", err)
		}
		if !strings.Contains(ri.Failure, "revoked") {
			t.Errorf("request.Info.Failure = %q, want it to say why, for the log line", ri.Failure)
		}
		other := mint("other")
		if _, err := svc.RevokeToken(ctx, &tokenv1.RevokeTokenRequest{TokenId: int64(other.Token.ID)}); !errors.Is(err, auth.ErrInvalidToken) {
			t.Errorf("revoke by a token revoked meanwhile = %v, want ErrInvalidToken", err)
		}
		if count() != n+1 {
			t.Error("a token revoked meanwhile minted a token")
		}
		if tk, _ := st.GetForUser("alice", other.Token.ID); !tk.RevokedAt.IsZero() {
			t.Error("a token revoked meanwhile revoked another")
		}
	})

	t.Run("still current", func(t *testing.T) {
		c := mint("current")
		if _, err := svc.UpdateToken(ctxOf(c), &tokenv1.UpdateTokenRequest{TokenId: int64(c.Token.ID),
			Token: &tokenv1.TokenUpdate{Name: "renamed"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}); err != nil {
			t.Errorf("update with the current secret = %v", err)
		}
	})
}
