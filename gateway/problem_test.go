package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/rpc"
)

const testTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"

// tokendErr returns a status error carrying tokend's ErrorInfo.
func tokendErr(t *testing.T, c codes.Code, reason, msg string) error {
	t.Helper()
	return withInfo(t, c, rpc.ErrorDomain, reason, msg)
}

func withInfo(t *testing.T, c codes.Code, domain, reason, msg string) error {
	t.Helper()
	st, err := status.New(c, msg).WithDetails(&errdetails.ErrorInfo{Domain: domain, Reason: reason})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func problemRequest(path string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	return r.WithContext(request.NewContext(r.Context(), &request.Info{TraceID: testTraceID}))
}

func TestHandleError(t *testing.T) {
	const parserMsg = `type mismatch, parameter: token_id, error: strconv.ParseInt: parsing "abc": invalid syntax`
	tests := []struct {
		name          string
		err           error
		wantCode      int
		wantDetail    string // exact, if set
		notInDetail   string // substring the detail must not contain, if set
		wantChallenge string // exact WWW-Authenticate, "" for none
	}{
		{
			name:          "unauthenticated, invalid token",
			err:           tokendErr(t, codes.Unauthenticated, rpc.ReasonInvalidToken, "Authentication failed"),
			wantCode:      401,
			wantDetail:    "Authentication failed",
			wantChallenge: `Bearer realm="tokend", error="invalid_token"`,
		},
		{
			name:          "unauthenticated, missing credentials",
			err:           tokendErr(t, codes.Unauthenticated, rpc.ReasonMissingCredentials, "Missing bearer token"),
			wantCode:      401,
			wantDetail:    "Missing bearer token",
			wantChallenge: `Bearer realm="tokend"`,
		},
		{
			name:          "unauthenticated without details",
			err:           status.Error(codes.Unauthenticated, "library says no: secret internals"),
			wantCode:      401,
			wantDetail:    "Unauthorized.",
			wantChallenge: `Bearer realm="tokend"`,
		},
		{
			name:          "unauthenticated, INVALID_TOKEN from another domain",
			err:           withInfo(t, codes.Unauthenticated, "example.com", rpc.ReasonInvalidToken, "secret internals"),
			wantCode:      401,
			wantDetail:    "Unauthorized.",
			wantChallenge: `Bearer realm="tokend"`,
		},
		{
			name:       "not found without details",
			err:        status.Error(codes.NotFound, "row 17 missing in bucket secret internals"),
			wantCode:   404,
			wantDetail: detailNotFound,
		},
		{
			name:       "not found from tokend",
			err:        tokendErr(t, codes.NotFound, rpc.ReasonNotFound, "Access token not found"),
			wantCode:   404,
			wantDetail: "Access token not found",
		},
		{
			name:        "invalid argument from the gateway's parser",
			err:         status.Error(codes.InvalidArgument, parserMsg),
			wantCode:    400,
			wantDetail:  detailTokenIDInvalid,
			notInDetail: "strconv",
		},
		{
			name:        "invalid argument, other parameter",
			err:         status.Error(codes.InvalidArgument, `type mismatch, parameter: page_size, error: strconv.ParseInt: parsing "x": invalid syntax`),
			wantCode:    400,
			wantDetail:  `The parameter "page_size" is malformed or out of range.`,
			notInDetail: "strconv",
		},
		{
			name:        "invalid argument without a parameter",
			err:         status.Error(codes.InvalidArgument, "proto: syntax error (line 1:2): secret internals"),
			wantCode:    400,
			wantDetail:  detailBadRequest,
			notInDetail: "secret internals",
		},
		{
			name:       "invalid argument from tokend",
			err:        tokendErr(t, codes.InvalidArgument, rpc.ReasonInvalidArgument, "name must not be blank"),
			wantCode:   400,
			wantDetail: "name must not be blank",
		},
		{
			name:        "internal",
			err:         status.Error(codes.Internal, "bbolt: secret internals"),
			wantCode:    500,
			wantDetail:  detailInternal,
			notInDetail: "secret internals",
		},
		{
			name:       "internal from tokend",
			err:        tokendErr(t, codes.Internal, rpc.ReasonInternal, rpc.MessageInternal),
			wantCode:   500,
			wantDetail: detailInternal,
		},
		{
			name:        "unknown code",
			err:         status.Error(codes.Unknown, "secret internals"),
			wantCode:    500,
			wantDetail:  detailInternal,
			notInDetail: "secret internals",
		},
		{
			name:        "plain error",
			err:         errors.New("secret internals"),
			wantCode:    500,
			wantDetail:  detailInternal,
			notInDetail: "secret internals",
		},
		{
			name:       "deadline exceeded",
			err:        status.Error(codes.DeadlineExceeded, "deadline exceeded"),
			wantCode:   504,
			wantDetail: "The request took too long.",
		},
		{
			name:       "canceled",
			err:        status.Error(codes.Canceled, "context canceled"),
			wantCode:   499,
			wantDetail: "The request was canceled.",
		},
		{
			name:       "permission denied",
			err:        status.Error(codes.PermissionDenied, "secret internals"),
			wantCode:   403,
			wantDetail: "Forbidden.",
		},
		{
			name:       "resource exhausted",
			err:        status.Error(codes.ResourceExhausted, "secret internals"),
			wantCode:   429,
			wantDetail: "Too Many Requests.",
		},
		{
			name:        "unimplemented",
			err:         status.Error(codes.Unimplemented, "unknown method secret internals"),
			wantCode:    501,
			wantDetail:  detailInternal,
			notInDetail: "secret internals",
		},
		{
			name:        "unavailable",
			err:         status.Error(codes.Unavailable, "connection refused: secret internals"),
			wantCode:    503,
			wantDetail:  detailInternal,
			notInDetail: "secret internals",
		},
		{
			name:        "gateway HTTP status error",
			err:         &runtime.HTTPStatusError{HTTPStatus: http.StatusBadRequest, Err: status.Error(codes.InvalidArgument, "malformed escape secret internals")},
			wantCode:    400,
			wantDetail:  detailBadRequest,
			notInDetail: "secret internals",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const path = "/api/v1/me/tokens/abc"
			rec := httptest.NewRecorder()
			handleError(context.Background(), nil, nil, rec, problemRequest(path), tt.err)
			if rec.Code != tt.wantCode {
				t.Errorf("status %d, want %d", rec.Code, tt.wantCode)
			}
			p := decodeProblem(t, rec)
			detail, _ := p["detail"].(string)
			if tt.wantDetail != "" && detail != tt.wantDetail {
				t.Errorf("detail %q, want %q", detail, tt.wantDetail)
			}
			if tt.notInDetail != "" && strings.Contains(rec.Body.String(), tt.notInDetail) {
				t.Errorf("body %s contains %q", rec.Body, tt.notInDetail)
			}
			if strings.Contains(rec.Body.String(), "secret internals") {
				t.Errorf("body %s leaks the library message", rec.Body)
			}
			if p["instance"] != path {
				t.Errorf("instance %v, want %q", p["instance"], path)
			}
			if p["trace_id"] != testTraceID {
				t.Errorf("trace_id %v, want %q", p["trace_id"], testTraceID)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tt.wantChallenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.wantChallenge)
			}
		})
	}
}

