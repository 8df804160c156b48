package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/testutil"
)

// logLeak returns the first thing in a server's log that no log may hold,
// or "": a secret (they all start with the prefix), an Authorization value,
// or a secret's hash however it would be rendered (64 hex digits, 44
// padded base64 characters, or 32 bytes as a list of numbers; trace ids
// are 32 hex digits). Every e2e test runs it on its servers' logs.
func logLeak(logs string) string {
	for _, leak := range []string{secret.Prefix, "Bearer "} {
		if strings.Contains(logs, leak) {
			return leak
		}
	}
	return hashLike.FindString(logs)
}

// hashLike matches the renderings of a 32-byte hash in a log.
var hashLike = regexp.MustCompile(`[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=|\[(\d{1,3}[, ]){31}\d{1,3}\]`)

// testServer is a real tokend serving on 127.0.0.1 ports chosen by the
// kernel, with its logs captured.
type testServer struct {
	db     string
	addrs  listening
	logs   *testutil.SyncBuffer
	stop   func() error
	client *http.Client
	conn   *grpc.ClientConn
}

// startServer runs `tokend serve` in-process on db (a fresh one if empty)
// until the test ends. extra are further serve flags.
func startServer(t *testing.T, db string, extra ...string) *testServer {
	t.Helper()
	if db == "" {
		db = filepath.Join(t.TempDir(), "tokend.db")
	}
	logs := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan listening, 1)
	done := make(chan error, 1)
	args := append([]string{"--db", db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, extra...)
	go func() {
		done <- runServe(ctx, args, func(string) string { return "" }, logs, func(l listening) { ready <- l })
	}()
	s := &testServer{db: db, logs: logs, client: &http.Client{Timeout: 10 * time.Second}}
	select {
	case s.addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("server did not start: %v\nlogs:\n%s", err, logs)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("server did not start within 10s\nlogs:\n%s", logs)
	}
	conn, err := grpc.NewClient("passthrough:///"+s.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	s.conn = conn
	var once sync.Once
	var stopErr error
	s.stop = func() error {
		once.Do(func() {
			conn.Close()
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(15 * time.Second):
				stopErr = errors.New("server did not stop within 15s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("server stop: %v", err)
		}
		// Every end-to-end test's whole server log, after every request it
		// made, must be clean.
		if leak := logLeak(s.logs.String()); leak != "" {
			t.Errorf("the server log contains %q:\n%s", leak, s.logs)
		}
	})
	return s
}

// grpcClient returns a TokenService client over real gRPC.
func (s *testServer) grpcClient() tokenv1.TokenServiceClient {
	return tokenv1.NewTokenServiceClient(s.conn)
}

// get performs GET path on the REST API with the given headers
// ("Name: value" strings; repeat a name to send it twice).
func (s *testServer) get(t *testing.T, path string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return s.do(t, http.MethodGet, path, headers...)
}

func (s *testServer) do(t *testing.T, method, path string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return s.sendReader(t, method, path, "", nil, nil, headers...)
}

// send performs method path on the REST API with body (nil for none) sent
// with Content-Type contentType (omitted if empty) and a Content-Length,
// plus headers ("Name: value" strings).
func (s *testServer) send(t *testing.T, method, path, contentType string, body []byte, headers ...string) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	return s.sendReader(t, method, path, contentType, r, body, headers...)
}

// sendChunked is send with a body of unknown length, so the client uses
// chunked transfer encoding and the server cannot know the size up front.
func (s *testServer) sendChunked(t *testing.T, method, path, contentType string, body []byte, headers ...string) (*http.Response, []byte) {
	t.Helper()
	return s.sendReader(t, method, path, contentType, struct{ io.Reader }{bytes.NewReader(body)}, body, headers...)
}

// sendReader is the one place e2e tests send REST requests: it reads the
// whole answer and checks the exchange against the OpenAPI document.
func (s *testServer) sendReader(t *testing.T, method, path, contentType string, r io.Reader, body []byte, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.addrs.HTTP+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ": ")
		if !ok {
			t.Fatalf("bad header %q", h)
		}
		req.Header.Add(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the response: %v", method, path, err)
	}
	// The one call site of the OpenAPI contract check for the REST
	// exchanges of the end-to-end tests (openapi_validate_test.go).
	validateExchange(t, req, body, resp, respBody)
	return resp, respBody
}

// created mirrors `tokend token create --json`.
type createdToken struct {
	ID     int64  `json:"id"`
	Secret string `json:"secret"`
}

// createToken mints a token with the CLI, as an operator would; against a
// running server it goes over the admin socket.
func createToken(t *testing.T, db, user, name string, extra ...string) createdToken {
	t.Helper()
	out, errOut, err := cli(t, append([]string{"token", "create", "--db", db, "--user", user, "--name", name, "--json"}, extra...)...)
	if err != nil {
		t.Fatalf("token create: %v\nstderr: %s", err, errOut)
	}
	var c createdToken
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("token create output %q: %v", out, err)
	}
	if c.ID <= 0 || c.Secret == "" {
		t.Fatalf("token create output lacks id or secret: %s", out)
	}
	return c
}

// cli runs the tokend command in-process and returns its stdout and stderr.
func cli(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := run(ctx, args, func(string) string { return "" }, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func bearer(secret string) string { return "Authorization: Bearer " + secret }

// tokenPath is the REST path of the token with the given id; its actions
// are below it (tokenPath(id)+"/rotate").
func tokenPath(id int64) string { return fmt.Sprintf("/api/v1/me/tokens/%d", id) }

// decodeObject parses a JSON object, keeping numbers as json.Number so
// tests can tell 12 from "12".
func decodeObject(t *testing.T, body []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, body)
	}
	return m
}

// mustSecret mints a well-formed secret that no token has.
func mustSecret(t *testing.T) string {
	t.Helper()
	s, err := secret.New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// restDo sends one request with the bearer secret (and body, as JSON, if
// any) and reads the whole answer. It reports failure as an error, not
// through t, so goroutines other than the test's may call it; to the crash
// test, an error means the request got no complete answer, so it is not
// acknowledged.
func restDo(hc *http.Client, method, url, secret string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

// waitFor checks cond every few milliseconds until it holds or d has
// passed, and reports whether it held; the caller says what it waited for.
func waitFor(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}
