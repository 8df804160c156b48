package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/telemetry"
	"github.com/tokend/tokend/service/testutil"
)

// fakeConn is a grpc.ClientConnInterface that records every Invoke and
// answers with reply (copied into the caller's reply) or err.
type fakeConn struct {
	mu      sync.Mutex
	methods []string
	reply   proto.Message
	err     error
}

func (c *fakeConn) Invoke(_ context.Context, method string, _, reply any, _ ...grpc.CallOption) error {
	c.mu.Lock()
	c.methods = append(c.methods, method)
	c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	proto.Reset(reply.(proto.Message))
	proto.Merge(reply.(proto.Message), c.reply)
	return nil
}

func (c *fakeConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "no streams")
}

func (c *fakeConn) invoked() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.methods)
}

func (c *fakeConn) reset() {
	c.mu.Lock()
	c.methods = nil
	c.mu.Unlock()
}

func newHandler(t *testing.T, conn grpc.ClientConnInterface, log *slog.Logger) http.Handler {
	t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := New(context.Background(), Options{Conn: conn, Logger: log})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	return h
}

var paramSegment = regexp.MustCompile(`\{[^}]*\}`)

// concrete turns a route template into a path it matches.
func concrete(template string) string { return paramSegment.ReplaceAllString(template, "1") }

var allMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodOptions, http.MethodTrace, http.MethodConnect,
}

// decodeProblem checks the invariants of every problem response and
// returns its body.
func decodeProblem(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != ProblemContentType {
		t.Errorf("Content-Type = %q, want %q", ct, ProblemContentType)
	}
	var body map[string]any
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", rec.Body.String(), err)
	}
	var keys []string
	for k := range body {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"detail", "instance", "status", "title", "trace_id", "type"}; !slices.Equal(keys, want) {
		t.Errorf("problem keys = %v, want %v", keys, want)
	}
	if got, _ := body["status"].(json.Number); got.String() != strconv.Itoa(rec.Code) {
		t.Errorf("status member = %v, want the HTTP status %d", body["status"], rec.Code)
	}
	wantTitle := http.StatusText(rec.Code)
	if wantTitle == "" {
		wantTitle = "Error"
	}
	if body["title"] != wantTitle {
		t.Errorf("title = %v, want %q", body["title"], wantTitle)
	}
	if body["type"] != "about:blank" {
		t.Errorf("type = %v, want about:blank", body["type"])
	}
	for _, k := range []string{"detail", "instance", "trace_id"} {
		if _, ok := body[k].(string); !ok {
			t.Errorf("%s = %#v, want a string", k, body[k])
		}
	}
	return body
}

// rule is one binding of the HTTP rule file that grpc-gateway's routes are
// generated from.
type rule struct {
	fullMethod string // "/tokend.v1.TokenService/GetToken"
	method     string
	template   string
}

// ruleFile parses proto/tokend/v1/token_service_http.yaml, which is simple
// enough to read line by line. Anything it does not understand fails the
// test, so a new kind of binding cannot slip past the route table check.
func ruleFile(t *testing.T) []rule {
	t.Helper()
	const path = "../proto/tokend/v1/token_service_http.yaml"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the HTTP rule file: %v", err)
	}
	var out []rule
	selector := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "- "))
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch k {
		case "selector":
			i := strings.LastIndex(v, ".")
			if i < 0 {
				t.Fatalf("%s: bad selector %q", path, v)
			}
			selector = "/" + v[:i] + "/" + v[i+1:]
		case "get", "put", "post", "patch", "delete":
			if selector == "" {
				t.Fatalf("%s: binding %q before any selector", path, line)
			}
			out = append(out, rule{selector, strings.ToUpper(k), v})
		case "custom", "additional_bindings":
			t.Fatalf("%s: %s bindings are not understood by this test; extend it", path, k)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no bindings found", path)
	}
	return out
}

// templateMatches is an independent reading of a route template: literal
// segments match themselves, {name} matches any one non-empty segment.
func templateMatches(template, path string) bool {
	ts := strings.Split(template, "/")
	ps := strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if strings.HasPrefix(ts[i], "{") && strings.HasSuffix(ts[i], "}") {
			if ps[i] == "" {
				return false
			}
		} else if ts[i] != ps[i] {
			return false
		}
	}
	return true
}

