package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// fixture is a server with tokens in every state, shared by a test's
// subtests because one of them must wait for a token to expire.
type fixture struct {
	s                                      *testServer
	active, unused, revoked, expired, bob  createdToken
	restricted, loopbackOnly, expiresLater createdToken
}

func newFixture(t *testing.T, extra ...string) *fixture {
	t.Helper()
	s := startServer(t, "", extra...)
	f := &fixture{s: s}
	f.expired = createToken(t, s.db, "alice", "short-lived", "--expires-in", "1s")
	expiry := time.Now().Add(time.Second)
	f.active = createToken(t, s.db, "alice", "CI Deployments")
	f.unused = createToken(t, s.db, "alice", "never used")
	f.revoked = createToken(t, s.db, "alice", "revoked one")
	if _, errOut, err := cli(t, "token", "revoke", "--db", s.db, "--user", "alice", fmt.Sprint(f.revoked.ID)); err != nil {
		t.Fatalf("revoke: %v %s", err, errOut)
	}
	f.bob = createToken(t, s.db, "bob", "bob's token")
	f.restricted = createToken(t, s.db, "alice", "office only", "--allowed-ip", "10.0.0.0/8", "--allowed-ip", "2001:DB8::/32")
	f.loopbackOnly = createToken(t, s.db, "alice", "loopback only", "--allowed-ip", "127.0.0.1")
	f.expiresLater = createToken(t, s.db, "alice", "expires later", "--expires-in", "720h")
	// Expiry is stored in whole seconds, so wait past the next second.
	time.Sleep(time.Until(expiry.Truncate(time.Second).Add(1100 * time.Millisecond)))
	return f
}

