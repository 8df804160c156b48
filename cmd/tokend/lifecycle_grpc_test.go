package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// End-to-end tests of the token lifecycle over gRPC.

// as returns ctx carrying secret as the bearer credential, plus kv.
func as(ctx context.Context, secret string, kv ...string) context.Context {
	return withAuth(ctx, append([]string{"authorization", "Bearer " + secret}, kv...)...)
}

// wantCode checks err's code and, when fields are given, that its
// BadRequest details name exactly those fields.
func wantCode(t *testing.T, err error, code codes.Code, fields ...string) *status.Status {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), code)
	}
	if st.Message() == "" {
		t.Errorf("status has no message")
	}
	var got []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				got = append(got, v.GetField())
				if v.GetDescription() == "" {
					t.Errorf("violation of %q has no description", v.GetField())
				}
			}
		}
	}
	if fields != nil {
		slices.Sort(got)
		want := slices.Clone(fields)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("field violations = %q, want %q (%s)", got, want, st.Message())
		}
	}
	return st
}

// grpcCurrent returns the id of the token that secret authenticates over
// gRPC, or the error.
func grpcCurrent(ctx context.Context, c tokenv1.TokenServiceClient, secret string) (int64, error) {
	resp, err := c.GetCurrentToken(as(ctx, secret), &tokenv1.GetCurrentTokenRequest{})
	return resp.GetToken().GetId(), err
}

func grpcListAll(t *testing.T, ctx context.Context, c tokenv1.TokenServiceClient, secret string, req *tokenv1.ListTokensRequest) ([]int64, int) {
	t.Helper()
	var ids []int64
	pages := 0
	for {
		resp, err := c.ListTokens(as(ctx, secret), req)
		if err != nil {
			t.Fatalf("ListTokens(%v): %v", req, err)
		}
		pages++
		for _, tk := range resp.GetTokens() {
			ids = append(ids, tk.GetId())
		}
		if resp.GetNextCursor() == "" {
			return ids, pages
		}
		if pages > 1000 {
			t.Fatal("listing does not end")
		}
		req = &tokenv1.ListTokensRequest{Limit: req.GetLimit(), Status: req.GetStatus(), Cursor: resp.GetNextCursor()}
	}
}

