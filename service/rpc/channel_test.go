package rpc

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// listStub answers ListTokens with a fixed response, after scribbling on
// the request it was given.
type listStub struct {
	tokenv1.UnimplementedTokenServiceServer
	resp *tokenv1.ListTokensResponse
	got  *tokenv1.ListTokensRequest
}

func (s *listStub) ListTokens(_ context.Context, req *tokenv1.ListTokensRequest) (*tokenv1.ListTokensResponse, error) {
	s.got = proto.CloneOf(req)
	req.Cursor = "changed by the handler"
	return s.resp, nil
}

// TestChannelCarriesMessages checks that a call through the Channel
// delivers the caller's request and the handler's whole response: nested
// messages, lists, scalars and unknown fields; and that the handler cannot
// change the caller's request.
func TestChannelCarriesMessages(t *testing.T) {
	resp := &tokenv1.ListTokensResponse{
		Tokens: []*tokenv1.Token{
			{Id: 1, Name: "a", Status: tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE, UsageCount: 3,
				CreatedAt: timestamppb.New(t0()), LastUsedAt: timestamppb.New(t0()), AllowedIps: []string{"10.0.0.0/8", "::1"}},
			{Id: 2, Name: "b", Status: tokenv1.TokenStatus_TOKEN_STATUS_REVOKED, CreatedAt: timestamppb.New(t0())},
		},
		NextCursor: "next",
	}
	unknown := protowire.AppendTag(nil, 99, protowire.VarintType)
	unknown = protowire.AppendVarint(unknown, 7)
	resp.ProtoReflect().SetUnknown(unknown)
	want := proto.CloneOf(resp)

	stub := &listStub{resp: resp}
	ch := newChannel(nil)
	tokenv1.RegisterTokenServiceServer(ch, stub)
	req := &tokenv1.ListTokensRequest{Limit: 5, Cursor: "c", Status: "active"}
	got, err := tokenv1.NewTokenServiceClient(ch).ListTokens(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("response through the channel:\n got %v\nwant %v", got, want)
	}
	if string(got.ProtoReflect().GetUnknown()) != string(unknown) {
		t.Errorf("unknown fields = %x, want %x", got.ProtoReflect().GetUnknown(), unknown)
	}
	if wantReq := (&tokenv1.ListTokensRequest{Limit: 5, Cursor: "c", Status: "active"}); !proto.Equal(stub.got, wantReq) || !proto.Equal(req, wantReq) {
		t.Errorf("handler got %v, caller's request is now %v; want both %v", stub.got, req, wantReq)
	}
}

func t0() time.Time { return time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC) }