// binding is a route's method and template, whatever else the route
// table comes to hold.
type binding struct{ method, template string }

// tableBindings returns routes() as bindings, in table order.
func tableBindings() []binding {
	var out []binding
	for _, rt := range routes() {
		out = append(out, binding{rt.method, rt.template})
	}
	return out
}

func TestRouteTableMatchesRuleFile(t *testing.T) {
	want := make(map[binding]bool)
	for _, r := range ruleFile(t) {
		want[binding{r.method, r.template}] = true
	}
	got := make(map[binding]bool)
	for _, b := range tableBindings() {
		if got[b] {
			t.Errorf("routes() lists %s %s twice", b.method, b.template)
		}
		got[b] = true
		if !want[b] {
			t.Errorf("routes() has %s %s, which the HTTP rule file does not", b.method, b.template)
		}
	}
	for b := range want {
		if !got[b] {
			t.Errorf("the HTTP rule file binds %s %s, which routes() lacks (no log route, no Allow)", b.method, b.template)
		}
	}
}

// TestRoutesAgreeWithGenerated checks the route table against the routes
// grpc-gateway generated: each route reaches the service (the RPC its rule
// names, for rule-file routes), and every other method on its path is 405
// with exactly the table's methods for that path in Allow.
func TestRoutesAgreeWithGenerated(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.NotFound, "nothing here")}
	h := newHandler(t, conn, nil)

	rpcOf := make(map[binding]string)
	for _, r := range ruleFile(t) {
		rpcOf[binding{r.method, r.template}] = r.fullMethod
	}
	table := tableBindings()
	all := slices.Clone(table)
	for b := range rpcOf {
		if !slices.Contains(all, b) {
			all = append(all, b)
		}
	}
	for _, rt := range all {
		p := concrete(rt.template)
		t.Run(rt.method+" "+rt.template, func(t *testing.T) {
			conn.reset()
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(rt.method, p, strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(rec, req)
			got := conn.invoked()
			wantRPC, fromRules := rpcOf[rt]
			switch {
			case len(got) != 1:
				t.Fatalf("%s %s: Invoke calls %q, want one (status %d, body %s)", rt.method, p, got, rec.Code, rec.Body)
			case fromRules && got[0] != wantRPC:
				t.Errorf("%s %s: invoked %s, want %s", rt.method, p, got[0], wantRPC)
			case !strings.HasPrefix(got[0], "/tokend.v1.TokenService/"):
				t.Errorf("%s %s: invoked %s, want a TokenService method", rt.method, p, got[0])
			}
			if rec.Code == http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status 405 for a routed method", rt.method, p)
			}
			// The fake answers NotFound, which the error handler maps.
			if rec.Code != http.StatusNotFound {
				t.Errorf("%s %s: status %d, want the service's 404", rt.method, p, rec.Code)
			}
			decodeProblem(t, rec)
			// The log line names the route that served the request.
			if slices.Contains(table, rt) {
				if got := newRouter().routeOf(httptest.NewRequest(rt.method, p, nil)); got != rt.template {
					t.Errorf("routeOf(%s %s) = %q, want %q", rt.method, p, got, rt.template)
				}
			}
		})
	}

	paths := make(map[string]bool)
	for _, rt := range all {
		paths[concrete(rt.template)] = true
	}
	for p := range paths {
		methods := tableMethods(table, p)
		for _, m := range allMethods {
			if slices.Contains(methods, m) {
				continue
			}
			t.Run(m+" "+p, func(t *testing.T) {
				conn.reset()
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(m, p, nil))
				if got := conn.invoked(); len(got) != 0 {
					t.Errorf("%s %s reached the service: %q", m, p, got)
				}
				if rec.Code != http.StatusMethodNotAllowed {
					t.Fatalf("%s %s: status %d, want 405 (body %s)", m, p, rec.Code, rec.Body)
				}
				var allow []string
				for _, a := range strings.Split(rec.Header().Get("Allow"), ",") {
					allow = append(allow, strings.TrimSpace(a))
				}
				want := slices.Clone(methods)
				slices.Sort(allow)
				slices.Sort(want)
				if !slices.Equal(allow, want) {
					t.Errorf("%s %s: Allow = %q, want exactly %q", m, p, rec.Header().Get("Allow"), want)
				}
				body := decodeProblem(t, rec)
				if d, _ := body["detail"].(string); !strings.Contains(d, m) {
					t.Errorf("detail %q does not name the method %s", d, m)
				}
			})
		}
	}
}

