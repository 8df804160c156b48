package auth_test

import (
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// hotPath is a store with one token, an authenticator and its header.
func hotPath(tb testing.TB) (*auth.Authenticator, []string) {
	tb.Helper()
	st, err := store.Open(filepath.Join(tb.TempDir(), "t.db"), store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	sec, err := secret.New()
	if err != nil {
		tb.Fatal(err)
	}
	if _, _, err := st.Create(token.Token{UserID: "alice", Name: "bench", SecretHash: secret.HashOf(sec), CreatedAt: time.Now()}, store.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	rec, err := usage.New(st, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	return auth.New(st, rec, nil, time.Now), []string{"Bearer " + sec}
}

// TestAuthenticateAllocatesNothing pins the promise of the hot path: a
// successful authentication of a recently seen token (bearer parsing,
// checksum, hash, lookup, usage recording) allocates nothing.
func TestAuthenticateAllocatesNothing(t *testing.T) {
	a, header := hotPath(t)
	client := netip.MustParseAddr("127.0.0.1")
	if _, err := a.Authenticate(header, client); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := a.Authenticate(header, client); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Authenticate allocates %v times per call, want 0", n)
	}
}

func BenchmarkParseBearerCheckHash(b *testing.B) {
	_, header := hotPath(b)
	b.ReportAllocs()
	for b.Loop() {
		sec, err := auth.ParseBearer(header[0])
		if err != nil || secret.Check(sec) != nil {
			b.Fatal("bad secret")
		}
		_ = secret.HashOf(sec)
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	a, header := hotPath(b)
	client := netip.MustParseAddr("127.0.0.1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(header, client); err != nil {
			b.Fatal(err)
		}
	}
}
