package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// rawH2 opens a plaintext HTTP/2 connection to addr, sends the client
// preface and empty settings, and returns a framer on it.
func rawH2(t *testing.T, addr string) (*http2.Framer, net.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return fr, conn
}

// writeCallHeaders opens stream 1 on fr with the headers of a gRPC call of
// path to authority, and extra fields after them, and sends no message.
func writeCallHeaders(t *testing.T, fr *http2.Framer, authority, path string, extra ...[2]string) {
	t.Helper()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	fields := append([][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", path},
		{":authority", authority}, {"content-type", "application/grpc"}, {"te", "trailers"},
	}, extra...)
	for _, f := range fields {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// nextFrame reads the next frame from fr. The read deadline passing fails
// the test with held (what it means that nothing came); so does the
// connection ending.
func nextFrame(t *testing.T, fr *http2.Framer, held string) http2.Frame {
	t.Helper()
	f, err := fr.ReadFrame()
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatal(held)
	case err != nil:
		t.Fatalf("the connection ended (%v) instead of the stream", err)
	}
	return f
}

// TestGRPCSettingsAnnounceLimits checks that the gRPC server announces the
// configured caps on concurrent calls per connection and on a call's
// metadata in its HTTP/2 settings, where every client must obey them.
func TestGRPCSettingsAnnounceLimits(t *testing.T) {
	for _, tc := range []struct {
		args                []string
		streams, headerList uint32
	}{
		{nil, 100, 32 << 10},
		{[]string{"--grpc-max-streams", "3", "--grpc-max-header-bytes", "8192"}, 3, 8192},
	} {
		s := startServer(t, "", tc.args...)
		fr, _ := rawH2(t, s.addrs.GRPC)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading the server's settings: %v", err)
			}
			sf, ok := f.(*http2.SettingsFrame)
			if !ok || sf.IsAck() {
				continue
			}
			for _, want := range []struct {
				id    http2.SettingID
				value uint32
			}{{http2.SettingMaxConcurrentStreams, tc.streams}, {http2.SettingMaxHeaderListSize, tc.headerList}} {
				if got, found := sf.Value(want.id); !found || got != want.value {
					t.Errorf("flags %v: %v = %d (sent: %v), want %d", tc.args, want.id, got, found, want.value)
				}
			}
			break
		}
	}
}

// TestGRPCMetadataCap checks that the server itself enforces the metadata
// cap: a call within it is served, and a raw stream whose header list
// exceeds it (a client need not obey the announced setting) is refused at
// once, not held. The stream sends no message, so without the cap the
// server would wait for one, holding the header list, until the read
// deadline here runs out.
func TestGRPCMetadataCap(t *testing.T) {
	s := startServer(t, "", "--grpc-max-header-bytes", "8192")
	tok := createToken(t, s.db, "alice", "metadata")
	ctx := as(testCtx(t), tok.Secret, "x-pad", strings.Repeat("p", 1<<10))
	if _, err := s.grpcClient().GetToken(ctx, &tokenv1.GetTokenRequest{TokenId: tok.ID}); err != nil {
		t.Fatalf("1 KiB of metadata under an 8 KiB cap: %v", err)
	}

	fr, conn := rawH2(t, s.addrs.GRPC)
	if err := conn.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fields := [][2]string{{"authorization", "Bearer " + tok.Secret}}
	for i := range 3 { // 12 KiB in all, each field under the cap
		fields = append(fields, [2]string{fmt.Sprintf("x-pad-%d", i), strings.Repeat("p", 4<<10)})
	}
	writeCallHeaders(t, fr, s.addrs.GRPC, "/tokend.v1.TokenService/GetToken", fields...)
	for {
		f := nextFrame(t, fr, "a stream over the metadata cap was held open, not refused")
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == 1 {
			return
		}
	}
}