func TestLifecycleGRPCCreate(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	c := s.grpcClient()
	ctx := testCtx(t)
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")

	t.Run("mints a token for the caller", func(t *testing.T) {
		exp := time.Now().Add(time.Hour).Truncate(time.Second)
		resp, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{
			Name: "grpc", ExpiresAt: timestamppb.New(exp), AllowedIps: []string{"127.0.0.1", "2001:DB8::/32"},
		})
		if err != nil {
			t.Fatal(err)
		}
		tk := resp.GetToken()
		if tk.GetId() <= 0 || tk.GetName() != "grpc" || tk.GetStatus() != tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE || tk.GetUsageCount() != 0 || tk.GetLastUsedAt() != nil {
			t.Errorf("token = %v", tk)
		}
		if !tk.GetExpiresAt().AsTime().Equal(exp) {
			t.Errorf("expires_at = %v, want %v", tk.GetExpiresAt().AsTime(), exp)
		}
		if !slices.Equal(tk.GetAllowedIps(), []string{"127.0.0.1", "2001:db8::/32"}) {
			t.Errorf("allowed_ips = %q, want canonical", tk.GetAllowedIps())
		}
		if !secretPattern.MatchString(resp.GetSecret()) {
			t.Errorf("secret = %q", resp.GetSecret())
		}
		if id, err := grpcCurrent(ctx, c, resp.GetSecret()); err != nil || id != tk.GetId() {
			t.Errorf("new secret: current %d, %v; want %d", id, err, tk.GetId())
		}
		_, err = c.GetToken(as(ctx, bob.Secret), &tokenv1.GetTokenRequest{TokenId: tk.GetId()})
		wantCode(t, err, codes.NotFound)
		in, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "in", ExpiresInSeconds: 60})
		if err != nil {
			t.Fatal(err)
		}
		if d := in.GetToken().GetExpiresAt().AsTime().Sub(in.GetToken().GetCreatedAt().AsTime()); d < 60*time.Second || d > 61*time.Second {
			t.Errorf("expires_in_seconds 60: lifetime %v", d)
		}
	})

	t.Run("idempotency-key replays", func(t *testing.T) {
		const key = "6a1f2e3d-4c5b-4a69-8877-665544332211"
		req := &tokenv1.CreateTokenRequest{Name: "idem", ExpiresInSeconds: 600}
		var h1, h2 metadata.MD
		first, err := c.CreateToken(as(ctx, alice.Secret, "idempotency-key", key), req, grpc.Header(&h1))
		if err != nil {
			t.Fatal(err)
		}
		if got := h1.Get("idempotent-replayed"); len(got) != 0 {
			t.Errorf("first call: idempotent-replayed = %q, want none", got)
		}
		again, err := c.CreateToken(as(ctx, alice.Secret, "idempotency-key", key), req, grpc.Header(&h2))
		if err != nil {
			t.Fatal(err)
		}
		if got := h2.Get("idempotent-replayed"); !slices.Equal(got, []string{"true"}) {
			t.Errorf("retry: idempotent-replayed = %q, want [true]", got)
		}
		if again.GetToken().GetId() != first.GetToken().GetId() || again.GetSecret() != first.GetSecret() {
			t.Errorf("retry got token %d, want %d with the same secret", again.GetToken().GetId(), first.GetToken().GetId())
		}
		if id, err := grpcCurrent(ctx, c, again.GetSecret()); err != nil || id != first.GetToken().GetId() {
			t.Errorf("replayed secret: %d, %v", id, err)
		}
		before, _ := grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{Limit: 100})
		_, err = c.CreateToken(as(ctx, alice.Secret, "idempotency-key", key), &tokenv1.CreateTokenRequest{Name: "idem", ExpiresInSeconds: 601})
		wantCode(t, err, codes.FailedPrecondition)
		_, err = c.CreateToken(as(ctx, alice.Secret, "idempotency-key", "short"), req)
		wantCode(t, err, codes.InvalidArgument, "Idempotency-Key")
		_, err = c.CreateToken(as(ctx, alice.Secret, "idempotency-key", ""), req) // sent, but empty
		wantCode(t, err, codes.InvalidArgument, "Idempotency-Key")
		_, err = c.CreateToken(as(ctx, alice.Secret, "idempotency-key", key, "idempotency-key", key+"x"), req)
		wantCode(t, err, codes.InvalidArgument, "Idempotency-Key")
		if after, _ := grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{Limit: 100}); !slices.Equal(after, before) {
			t.Errorf("refused creates changed alice's tokens: %v → %v", before, after)
		}
		bobs, err := c.CreateToken(as(ctx, bob.Secret, "idempotency-key", key), req)
		if err != nil {
			t.Fatal(err)
		}
		if bobs.GetToken().GetId() == first.GetToken().GetId() || bobs.GetSecret() == first.GetSecret() {
			t.Errorf("bob's create with alice's key replayed alice's token")
		}
	})

	t.Run("invalid arguments list every field", func(t *testing.T) {
		before, _ := grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{Limit: 100})
		for _, tc := range []struct {
			name   string
			req    *tokenv1.CreateTokenRequest
			fields []string
		}{
			{"empty", &tokenv1.CreateTokenRequest{}, []string{"name"}},
			{"several", &tokenv1.CreateTokenRequest{Name: strings.Repeat("x", 101), AllowedIps: []string{"10.0.0.1/24"}, ExpiresInSeconds: -3}, []string{"name", "allowed_ips", "expires_in_seconds"}},
			{"both expiries", &tokenv1.CreateTokenRequest{Name: "x", ExpiresInSeconds: 60, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))}, []string{"expires_at"}},
			{"past", &tokenv1.CreateTokenRequest{Name: "x", ExpiresAt: timestamppb.New(time.Now().Add(-time.Hour))}, []string{"expires_at"}},
			{"beyond the default lifetime", &tokenv1.CreateTokenRequest{Name: "x", ExpiresInSeconds: 366 * 24 * 3600}, []string{"expires_in_seconds"}},
			{"invalid timestamp", &tokenv1.CreateTokenRequest{Name: "x", ExpiresAt: &timestamppb.Timestamp{Seconds: 1 << 62}}, []string{"expires_at"}},
			{"control character", &tokenv1.CreateTokenRequest{Name: "a\x00b"}, []string{"name"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.CreateToken(as(ctx, alice.Secret), tc.req)
				wantCode(t, err, codes.InvalidArgument, tc.fields...)
			})
		}
		if after, _ := grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{Limit: 100}); !slices.Equal(after, before) {
			t.Errorf("refused creates changed alice's tokens: %v → %v", before, after)
		}
	})
}