var rfc3339Seconds = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$`)

func TestRESTGetToken(t *testing.T) {
	f := newFixture(t)
	s := f.s

	t.Run("seed shape and JSON types", func(t *testing.T) {
		resp, body := s.get(t, tokenPath(f.unused.ID), bearer(f.active.Secret))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200; body %s", resp.StatusCode, body)
		}
		if got := resp.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", got)
		}
		if got := resp.Header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", got)
		}
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(resp.Header.Get("X-Trace-Id")) {
			t.Errorf("X-Trace-Id = %q, want 32 hex digits", resp.Header.Get("X-Trace-Id"))
		}
		top := decodeObject(t, body)
		if keys := sortedKeys(top); !slices.Equal(keys, []string{"data"}) {
			t.Fatalf("top-level keys = %v, want [data]", keys)
		}
		data, ok := top["data"].(map[string]any)
		if !ok {
			t.Fatalf("data is %T, want object", top["data"])
		}
		want := []string{"allowed_ips", "created_at", "expires_at", "id", "last_used_at", "name", "status", "usage_count"}
		if keys := sortedKeys(data); !slices.Equal(keys, want) {
			t.Fatalf("data keys = %v, want %v", keys, want)
		}
		if got, want := data["id"], json.Number(fmt.Sprint(f.unused.ID)); got != want {
			t.Errorf("id = %#v, want JSON number %v", got, want)
		}
		if got := data["usage_count"]; got != json.Number("0") {
			t.Errorf("usage_count = %#v, want JSON number 0", got)
		}
		if data["name"] != "never used" || data["status"] != "active" {
			t.Errorf("name, status = %v, %v; want never used, active", data["name"], data["status"])
		}
		for _, k := range []string{"last_used_at", "expires_at", "allowed_ips"} {
			if v, present := data[k]; !present || v != nil {
				t.Errorf("%s = %#v, want null", k, v)
			}
		}
		if c, _ := data["created_at"].(string); !rfc3339Seconds.MatchString(c) {
			t.Errorf("created_at = %#v, want RFC 3339 UTC whole seconds", data["created_at"])
		}
	})

	t.Run("timestamps, allowed_ips and self-read counts this request", func(t *testing.T) {
		path := tokenPath(f.loopbackOnly.ID)
		for want := 1; want <= 2; want++ {
			resp, body := s.get(t, path, bearer(f.loopbackOnly.Secret))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d; body %s", resp.StatusCode, body)
			}
			data := decodeObject(t, body)["data"].(map[string]any)
			if got := data["usage_count"]; got != json.Number(fmt.Sprint(want)) {
				t.Errorf("request %d: usage_count = %v, want %d (read-your-writes)", want, got, want)
			}
			if l, _ := data["last_used_at"].(string); !rfc3339Seconds.MatchString(l) {
				t.Errorf("last_used_at = %#v, want a timestamp", data["last_used_at"])
			}
			if got := data["allowed_ips"]; !reflect.DeepEqual(got, []any{"127.0.0.1"}) {
				t.Errorf("allowed_ips = %#v, want [127.0.0.1]", got)
			}
		}
		resp, body := s.get(t, tokenPath(f.restricted.ID), bearer(f.active.Secret))
		data := decodeObject(t, body)["data"].(map[string]any)
		if resp.StatusCode != 200 || !reflect.DeepEqual(data["allowed_ips"], []any{"10.0.0.0/8", "2001:db8::/32"}) {
			t.Errorf("restricted token: status %d, allowed_ips = %#v, want canonical [10.0.0.0/8 2001:db8::/32]", resp.StatusCode, data["allowed_ips"])
		}
		resp, body = s.get(t, tokenPath(f.expiresLater.ID), bearer(f.active.Secret))
		data = decodeObject(t, body)["data"].(map[string]any)
		exp, _ := data["expires_at"].(string)
		if resp.StatusCode != 200 || !rfc3339Seconds.MatchString(exp) {
			t.Fatalf("expires_at = %#v, want a timestamp", data["expires_at"])
		}
		if at, _ := time.Parse(time.RFC3339, exp); at.Sub(time.Now()) < 719*time.Hour {
			t.Errorf("expires_at = %s, want about 720h from now", exp)
		}
	})

	t.Run("status is derived at read time", func(t *testing.T) {
		for _, tc := range []struct {
			tok  createdToken
			want string
		}{
			{f.active, "active"}, {f.expired, "expired"}, {f.revoked, "revoked"}, {f.expiresLater, "active"},
		} {
			resp, body := s.get(t, tokenPath(tc.tok.ID), bearer(f.active.Secret))
			if resp.StatusCode != 200 {
				t.Fatalf("token %d: status %d", tc.tok.ID, resp.StatusCode)
			}
			if got := decodeObject(t, body)["data"].(map[string]any)["status"]; got != tc.want {
				t.Errorf("token %d: status = %v, want %s", tc.tok.ID, got, tc.want)
			}
		}
	})

	t.Run("another user's token is the same 404 as a missing one", func(t *testing.T) {
		respBob, bodyBob := s.get(t, tokenPath(f.bob.ID), bearer(f.active.Secret))
		respNone, bodyNone := s.get(t, "/api/v1/me/tokens/999999", bearer(f.active.Secret))
		if respBob.StatusCode != 404 || respNone.StatusCode != 404 {
			t.Fatalf("statuses = %d, %d; want 404, 404", respBob.StatusCode, respNone.StatusCode)
		}
		pb, pn := problemOf(t, respBob, bodyBob), problemOf(t, respNone, bodyNone)
		if pb.Title != "Not Found" || pb.Detail != pn.Detail || pb.Title != pn.Title || pb.Type != pn.Type {
			t.Errorf("bodies differ: %+v vs %+v", pb, pn)
		}
		if !reflect.DeepEqual(headerKeys(respBob.Header), headerKeys(respNone.Header)) {
			t.Errorf("headers differ: %v vs %v", headerKeys(respBob.Header), headerKeys(respNone.Header))
		}
	})

	t.Run("malformed and out-of-range ids are 400 in plain language", func(t *testing.T) {
		// Only the canonical decimal names a token: +1, 01 and 001 would be
		// other URLs of token 1 (for caches, proxies' rules and logs).
		for _, id := range []string{"abc", "1.5", "99999999999999999999", "0", "-1", "0x10", "%2B1", "01", "001", "-0", "1%20"} {
			resp, body := s.get(t, "/api/v1/me/tokens/"+id, bearer(f.active.Secret))
			p := problemOf(t, resp, body)
			if resp.StatusCode != 400 || p.Title != "Bad Request" {
				t.Errorf("id %q: status %d title %q, want 400 Bad Request", id, resp.StatusCode, p.Title)
			}
			for _, leak := range []string{"strconv", "parsing", "type mismatch", "syntax", "Parse"} {
				if strings.Contains(p.Detail, leak) {
					t.Errorf("id %q: detail %q leaks %q", id, p.Detail, leak)
				}
			}
			if !strings.Contains(p.Detail, "positive integer") {
				t.Errorf("id %q: detail %q does not say what a valid id is", id, p.Detail)
			}
		}
	})

	t.Run("unknown route is 404, wrong method is 405 with Allow", func(t *testing.T) {
		for _, path := range []string{"/", "/api/v1/me", "/api/v1/me/tokens/1/extra", "/api/v2/me/tokens/1"} {
			resp, body := s.get(t, path, bearer(f.active.Secret))
			if p := problemOf(t, resp, body); resp.StatusCode != 404 || p.Title != "Not Found" {
				t.Errorf("GET %s: status %d title %q, want 404", path, resp.StatusCode, p.Title)
			}
		}
		for _, tc := range []struct{ method, path, allow string }{
			{http.MethodPost, "/api/v1/me/tokens/1", "GET, HEAD, PATCH, DELETE"},
			{http.MethodPut, "/api/v1/me/tokens/1", "GET, HEAD, PATCH, DELETE"},
			{http.MethodPut, "/api/v1/me/tokens", "GET, HEAD, POST"},
			{http.MethodDelete, "/api/v1/me/tokens", "GET, HEAD, POST"},
			{http.MethodGet, "/api/v1/me/tokens/1/rotate", "POST"},
		} {
			resp, body := s.do(t, tc.method, tc.path, bearer(f.active.Secret))
			p := problemOf(t, resp, body)
			if resp.StatusCode != 405 || p.Title != "Method Not Allowed" || resp.Header.Get("Allow") != tc.allow {
				t.Errorf("%s %s: status %d title %q Allow %q, want 405 with Allow: %s", tc.method, tc.path, resp.StatusCode, p.Title, resp.Header.Get("Allow"), tc.allow)
			}
		}
	})

	t.Run("HEAD is GET without the body", func(t *testing.T) {
		path := tokenPath(f.active.ID)
		usage := func() int64 {
			t.Helper()
			_, body := s.get(t, path, bearer(f.active.Secret))
			return numberOf(t, decodeObject(t, body)["data"].(map[string]any), "usage_count")
		}
		before := usage()
		resp, body := s.do(t, http.MethodHead, path, bearer(f.active.Secret))
		n, err := strconv.Atoi(resp.Header.Get("Content-Length"))
		if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Type") != "application/json" || err != nil || n < 100 {
			t.Errorf("HEAD %s: %d, %d body bytes, Content-Type %q, Content-Length %q; want 200, none, application/json and the GET body's length",
				path, resp.StatusCode, len(body), resp.Header.Get("Content-Type"), resp.Header.Get("Content-Length"))
		}
		// The HEAD is a use, like the GET it is: before's GET, the HEAD, and
		// the GET reading it.
		if after := usage(); after != before+2 {
			t.Errorf("usage_count after a HEAD = %d, want %d", after, before+2)
		}
		resp, body = s.do(t, http.MethodHead, path, bearer(mustSecret(t)))
		if resp.StatusCode != http.StatusUnauthorized || len(body) != 0 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("HEAD %s with an unknown token: %d, %d body bytes, WWW-Authenticate %q; want 401, none, a challenge",
				path, resp.StatusCode, len(body), resp.Header.Get("WWW-Authenticate"))
		}
	})

	t.Run("traceparent is honoured", func(t *testing.T) {
		const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
		resp, body := s.get(t, "/api/v1/me/tokens/999999", bearer(f.active.Secret), "Traceparent: 00-"+tid+"-00f067aa0ba902b7-01")
		if got := resp.Header.Get("X-Trace-Id"); got != tid {
			t.Errorf("X-Trace-Id = %q, want %q", got, tid)
		}
		if p := problemOf(t, resp, body); p.TraceID != tid {
			t.Errorf("trace_id = %q, want %q", p.TraceID, tid)
		}
		if !strings.Contains(s.logs.String(), `"trace_id":"`+tid+`"`) {
			t.Errorf("log has no line with trace_id %s", tid)
		}
		resp, _ = s.get(t, "/api/v1/me/tokens/1", "Traceparent: 00-zzzz-bad")
		if got := resp.Header.Get("X-Trace-Id"); len(got) != 32 || got == tid {
			t.Errorf("malformed traceparent: X-Trace-Id = %q, want a fresh id", got)
		}
	})
}

func TestRESTAuthentication(t *testing.T) {
	f := newFixture(t)
	s := f.s
	path := tokenPath(f.active.ID)
	flipped := []byte(f.active.Secret)
	flipped[10] ^= 1 // still alphanumeric, checksum now wrong

	for _, tc := range []struct {
		name         string
		path         string
		headers      []string
		invalidToken bool // error="invalid_token" expected
	}{
		{"no header", path, nil, false},
		{"other scheme", path, []string{"Authorization: Basic YWxpY2U6cHc="}, false},
		{"bearer without token", path, []string{"Authorization: Bearer"}, false},
		{"bearer and spaces", path, []string{"Authorization: Bearer    "}, false},
		{"bad checksum", path, []string{bearer(string(flipped))}, true},
		{"not a tokend secret", path, []string{bearer("ghp_abcdef")}, true},
		{"unknown well-formed secret", path, []string{bearer(mustSecret(t))}, true},
		{"revoked", path, []string{bearer(f.revoked.Secret)}, true},
		{"expired", path, []string{bearer(f.expired.Secret)}, true},
		{"address not allowed", path, []string{bearer(f.restricted.Secret)}, true},
		{"token in query string only", path + "?access_token=" + f.active.Secret, nil, false},
		{"two authorization headers", path, []string{bearer(f.active.Secret), bearer(f.unused.Secret)}, true},
		// Lines that are not valid gRPC metadata, which grpc-gateway would
		// drop: they are credentials all the same, never skipped.
		{"second authorization line with a tab", path, []string{bearer(f.active.Secret), "Authorization: Bearer\tjunk"}, true},
		{"first authorization line not ASCII", path, []string{"Authorization: Bearer \u00e9", bearer(f.active.Secret)}, true},
		{"only authorization line not ASCII", path, []string{"Authorization: Bearer \u00e9"}, true},
		{"credential smuggled as gateway metadata", path, []string{"Grpc-Metadata-Authorization: Bearer " + f.active.Secret}, false},
		{"spoofed forwarded address without trusted proxy", path, []string{bearer(f.restricted.Secret), "X-Forwarded-For: 10.1.2.3"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.get(t, tc.path, tc.headers...)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d, want 401; body %s", resp.StatusCode, body)
			}
			want := `Bearer realm="tokend"`
			if tc.invalidToken {
				want += `, error="invalid_token"`
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != want {
				t.Errorf("WWW-Authenticate = %q, want %q", got, want)
			}
			p := problemOf(t, resp, body)
			if p.Title != "Unauthorized" || p.Detail == "" {
				t.Errorf("problem = %+v", p)
			}
		})
	}

	t.Run("scheme is case-insensitive", func(t *testing.T) {
		for _, scheme := range []string{"bearer", "BEARER", "bEaReR"} {
			resp, body := s.get(t, path, "Authorization: "+scheme+" "+f.active.Secret)
			if resp.StatusCode != 200 {
				t.Errorf("scheme %q: status %d, body %s", scheme, resp.StatusCode, body)
			}
		}
	})

	t.Run("failed attempts count nothing", func(t *testing.T) {
		for _, tok := range []createdToken{f.restricted, f.revoked, f.expired} {
			resp, body := s.get(t, tokenPath(tok.ID), bearer(f.active.Secret))
			data := decodeObject(t, body)["data"].(map[string]any)
			if resp.StatusCode != 200 || data["usage_count"] != json.Number("0") || data["last_used_at"] != nil {
				t.Errorf("token %d after refused attempts: usage_count %v, last_used_at %v; want 0, null", tok.ID, data["usage_count"], data["last_used_at"])
			}
		}
	})
}

func TestRESTTrustedProxy(t *testing.T) {
	f := newFixture(t, "--trusted-proxy", "127.0.0.0/8")
	s := f.s
	path := tokenPath(f.restricted.ID)
	for _, tc := range []struct {
		xff  []string
		want int
	}{
		{[]string{"10.1.2.3"}, 200},              // proxy says the client is in 10/8
		{[]string{"10.1.2.3, 127.0.0.5"}, 200},   // a chain of trusted proxies
		{[]string{"10.1.2.3", "127.0.0.5"}, 200}, // the chain split over header lines
		{[]string{"::ffff:10.9.9.9"}, 200},       // IPv4-mapped IPv6 matches IPv4 rules
		{[]string{"2001:db8::7"}, 200},           // IPv6 rule
		{[]string{"10.1.2.3, 192.0.2.1"}, 401},   // rightmost untrusted hop is the client
		{[]string{"10.1.2.3", "192.0.2.1"}, 401}, // likewise across lines
		{[]string{"not-an-ip"}, 401},             // garbage ends the walk at the proxy
		// A proxy appends the client's address to the client's own value
		// ("$http_x_forwarded_for, $remote_addr"). A value that is not valid
		// gRPC metadata (grpc-gateway drops such a line whole) still names
		// the client the proxy appended.
		{[]string{"\u00e9, 192.0.2.1"}, 401},
		{[]string{"\u00e9, 10.1.2.3"}, 200},
		{[]string{"x\ty, 192.0.2.1"}, 401},
		{nil, 401}, // no header: the proxy itself is the client
	} {
		headers := []string{bearer(f.restricted.Secret)}
		for _, v := range tc.xff {
			headers = append(headers, "X-Forwarded-For: "+v)
		}
		resp, body := s.get(t, path, headers...)
		if resp.StatusCode != tc.want {
			t.Errorf("X-Forwarded-For %q: status %d, want %d; body %s", tc.xff, resp.StatusCode, tc.want, body)
		}
	}
	// A token kept to the proxy's own network is not opened to an outside
	// client who makes its X-Forwarded-For line invalid metadata: had the
	// line been dropped, the proxy would be taken for the client.
	internal := createToken(t, s.db, "alice", "internal", "--allowed-ip", "127.0.0.0/8")
	resp, body := s.get(t, tokenPath(internal.ID), bearer(internal.Secret), "X-Forwarded-For: \u00e9, 192.0.2.1")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("outside client behind the proxy, invalid-metadata X-Forwarded-For: status %d, want 401; body %s", resp.StatusCode, body)
	}
}

func TestRESTConcurrentUsageIsExact(t *testing.T) {
	s := startServer(t, "")
	tok := createToken(t, s.db, "carol", "parallel")
	path := tokenPath(tok.ID)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			// Not s.get: it may call t.Fatal, which must not run off the
			// test's goroutine.
			defer wg.Done()
			code, body, err := restDo(s.client, http.MethodGet, "http://"+s.addrs.HTTP+path, tok.Secret, nil)
			if err != nil || code != http.StatusOK {
				errs <- fmt.Sprintf("status %d (%v): %s", code, err, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	_, body := s.get(t, path, bearer(tok.Secret))
	if got := decodeObject(t, body)["data"].(map[string]any)["usage_count"]; got != json.Number(fmt.Sprint(n+1)) {
		t.Errorf("usage_count = %v, want %d", got, n+1)
	}
}

func TestRESTLogsNoSecrets(t *testing.T) {
	f := newFixture(t)
	s := f.s
	secrets := []createdToken{f.active, f.unused, f.revoked, f.expired, f.bob, f.restricted, f.loopbackOnly, f.expiresLater}
	for _, tok := range secrets {
		s.get(t, tokenPath(tok.ID), bearer(tok.Secret))
		s.get(t, "/api/v1/me/tokens/abc", bearer(tok.Secret))
	}
	logs := s.logs.String()
	for _, tok := range secrets {
		if strings.Contains(logs, tok.Secret) || strings.Contains(logs, tok.Secret[4:]) {
			t.Errorf("logs contain the secret of token %d", tok.ID)
		}
	}
	if strings.Contains(logs, "Bearer") {
		t.Error("logs contain an Authorization value")
	}
}

// problem is an RFC 9457 body as tokend writes it.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
	TraceID  string `json:"trace_id"`
	Errors   []struct {
		Field  string `json:"field"`
		Detail string `json:"detail"`
	} `json:"errors"`
}

// problemOf checks the invariants of every error response and returns its
// body.
func problemOf(t *testing.T, resp *http.Response, body []byte) problem {
	t.Helper()
	if got := resp.Header.Get("Content-Type"); got != "application/problem+json" {
		t.Errorf("Content-Type = %q, want application/problem+json; body %s", got, body)
	}
	raw := decodeObject(t, body)
	want := []string{"detail", "instance", "status", "title", "trace_id", "type"}
	if _, ok := raw["errors"]; ok && resp.StatusCode == http.StatusBadRequest {
		want = []string{"detail", "errors", "instance", "status", "title", "trace_id", "type"}
	}
	if keys := sortedKeys(raw); !slices.Equal(keys, want) {
		t.Errorf("problem keys = %v, want %v", keys, want)
	}
	var p problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("problem body: %v", err)
	}
	if p.Type != "about:blank" {
		t.Errorf("type = %q, want about:blank", p.Type)
	}
	if p.Status != resp.StatusCode {
		t.Errorf("status member = %d, HTTP status = %d", p.Status, resp.StatusCode)
	}
	if p.Title != http.StatusText(resp.StatusCode) {
		t.Errorf("title = %q, want %q", p.Title, http.StatusText(resp.StatusCode))
	}
	if p.Instance != resp.Request.URL.EscapedPath() {
		t.Errorf("instance = %q, want the request path %q", p.Instance, resp.Request.URL.EscapedPath())
	}
	if p.TraceID == "" || p.TraceID != resp.Header.Get("X-Trace-Id") {
		t.Errorf("trace_id = %q, X-Trace-Id = %q; want equal and non-empty", p.TraceID, resp.Header.Get("X-Trace-Id"))
	}
	return p
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func headerKeys(h http.Header) []string {
	var keys []string
	for k := range h {
		if k != "Date" && k != "X-Trace-Id" && k != "Content-Length" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func TestRESTProbesNeedNoToken(t *testing.T) {
	s := startServer(t, "")
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, body := s.get(t, path)
		if resp.StatusCode != http.StatusOK || string(body) != `{"status":"ok"}` {
			t.Errorf("GET %s = %d %s, want 200 {\"status\":\"ok\"}", path, resp.StatusCode, body)
		}
	}
}

func TestRESTFailedAuthenticationsAreThrottled(t *testing.T) {
	s := startServer(t, "", "--trusted-proxy", "127.0.0.0/8", "--auth-failure-limit", "5", "--auth-failure-window", "1m")
	good := createToken(t, s.db, "alice", "good")
	path := tokenPath(good.ID)
	attacker := "X-Forwarded-For: 198.51.100.66"
	for i := range 5 {
		resp, body := s.get(t, path, bearer(mustSecret(t)), attacker)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: status %d, want 401; %s", i, resp.StatusCode, body)
		}
	}
	resp, body := s.get(t, path, bearer(good.Secret), attacker)
	p := problemOf(t, resp, body)
	if resp.StatusCode != http.StatusTooManyRequests || p.Title != "Too Many Requests" {
		t.Fatalf("after 5 failures: status %d, want 429; %s", resp.StatusCode, body)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After = %q, want 1-60 seconds", resp.Header.Get("Retry-After"))
	}
	// A client at another address is not affected, and its request counts.
	resp, body = s.get(t, path, bearer(good.Secret), "X-Forwarded-For: 198.51.100.7")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("another client: status %d, want 200; %s", resp.StatusCode, body)
	}
	// The throttled request counted nothing: only the 200 above did.
	if got := decodeObject(t, body)["data"].(map[string]any)["usage_count"]; got != json.Number("1") {
		t.Errorf("usage_count = %v, want 1", got)
	}
	// The throttle keys on the derived client address, whatever the
	// transport: the same client is refused over gRPC too.
	_, err := s.grpcClient().GetToken(as(testCtx(t), good.Secret, "x-forwarded-for", "198.51.100.66"), &tokenv1.GetTokenRequest{TokenId: good.ID})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("gRPC from the throttled address: %v, want ResourceExhausted", err)
	}
}