// A form-encoded POST is grpc-gateway's "path length fallback" for GET; it
// must not turn a POST into a GET behind the route table's back.
func TestFormPostIsNotServedAsGet(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.NotFound, "nothing here")}
	h := newHandler(t, conn, nil)
	for _, rt := range tableBindings() {
		p := concrete(rt.template)
		if rt.method != http.MethodGet || slices.ContainsFunc(tableBindings(), func(o binding) bool {
			return o.method == http.MethodPost && templateMatches(o.template, p)
		}) {
			continue
		}
		conn.reset()
		req := httptest.NewRequest(http.MethodPost, p, strings.NewReader("a=b"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := conn.invoked(); len(got) != 0 || rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("form POST %s: status %d, Invoke calls %q; want 405 and no call", p, rec.Code, got)
		}
	}
	// Where POST is routed too, a form POST asking to be taken for a GET
	// (grpc-gateway's X-HTTP-Method-Override, on a path-length fallback)
	// is neither a list nor a create.
	for _, rt := range tableBindings() {
		if rt.method != http.MethodPost {
			continue
		}
		conn.reset()
		req := httptest.NewRequest(http.MethodPost, concrete(rt.template), strings.NewReader("limit=1"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-HTTP-Method-Override", http.MethodGet)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := conn.invoked(); len(got) != 0 || rec.Code != http.StatusUnsupportedMediaType {
			t.Errorf("form POST %s with X-HTTP-Method-Override: GET: status %d, Invoke calls %q; want 415 and no call", rt.template, rec.Code, got)
		}
	}
}

func TestUnknownPaths(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.Internal, "must not be called")}
	h := newHandler(t, conn, nil)
	for _, p := range []string{
		"/",
		"/api",
		"/api/v1",
		"/api/v1/me",
		"/api/v1/me/tokens/1/extra",
		"/api/v1/me/tokens/1/rotate/again",
		"/api/v2/me/tokens/1",
		"/API/V1/ME/TOKENS/1",
		// An empty {token_id}, which grpc-gateway would route.
		"/api/v1/me/tokens/",
		"/api/v1/me/tokens//rotate",
		// An escaped slash is not a separator.
		"/api/v1/me/tokens%2F1",
		"/api/v1/me/tokens%2Fcurrent",
	} {
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, p, nil))
			if rec.Code != http.StatusNotFound {
				t.Errorf("%s %s: status %d, want 404", m, p, rec.Code)
				continue
			}
			body := decodeProblem(t, rec)
			if body["detail"] != detailNotFound || body["instance"] != p {
				t.Errorf("%s %s: detail %v, instance %v", m, p, body["detail"], body["instance"])
			}
			if rec.Header().Get("Allow") != "" {
				t.Errorf("%s %s: 404 with Allow %q", m, p, rec.Header().Get("Allow"))
			}
		}
	}
	if got := conn.invoked(); len(got) != 0 {
		t.Errorf("unknown paths reached the service: %q", got)
	}
}

// TestUnroutedBodyIsNotRead: a request the route table does not route is
// answered without reading its body. grpc-gateway's generated handlers
// read a whole body before anything checks it, so handing such a request
// on would let anyone, without a token, make the server hold any amount.
func TestUnroutedBodyIsNotRead(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.Internal, "must not be called")}
	h := newHandler(t, conn, nil)
	for _, target := range []struct{ method, path string }{
		{http.MethodPatch, "/api/v1/me/tokens/"},
		{http.MethodPost, "/api/v1/me/tokens//rotate"},
		{http.MethodPost, "/api/v1/me/tokens/1/rotate/again"},
	} {
		body := &countingReader{left: 10 * DefaultMaxBodyBytes}
		req := httptest.NewRequest(target.method, target.path, body)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusNotFound || body.read != 0 {
			t.Errorf("%s %s: status %d after reading %d body bytes; want 404 and none read", target.method, target.path, rec.Code, body.read)
		}
	}
	if got := conn.invoked(); len(got) != 0 {
		t.Errorf("unrouted requests reached the service: %q", got)
	}
}