func TestLifecycleGRPCQuota(t *testing.T) {
	t.Parallel()
	s := startServer(t, "", "--max-tokens-per-user", "2")
	c := s.grpcClient()
	ctx := testCtx(t)
	alice := createToken(t, s.db, "alice", "bootstrap")
	second, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "two"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "three"})
	wantCode(t, err, codes.FailedPrecondition)
	if _, err := c.RevokeToken(as(ctx, alice.Secret), &tokenv1.RevokeTokenRequest{TokenId: second.GetToken().GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "three"}); err != nil {
		t.Errorf("create after revoking one: %v", err)
	}
}

func TestLifecycleGRPCListUpdateRevoke(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	c := s.grpcClient()
	ctx := testCtx(t)
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")
	want := []int64{alice.ID}
	for i := range 6 {
		resp, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: fmt.Sprintf("g%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, resp.GetToken().GetId())
	}
	slices.Reverse(want)

	t.Run("ListTokens pages by limit and cursor", func(t *testing.T) {
		ids, pages := grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{Limit: 2})
		if !slices.Equal(ids, want) || pages != 4 {
			t.Errorf("limit 2: %v in %d pages, want %v in 4", ids, pages, want)
		}
		ids, pages = grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{})
		if !slices.Equal(ids, want) || pages != 1 {
			t.Errorf("default: %v in %d pages", ids, pages)
		}
		if ids, _ := grpcListAll(t, ctx, c, bob.Secret, &tokenv1.ListTokensRequest{}); !slices.Equal(ids, []int64{bob.ID}) {
			t.Errorf("bob's list = %v", ids)
		}
		for _, tc := range []struct {
			req   *tokenv1.ListTokensRequest
			field string
		}{
			{&tokenv1.ListTokensRequest{Limit: 101}, "limit"},
			{&tokenv1.ListTokensRequest{Limit: -1}, "limit"},
			{&tokenv1.ListTokensRequest{Cursor: "garbage"}, "cursor"},
			{&tokenv1.ListTokensRequest{Status: "ACTIVE"}, "status"},
		} {
			_, err := c.ListTokens(as(ctx, alice.Secret), tc.req)
			wantCode(t, err, codes.InvalidArgument, tc.field)
		}
	})

	target := want[0]
	get := func(t *testing.T) *tokenv1.Token {
		t.Helper()
		resp, err := c.GetToken(as(ctx, alice.Secret), &tokenv1.GetTokenRequest{TokenId: target})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetToken()
	}

	t.Run("UpdateToken follows update_mask", func(t *testing.T) {
		resp, err := c.UpdateToken(as(ctx, alice.Secret), &tokenv1.UpdateTokenRequest{
			TokenId:    target,
			Token:      &tokenv1.TokenUpdate{Name: "renamed", AllowedIps: []string{"10.0.0.0/8"}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if tk := resp.GetToken(); tk.GetName() != "renamed" || len(tk.GetAllowedIps()) != 0 {
			t.Errorf("mask [name]: name %q allowed_ips %q, want renamed and unchanged", tk.GetName(), tk.GetAllowedIps())
		}
		resp, err = c.UpdateToken(as(ctx, alice.Secret), &tokenv1.UpdateTokenRequest{
			TokenId:    target,
			Token:      &tokenv1.TokenUpdate{Name: "ignored", AllowedIps: []string{"10.0.0.0/8", "::FFFF:192.0.2.0/120"}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"allowed_ips"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if tk := resp.GetToken(); tk.GetName() != "renamed" || !slices.Equal(tk.GetAllowedIps(), []string{"10.0.0.0/8", "192.0.2.0/24"}) {
			t.Errorf("mask [allowed_ips]: name %q allowed_ips %q", tk.GetName(), tk.GetAllowedIps())
		}
		resp, err = c.UpdateToken(as(ctx, alice.Secret), &tokenv1.UpdateTokenRequest{
			TokenId: target, Token: &tokenv1.TokenUpdate{}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"allowed_ips"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetToken().GetAllowedIps(); len(got) != 0 {
			t.Errorf("empty allowed_ips under the mask: %q, want cleared", got)
		}
		if got := get(t); got.GetName() != "renamed" || len(got.GetAllowedIps()) != 0 {
			t.Errorf("stored: %v", got)
		}
	})

	t.Run("UpdateToken refusals", func(t *testing.T) {
		before := get(t)
		for _, tc := range []struct {
			name   string
			secret string
			req    *tokenv1.UpdateTokenRequest
			code   codes.Code
			fields []string
		}{
			{"no mask", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "x"}}, codes.InvalidArgument, []string{"update_mask"}},
			{"empty mask", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "x"}, UpdateMask: &fieldmaskpb.FieldMask{}}, codes.InvalidArgument, []string{"update_mask"}},
			{"unknown path", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name", "status"}}}, codes.InvalidArgument, []string{"update_mask.paths[1]"}},
			{"every unknown path, and none raw", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"foo", "name", "a\x00b\nc\u202e"}}}, codes.InvalidArgument, []string{"update_mask.paths[0]", "update_mask.paths[2]"}},
			{"empty name", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}, codes.InvalidArgument, []string{"name"}},
			{"bad name and IP", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "\t", AllowedIps: []string{"x"}}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name", "allowed_ips"}}}, codes.InvalidArgument, []string{"name", "allowed_ips"}},
			{"zero id", alice.Secret, &tokenv1.UpdateTokenRequest{Token: &tokenv1.TokenUpdate{Name: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}, codes.InvalidArgument, nil},
			{"another user's token", bob.Secret, &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "bob"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}, codes.NotFound, nil},
			{"missing token", alice.Secret, &tokenv1.UpdateTokenRequest{TokenId: 999999, Token: &tokenv1.TokenUpdate{Name: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}, codes.NotFound, nil},
			{"unauthenticated", mustSecret(t), &tokenv1.UpdateTokenRequest{TokenId: target, Token: &tokenv1.TokenUpdate{Name: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}}, codes.Unauthenticated, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.UpdateToken(as(ctx, tc.secret), tc.req)
				wantCode(t, err, tc.code, tc.fields...)
			})
		}
		after := get(t)
		if after.GetName() != before.GetName() || !slices.Equal(after.GetAllowedIps(), before.GetAllowedIps()) {
			t.Errorf("refused updates changed the token: %v → %v", before, after)
		}
	})

	t.Run("RevokeToken", func(t *testing.T) {
		victim, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "victim"})
		if err != nil {
			t.Fatal(err)
		}
		vid := victim.GetToken().GetId()
		_, err = c.RevokeToken(as(ctx, bob.Secret), &tokenv1.RevokeTokenRequest{TokenId: vid})
		wantCode(t, err, codes.NotFound)
		if _, err := grpcCurrent(ctx, c, victim.GetSecret()); err != nil {
			t.Fatalf("victim after bob's attempt: %v", err)
		}
		for i := range 2 {
			resp, err := c.RevokeToken(as(ctx, alice.Secret), &tokenv1.RevokeTokenRequest{TokenId: vid})
			if err != nil {
				t.Fatalf("revoke #%d: %v", i+1, err)
			}
			if resp.GetToken().GetStatus() != tokenv1.TokenStatus_TOKEN_STATUS_REVOKED || resp.GetToken().GetId() != vid {
				t.Errorf("revoke #%d returned %v", i+1, resp.GetToken())
			}
			_, err = grpcCurrent(ctx, c, victim.GetSecret())
			wantCode(t, err, codes.Unauthenticated)
		}
		_, err = c.RevokeToken(as(ctx, alice.Secret), &tokenv1.RevokeTokenRequest{TokenId: -1})
		wantCode(t, err, codes.InvalidArgument)
		_, err = c.RevokeToken(ctx, &tokenv1.RevokeTokenRequest{TokenId: vid})
		wantCode(t, err, codes.Unauthenticated)
		ids, _ := grpcListAll(t, ctx, c, alice.Secret, &tokenv1.ListTokensRequest{Status: "revoked"})
		if !slices.Equal(ids, []int64{vid}) {
			t.Errorf("revoked = %v, want [%d]", ids, vid)
		}
	})
}