func TestHandleRoutingError(t *testing.T) {
	routed := concrete(routes()[0].template)
	wantAllow := tableMethods(tableBindings(), routed) // once each
	slices.Sort(wantAllow)
	tests := []struct {
		path, method string
		code         int
		wantCode     int
		wantAllow    []string
	}{
		{routed, "BREW", 405, 405, wantAllow},
		{"/nope", http.MethodDelete, 405, 404, nil},
		{"/nope", http.MethodGet, 404, 404, nil},
		{"/nope", http.MethodGet, 400, 400, nil},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		r := problemRequest(tt.path)
		r.Method = tt.method
		newRouter().handleRoutingError(context.Background(), nil, nil, rec, r, tt.code)
		var allow []string
		if h := rec.Header().Get("Allow"); h != "" {
			allow = strings.Split(h, ", ")
			slices.Sort(allow)
		}
		if rec.Code != tt.wantCode || !slices.Equal(allow, tt.wantAllow) {
			t.Errorf("%s %s routing %d: status %d, Allow %q; want %d, %q", tt.method, tt.path, tt.code, rec.Code, rec.Header().Get("Allow"), tt.wantCode, tt.wantAllow)
		}
		decodeProblem(t, rec)
	}
}

func TestWriteProblemWithoutRequestInfo(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Length", "999")
	writeProblem(rec, httptest.NewRequest(http.MethodGet, "/a%20b/c", nil), http.StatusTeapot, "short and stout")
	p := decodeProblem(t, rec)
	if p["trace_id"] != "" || p["instance"] != "/a%20b/c" || p["detail"] != "short and stout" {
		t.Errorf("problem = %v", p)
	}
	if rec.Header().Get("Content-Length") != "" {
		t.Errorf("stale Content-Length %q survived", rec.Header().Get("Content-Length"))
	}
}

func FuzzWriteProblem(f *testing.F) {
	f.Add(404, "No such resource.", "/api/v1/me/tokens/1")
	f.Add(405, "Method DELETE is not allowed here; use GET.", "/api/v1/me/tokens/%2F")
	f.Add(499, "", "/")
	f.Add(100, "\x00\xff<script>\"", "/a%20b/%zz")
	f.Add(599, "\u2028\u2029", "/☃/%E2%98%83")
	f.Add(-1, "x", "")
	f.Fuzz(func(t *testing.T, code int, detail, path string) {
		if code < 100 || code > 599 {
			t.Skip()
		}
		unescaped, err := url.PathUnescape(path)
		if err != nil {
			t.Skip()
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.URL.Path, r.URL.RawPath = unescaped, path
		r = r.WithContext(request.NewContext(r.Context(), &request.Info{TraceID: testTraceID}))
		rec := httptest.NewRecorder()
		writeProblem(rec, r, code, detail)

		body := rec.Body.Bytes()
		if !json.Valid(body) {
			t.Fatalf("body is not valid JSON: %q", body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != ProblemContentType {
			t.Errorf("Content-Type = %q", ct)
		}
		var p Problem
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if p.Status != rec.Code || rec.Code != code {
			t.Errorf("status member %d, HTTP status %d, asked for %d", p.Status, rec.Code, code)
		}
		wantTitle := http.StatusText(code)
		if wantTitle == "" {
			wantTitle = "Error"
		}
		if p.Title != wantTitle || p.Type != "about:blank" || p.TraceID != testTraceID {
			t.Errorf("problem %+v", p)
		}
		if utf8.ValidString(detail) && p.Detail != detail {
			t.Errorf("detail %q, want %q", p.Detail, detail)
		}
		if p.Instance != r.URL.EscapedPath() {
			t.Errorf("instance %q, want %q", p.Instance, r.URL.EscapedPath())
		}
		if s := strconv.Itoa(code); !strings.Contains(string(body), `"status":`+s) {
			t.Errorf("body %s lacks status %s", body, s)
		}
	})
}