// countingReader yields left bytes of '{' and counts what is read.
type countingReader struct{ left, read int }

func (c *countingReader) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.left)
	for i := range n {
		p[i] = '{'
	}
	c.left -= n
	c.read += n
	return n, nil
}

// TestEscapedSlashIsNotASeparator: routing is on the path as the client
// escaped it, so %2F cannot spell another route (a proxy in front that
// allows or refuses by raw path would otherwise be bypassed).
func TestEscapedSlashIsNotASeparator(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.Internal, "must not be called")}
	h := newHandler(t, conn, nil)
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/api/v1/me/tokens/1%2Frotate", http.StatusMethodNotAllowed}, // the {token_id} route, which takes no POST
		{http.MethodGet, "/api/v1/me/tokens/1%2Frotate", http.StatusBadRequest},        // ... and a malformed id
		{http.MethodGet, "/api/v1/me/tokens/1%2F", http.StatusBadRequest},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.want {
			t.Errorf("%s %s: status %d, want %d; %s", tc.method, tc.path, rec.Code, tc.want, rec.Body)
		}
		decodeProblem(t, rec)
	}
	if got := conn.invoked(); len(got) != 0 {
		t.Errorf("escaped-slash paths reached the service: %q", got)
	}
}

// TestHeadIsGet: HEAD is served wherever GET is, as GET (RFC 9110 9.3.2;
// the server, not the handler, drops the body), and refused elsewhere.
func TestHeadIsGet(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.NotFound, "nothing here")}
	h := newHandler(t, conn, nil)
	for _, rt := range tableBindings() {
		if rt.method != http.MethodGet {
			continue
		}
		p := concrete(rt.template)
		var calls [2][]string
		var codes [2]int
		for i, m := range []string{http.MethodGet, http.MethodHead} {
			conn.reset()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, p, nil))
			calls[i], codes[i] = conn.invoked(), rec.Code
		}
		if len(calls[1]) != 1 || !slices.Equal(calls[0], calls[1]) || codes[0] != codes[1] {
			t.Errorf("HEAD %s: invoked %q with status %d; GET invoked %q with %d", p, calls[1], codes[1], calls[0], codes[0])
		}
	}
	conn.reset()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/api/v1/me/tokens/1/rotate", nil))
	if got := conn.invoked(); rec.Code != http.StatusMethodNotAllowed || len(got) != 0 || rec.Header().Get("Allow") != "POST" {
		t.Errorf("HEAD on a POST-only route: status %d, Allow %q, invoked %q; want 405, POST, none", rec.Code, rec.Header().Get("Allow"), got)
	}
}

// TestEscapedUnreservedCharactersAreTheSamePath: an escaped letter, digit,
// "-", ".", "_" or "~" is the same URI as the character (RFC 3986
// 6.2.2.2), in literal segments as in a {token_id}.
func TestEscapedUnreservedCharactersAreTheSamePath(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.NotFound, "nothing here")}
	h := newHandler(t, conn, nil)
	for _, tc := range []struct{ method, path, rpc string }{
		{http.MethodGet, "/api/v1/me/%74okens", "ListTokens"},
		{http.MethodGet, "/api/v1/me/tokens/%63urrent", "GetCurrentToken"},
		{http.MethodGet, "/api/v1/me/tokens/%31", "GetToken"},
		{http.MethodPost, "/api/v1/me/tokens/1/rotat%65", "RotateToken"},
		{http.MethodDelete, "/%61pi/v1/me/tokens/1", "RevokeToken"},
	} {
		conn.reset()
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := conn.invoked(); len(got) != 1 || got[0] != "/tokend.v1.TokenService/"+tc.rpc {
			t.Errorf("%s %s: invoked %q, want %s (status %d, %s)", tc.method, tc.path, got, tc.rpc, rec.Code, rec.Body)
		}
	}
}