func TestLifecycleGRPCRotateAndCurrent(t *testing.T) {
	t.Parallel()
	s := startServer(t, "", "--max-rotation-grace", "1h")
	c := s.grpcClient()
	ctx := testCtx(t)
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")

	t.Run("GetCurrentToken returns the caller and counts the call", func(t *testing.T) {
		for want := int64(1); want <= 2; want++ {
			resp, err := c.GetCurrentToken(as(ctx, bob.Secret), &tokenv1.GetCurrentTokenRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetUserId() != "bob" || resp.GetToken().GetId() != bob.ID || resp.GetToken().GetUsageCount() != want {
				t.Errorf("current = user %q token %d usage %d, want bob %d %d", resp.GetUserId(), resp.GetToken().GetId(), resp.GetToken().GetUsageCount(), bob.ID, want)
			}
		}
		resp, err := c.GetCurrentToken(as(ctx, alice.Secret), &tokenv1.GetCurrentTokenRequest{})
		if err != nil || resp.GetUserId() != "alice" || resp.GetToken().GetId() != alice.ID {
			t.Errorf("alice's current = %v, %v", resp, err)
		}
		_, err = c.GetCurrentToken(ctx, &tokenv1.GetCurrentTokenRequest{})
		wantCode(t, err, codes.Unauthenticated)
		_, err = c.GetCurrentToken(as(ctx, "tkd_nope"), &tokenv1.GetCurrentTokenRequest{})
		wantCode(t, err, codes.Unauthenticated)
	})

	t.Run("RotateToken with grace", func(t *testing.T) {
		tok, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "rot", AllowedIps: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		id, old := tok.GetToken().GetId(), tok.GetSecret()
		resp, err := c.RotateToken(as(ctx, alice.Secret), &tokenv1.RotateTokenRequest{TokenId: id, GracePeriodSeconds: 30})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetToken().GetId() != id || resp.GetToken().GetName() != "rot" || !slices.Equal(resp.GetToken().GetAllowedIps(), []string{"127.0.0.1"}) {
			t.Errorf("rotated token = %v", resp.GetToken())
		}
		if !secretPattern.MatchString(resp.GetSecret()) || resp.GetSecret() == old {
			t.Errorf("new secret = %q", resp.GetSecret())
		}
		if prev := resp.GetPreviousSecretExpiresAt().AsTime(); !near(prev, time.Now().Add(30*time.Second), 2*time.Second) {
			t.Errorf("previous_secret_expires_at = %v, want about 30s from now", prev)
		}
		for i, sec := range []string{old, resp.GetSecret()} {
			cur, err := c.GetCurrentToken(as(ctx, sec), &tokenv1.GetCurrentTokenRequest{})
			if err != nil {
				t.Fatalf("secret %d: %v", i, err)
			}
			if cur.GetToken().GetId() != id || cur.GetToken().GetUsageCount() != int64(i+1) || cur.GetUserId() != "alice" {
				t.Errorf("secret %d: token %d usage %d user %q", i, cur.GetToken().GetId(), cur.GetToken().GetUsageCount(), cur.GetUserId())
			}
		}
		// The old secret reads but changes nothing: no rotating the token
		// away from the new secret's holder.
		_, err = c.RotateToken(as(ctx, old), &tokenv1.RotateTokenRequest{TokenId: id})
		if st := status.Convert(err); st.Code() != codes.PermissionDenied || !slices.ContainsFunc(st.Details(), func(d any) bool {
			info, ok := d.(*errdetails.ErrorInfo)
			return ok && info.GetReason() == "PREVIOUS_SECRET"
		}) {
			t.Errorf("RotateToken with the old secret: %v, want PermissionDenied with reason PREVIOUS_SECRET", err)
		}
		_, err = c.CreateToken(as(ctx, old), &tokenv1.CreateTokenRequest{Name: "minted with the old secret"})
		wantCode(t, err, codes.PermissionDenied)
		// Without grace the secret in use stops at once.
		now, err := c.RotateToken(as(ctx, resp.GetSecret()), &tokenv1.RotateTokenRequest{TokenId: id})
		if err != nil {
			t.Fatal(err)
		}
		for _, sec := range []string{old, resp.GetSecret()} {
			_, err := grpcCurrent(ctx, c, sec)
			wantCode(t, err, codes.Unauthenticated)
		}
		if got, err := grpcCurrent(ctx, c, now.GetSecret()); err != nil || got != id {
			t.Errorf("newest secret: %d, %v", got, err)
		}
	})

	t.Run("RotateToken refusals", func(t *testing.T) {
		dead, err := c.CreateToken(as(ctx, alice.Secret), &tokenv1.CreateTokenRequest{Name: "dead"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.RevokeToken(as(ctx, alice.Secret), &tokenv1.RevokeTokenRequest{TokenId: dead.GetToken().GetId()}); err != nil {
			t.Fatal(err)
		}
		_, err = c.RotateToken(as(ctx, alice.Secret), &tokenv1.RotateTokenRequest{TokenId: dead.GetToken().GetId()})
		wantCode(t, err, codes.FailedPrecondition)
		_, err = c.RotateToken(as(ctx, alice.Secret), &tokenv1.RotateTokenRequest{TokenId: alice.ID, GracePeriodSeconds: -1})
		wantCode(t, err, codes.InvalidArgument, "grace_period_seconds")
		_, err = c.RotateToken(as(ctx, alice.Secret), &tokenv1.RotateTokenRequest{TokenId: alice.ID, GracePeriodSeconds: 3601})
		wantCode(t, err, codes.InvalidArgument, "grace_period_seconds")
		_, err = c.RotateToken(as(ctx, alice.Secret), &tokenv1.RotateTokenRequest{TokenId: alice.ID, GracePeriodSeconds: 1 << 62})
		wantCode(t, err, codes.InvalidArgument, "grace_period_seconds")
		_, err = c.RotateToken(as(ctx, alice.Secret), &tokenv1.RotateTokenRequest{TokenId: bob.ID})
		wantCode(t, err, codes.NotFound)
		_, err = c.RotateToken(ctx, &tokenv1.RotateTokenRequest{TokenId: alice.ID})
		wantCode(t, err, codes.Unauthenticated)
		if got, err := grpcCurrent(ctx, c, alice.Secret); err != nil || got != alice.ID {
			t.Errorf("alice's secret after refused rotations: %v", err)
		}
		if got, err := grpcCurrent(ctx, c, bob.Secret); err != nil || got != bob.ID {
			t.Errorf("bob's secret after alice's attempt: %v", err)
		}
	})
}

// TestGRPCMessageSizeLimit checks that a request over the receive limit is
// refused with ResourceExhausted before any handler runs.
func TestGRPCMessageSizeLimit(t *testing.T) {
	s := startServer(t, "")
	tok := createToken(t, s.db, "alice", "size")
	ctx := as(testCtx(t), tok.Secret)
	big := strings.Repeat("x", 100<<10)
	_, err := s.grpcClient().CreateToken(ctx, &tokenv1.CreateTokenRequest{Name: big})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 100 KiB request: %v, want ResourceExhausted", err)
	}
	out, _, err := cli(t, "token", "list", "--db", s.db, "--user", "alice", "--json")
	if err != nil || strings.Count(out, `"id"`) != 1 {
		t.Errorf("after the refused request alice has: %s (%v), want only the bootstrap token", out, err)
	}

	// A 10 KiB request is under the default limit (the name is refused
	// by validation), and over a limit set with --grpc-max-recv-bytes.
	ten := &tokenv1.CreateTokenRequest{Name: strings.Repeat("x", 10<<10)}
	if _, err := s.grpcClient().CreateToken(ctx, ten); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a 10 KiB request under the default limit: %v, want InvalidArgument", err)
	}
	small := startServer(t, "", "--grpc-max-recv-bytes", "8192")
	tok = createToken(t, small.db, "alice", "size")
	ctx = as(testCtx(t), tok.Secret)
	if _, err := small.grpcClient().CreateToken(ctx, ten); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a 10 KiB request with --grpc-max-recv-bytes 8192: %v, want ResourceExhausted", err)
	}
}