// TestGRPCStalledCallEnds checks that a unary call whose client sends its
// headers but never its message ends at --max-call-duration, counted from
// the headers: grpc-go waits for the message before any interceptor runs,
// so without a deadline the stream (a goroutine, its metadata) would be
// held as long as the connection lives. A health Watch, a stream meant to
// last, outlives the cap.
func TestGRPCStalledCallEnds(t *testing.T) {
	s := startServer(t, "", "--max-call-duration", "300ms")
	fr, conn := rawH2(t, s.addrs.GRPC)
	if err := conn.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	writeCallHeaders(t, fr, s.addrs.GRPC, "/tokend.v1.TokenService/GetToken")
	dec := hpack.NewDecoder(4096, nil)
	for ended := false; !ended; {
		switch f := nextFrame(t, fr, "a call that never sent its message was still open after 3s, ten times --max-call-duration").(type) {
		case *http2.RSTStreamFrame:
			ended = f.StreamID == 1
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			for _, hf := range fields {
				if hf.Name == "grpc-status" && f.StreamID == 1 {
					if hf.Value != strconv.Itoa(int(codes.DeadlineExceeded)) {
						t.Errorf("the stalled call ended with grpc-status %s, want DeadlineExceeded", hf.Value)
					}
					ended = true
				}
			}
		}
	}

	watch, err := healthpb.NewHealthClient(s.conn).Watch(testCtx(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("health Watch: %v", err)
	}
	ended := make(chan error, 1)
	go func() { _, err := watch.Recv(); ended <- err }()
	select {
	case err := <-ended:
		t.Fatalf("health Watch ended under the call cap: %v", err)
	case <-time.After(time.Second):
	}
}

// TestGRPCKeepaliveEnforcement checks that a client pinging more often than
// the server allows is sent away with GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings" and disconnected, so pings cannot keep a connection
// busy: with no call in flight (any ping is too many), and during a call,
// where tokend's minimum ping interval is what decides.
func TestGRPCKeepaliveEnforcement(t *testing.T) {
	s := startServer(t, "")
	for _, inCall := range []bool{false, true} {
		t.Run(fmt.Sprintf("call in flight %v", inCall), func(t *testing.T) {
			fr, _ := rawH2(t, s.addrs.GRPC)
			if inCall {
				// A Watch stays open until the client ends it: the server
				// waits for its request message.
				writeCallHeaders(t, fr, s.addrs.GRPC, "/grpc.health.v1.Health/Watch")
			}
			var data [8]byte
			for i := range 5 {
				data[0] = byte(i)
				if err := fr.WritePing(false, data); err != nil {
					break // the server may already have hung up
				}
			}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("connection ended (%v) without GOAWAY ENHANCE_YOUR_CALM", err)
				}
				ga, ok := f.(*http2.GoAwayFrame)
				if !ok {
					continue
				}
				if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || !strings.Contains(string(ga.DebugData()), "too_many_pings") {
					t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", ga.ErrCode, ga.DebugData())
				}
				break
			}
			// And the server closes the connection.
			for {
				if _, err := fr.ReadFrame(); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("the server kept the connection open after GOAWAY")
					}
					return
				}
			}
		})
	}
}

// TestCallDurationCapCannotBeLifted runs a server whose --max-call-duration
// has passed before any call can start, and checks end to end that neither
// a client's long gRPC deadline nor the gateway's Grpc-Timeout header lifts
// it: gRPC answers DeadlineExceeded, REST a 504 problem.
func TestCallDurationCapCannotBeLifted(t *testing.T) {
	s := startServer(t, "", "--max-call-duration", "1ns")
	tok := createToken(t, s.db, "alice", "cap") // over the admin socket, which has no cap
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	ctx = as(ctx, tok.Secret)
	if _, err := s.grpcClient().GetToken(ctx, &tokenv1.GetTokenRequest{TokenId: tok.ID}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("gRPC GetToken with a 1h deadline: %v, want DeadlineExceeded", err)
	}
	for _, headers := range [][]string{
		{bearer(tok.Secret)},
		{bearer(tok.Secret), "Grpc-Timeout: 1H"},
	} {
		resp, body := s.get(t, tokenPath(tok.ID), headers...)
		if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("REST GET %v: %d %s %s, want a 504 problem", headers[1:], resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
}