func TestTokenIDParseErrorIsHidden(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.Internal, "must not be called")}
	h := newHandler(t, conn, nil)
	for _, id := range []string{"abc", "-", "1.5", "9223372036854775808", "0x10"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/me/tokens/"+id, nil))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("token id %q: status %d, want 400", id, rec.Code)
			continue
		}
		body := decodeProblem(t, rec)
		if body["detail"] != detailTokenIDInvalid {
			t.Errorf("token id %q: detail %q, want %q", id, body["detail"], detailTokenIDInvalid)
		}
		if strings.Contains(rec.Body.String(), "strconv") {
			t.Errorf("token id %q: body leaks strconv: %s", id, rec.Body)
		}
	}
	if got := conn.invoked(); len(got) != 0 {
		t.Errorf("unparsable ids reached the service: %q", got)
	}
}

func TestSuccessfulResponse(t *testing.T) {
	conn := &fakeConn{reply: &tokenv1.GetTokenResponse{Token: &tokenv1.Token{
		Id: 42, Name: "ci", Status: tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE, UsageCount: 3,
	}}}
	h := newHandler(t, conn, nil)
	req := httptest.NewRequest(http.MethodGet, "/api/v1/me/tokens/42", nil)
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
	var got struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	if got.Data["id"] != float64(42) || got.Data["status"] != "active" || got.Data["usage_count"] != float64(3) {
		t.Errorf("data = %v", got.Data)
	}
	if tid := rec.Header().Get(TraceHeader); tid != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("%s = %q, want the traceparent's trace id", TraceHeader, tid)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
}

// The edge turns the HTTP peer into the gRPC peer and starts the request's
// Info before the next handler runs.
func TestEdgeContext(t *testing.T) {
	var ri *request.Info
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri = request.FromContext(r.Context())
		w.WriteHeader(http.StatusNoContent)
	})
	req := httptest.NewRequest(http.MethodGet, "/x", nil)
	req.RemoteAddr = "[::ffff:203.0.113.7]:4242"
	rec := httptest.NewRecorder()
	edge(slog.New(slog.DiscardHandler), newRouter(), next).ServeHTTP(rec, req)
	if ri == nil {
		t.Fatal("no request.Info in the handler's context")
	}
	if ri.Client != netip.MustParseAddr("203.0.113.7") {
		t.Errorf("Info.Client = %v, want 203.0.113.7", ri.Client)
	}
	if ri.Peer != netip.MustParseAddr("203.0.113.7") {
		t.Errorf("Info.Peer = %v, want the TCP peer 203.0.113.7", ri.Peer)
	}
	if rec.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", rec.Header().Get("Cache-Control"))
	}
	if rec.Header().Get(TraceHeader) != ri.TraceID || len(ri.TraceID) != 32 {
		t.Errorf("%s = %q, Info.TraceID = %q", TraceHeader, rec.Header().Get(TraceHeader), ri.TraceID)
	}
}

// logLines parses the JSON log lines in buf.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(buf)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			return out
		} else if err != nil {
			t.Fatalf("log is not JSON lines: %v", err)
		}
		out = append(out, m)
	}
}

func TestEdgeRecoversPanic(t *testing.T) {
	var logBuf testutil.SyncBuffer
	log := slog.New(slog.NewJSONHandler(&logBuf, nil))
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("secret internals")
		}
		w.WriteHeader(http.StatusNoContent)
	})
	m := telemetry.NewMetrics(telemetry.Sources{})
	srv := httptest.NewServer(wrap(Options{Logger: log, Metrics: m}, newRouter(), next))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/panic")
	if err != nil {
		t.Fatalf("GET /panic: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500 (body %s)", resp.StatusCode, body)
	}
	rec := httptest.NewRecorder()
	rec.Code = resp.StatusCode
	for k, v := range resp.Header {
		rec.Header()[k] = v
	}
	rec.Body = bytes.NewBuffer(body)
	p := decodeProblem(t, rec)
	traceID := resp.Header.Get(TraceHeader)
	if len(traceID) != 32 || p["trace_id"] != traceID {
		t.Errorf("trace_id %v, %s %q; want the same 32-digit id", p["trace_id"], TraceHeader, traceID)
	}
	if p["detail"] != detailInternal || strings.Contains(string(body), "secret internals") {
		t.Errorf("detail %q; body %s must not carry the panic value", p["detail"], body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}

	// The server survived and still serves.
	resp, err = http.Get(srv.URL + "/ok")
	if err != nil {
		t.Fatalf("GET /ok after a panic: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("GET /ok after a panic: status %d, want 204", resp.StatusCode)
	}

	var sawPanic, sawRequest bool
	for _, l := range logLines(t, bytes.NewBuffer(logBuf.Bytes())) {
		if l["trace_id"] != traceID {
			continue
		}
		switch l["msg"] {
		case "panic serving request":
			sawPanic = l["level"] == "ERROR" && l["panic"] == "secret internals"
		case "request":
			sawRequest = l["status"] == float64(500) && l["transport"] == "http" && l["client"] == "127.0.0.1"
		}
	}
	if !sawPanic || !sawRequest {
		t.Errorf("log lacks the panic line (%v) or the request line (%v) with trace_id %s:\n%s", sawPanic, sawRequest, traceID, logBuf.String())
	}
	// The panic's 500 is counted like any answer.
	scrape := httptest.NewRecorder()
	m.Handler().ServeHTTP(scrape, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`tokend_http_requests_total{code="500",method="get",route="unmatched"} 1`,
		`tokend_http_requests_total{code="204",method="get",route="unmatched"} 1`,
	} {
		if !strings.Contains(scrape.Body.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, scrape.Body)
		}
	}
}

func TestEdgePanicAfterWrite(t *testing.T) {
	var logBuf bytes.Buffer
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte("partial"))
		panic("late")
	})
	rec := httptest.NewRecorder()
	wrap(Options{Logger: slog.New(slog.NewJSONHandler(&logBuf, nil))}, newRouter(), next).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
	if rec.Code != http.StatusAccepted || rec.Body.String() != "partial" {
		t.Errorf("after a late panic: status %d, body %q; want the handler's 202 and body untouched", rec.Code, rec.Body)
	}
	var logged bool
	for _, l := range logLines(t, &logBuf) {
		if l["msg"] == "request" && l["status"] == float64(http.StatusAccepted) {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no request line with status 202:\n%s", logBuf.String())
	}
}

func TestEdgeRepanicsAbortHandler(t *testing.T) {
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Errorf("recovered %v, want http.ErrAbortHandler to propagate", p)
		}
	}()
	edge(slog.New(slog.DiscardHandler), newRouter(), next).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/x", nil))
	t.Error("ServeHTTP returned normally after ErrAbortHandler")
}

func TestEdgeLogsRouteTemplate(t *testing.T) {
	var logBuf bytes.Buffer
	conn := &fakeConn{err: status.Error(codes.NotFound, "nothing here")}
	h := newHandler(t, conn, slog.New(slog.NewJSONHandler(&logBuf, nil)))
	for _, p := range []string{"/api/v1/me/tokens/12345", "/nope/secret-looking-path"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, p, nil))
	}
	lines := logLines(t, &logBuf)
	if len(lines) != 2 {
		t.Fatalf("log lines = %d, want 2:\n%v", len(lines), lines)
	}
	if lines[0]["route"] != "/api/v1/me/tokens/{token_id}" || lines[1]["route"] != "unmatched" {
		t.Errorf("routes logged %v, %v; want the template and unmatched", lines[0]["route"], lines[1]["route"])
	}
	for _, l := range lines {
		for k, v := range l {
			if s, ok := v.(string); ok && k != "trace_id" && (strings.Contains(s, "12345") || strings.Contains(s, "secret-looking")) {
				t.Errorf("log line carries the raw path: %v", l)
			}
		}
	}
}

// tableMethods is what Allow must say for path p: the methods of the routes
// whose template matches it, or, when a literal route names p exactly
// (/api/v1/me/tokens/current), of that route alone.
func tableMethods(table []binding, p string) []string {
	literal := false
	for _, rt := range table {
		literal = literal || !strings.Contains(rt.template, "{") && rt.template == p
	}
	var methods []string
	for _, rt := range table {
		if literal && rt.template != p {
			continue
		}
		if templateMatches(rt.template, p) && !slices.Contains(methods, rt.method) {
			methods = append(methods, rt.method)
			if rt.method == http.MethodGet {
				methods = append(methods, http.MethodHead) // HEAD is GET without the body
			}
		}
	}
	return methods
}

// TestTooLargeClosesTheConnection: after a 413, declared or found while
// reading a chunked body, the server does not keep the connection to
// drain what remains of the body.
func TestTooLargeClosesTheConnection(t *testing.T) {
	conn := &fakeConn{err: status.Error(codes.Internal, "must not be called")}
	srv := httptest.NewServer(newHandler(t, conn, nil))
	defer srv.Close()
	big := bytes.Repeat([]byte("a"), DefaultMaxBodyBytes+1)
	for name, body := range map[string]io.Reader{
		"declared length": bytes.NewReader(big),
		"chunked":         struct{ io.Reader }{bytes.NewReader(big)},
	} {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/me/tokens", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Errorf("%s: status %d, connection closed %v; want 413 and close", name, resp.StatusCode, resp.Close)
		}
	}
}

// TestCheckBodyLeavesTheRequestAlone checks that the body check hands on a
// copy with the checked body and no query string, and leaves the request
// it was given (whose URL its caller shares) as it was.
func TestCheckBodyLeavesTheRequestAlone(t *testing.T) {
	var got *http.Request
	var gotBody []byte
	h := newRouter().checkBody(DefaultMaxBodyBytes, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		gotBody, _ = io.ReadAll(r.Body)
	}))
	body := `{"name":"ci"}`
	r := httptest.NewRequest(http.MethodPost, "/api/v1/me/tokens?update_mask=allowed_ips", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	url := r.URL
	h.ServeHTTP(httptest.NewRecorder(), r)
	if got == nil {
		t.Fatal("the checked request was not handed on")
	}
	if got.URL.RawQuery != "" || string(gotBody) != body || got.ContentLength != int64(len(body)) {
		t.Errorf("handed on: query %q, body %q (length %d); want no query and the body", got.URL.RawQuery, gotBody, got.ContentLength)
	}
	if r.URL != url || r.URL.RawQuery != "update_mask=allowed_ips" {
		t.Errorf("the caller's request now has query %q; want it unchanged", r.URL.RawQuery)
	}
}

// TestEveryResponseHasEdgeHeaders checks the headers the edge puts on every
// response, whoever answers: an API success, problems from the router and
// from the service, and the documents and probes beside the API.
func TestEveryResponseHasEdgeHeaders(t *testing.T) {
	ok := newHandler(t, &fakeConn{reply: &tokenv1.GetTokenResponse{Token: &tokenv1.Token{Id: 42}}}, nil)
	failing := newHandler(t, &fakeConn{err: status.Error(codes.NotFound, "no such token")}, nil)
	for _, tc := range []struct {
		name, method, path string
		h                  http.Handler
		status             int
	}{
		{"success", http.MethodGet, "/api/v1/me/tokens/42", ok, http.StatusOK},
		{"service error", http.MethodGet, "/api/v1/me/tokens/42", failing, http.StatusNotFound},
		{"unknown path", http.MethodGet, "/nope", ok, http.StatusNotFound},
		{"method not allowed", http.MethodPut, "/api/v1/me/tokens/42", ok, http.StatusMethodNotAllowed},
		{"OpenAPI document", http.MethodGet, pathOpenAPI, ok, http.StatusOK},
		{"docs", http.MethodGet, pathDocs, ok, http.StatusOK},
		{"liveness", http.MethodGet, pathHealthz, ok, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tc.h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d", rec.Code, tc.status)
			}
			for k, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"} {
				if got := rec.Header().Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("%s = %q, want exactly %q", k, got, want)
				}
			}
			if tid := rec.Header().Get(TraceHeader); len(tid) != 32 {
				t.Errorf("%s = %q, want a trace id", TraceHeader, tid)
			}
		})
	}
}
