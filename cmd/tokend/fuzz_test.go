package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
)

// fuzzOps are the REST operations FuzzREST drives: every route that takes
// a path id, a query string or a JSON body.
var fuzzOps = []struct {
	method, path string // path: "{id}" is replaced by the fuzzed id
	body, query  bool
	ok           int
}{
	{http.MethodPost, "/api/v1/me/tokens", true, false, http.StatusCreated},
	{http.MethodPatch, "/api/v1/me/tokens/{id}", true, false, http.StatusOK},
	{http.MethodPost, "/api/v1/me/tokens/{id}/rotate", true, false, http.StatusOK},
	{http.MethodGet, "/api/v1/me/tokens/{id}", false, false, http.StatusOK},
	{http.MethodDelete, "/api/v1/me/tokens/{id}", false, false, http.StatusNoContent},
	{http.MethodGet, "/api/v1/me/tokens", false, true, http.StatusOK},
}

// FuzzREST sends arbitrary path ids, query strings and JSON bodies to every
// REST operation that takes them, through the whole in-process stack
// (gateway, interceptor chain, service, a real bbolt store). Whatever the
// input: no panic and no 500; a success is JSON (or empty for 204); a
// refusal is problem+json whose status is the HTTP status and whose detail
// leaks no parser internals; and a refused request changes nothing stored.
func FuzzREST(f *testing.F) {
	seeds := []struct {
		op       uint8
		id, body string
	}{
		{0, "", `{"name":"ci","expires_in_seconds":3600,"allowed_ips":["10.0.0.0/8","2001:db8::1"]}`},
		{0, "", `{"name":"a","expires_at":"2030-01-01T00:00:00Z"}`},
		{0, "", `{"name":"a","name":"b"}`},
		{0, "", `{"name":1}`},
		{0, "", `{"name":"x","allowed_ips":["10.0.0.1/8"]}`},
		{0, "", `{"name":"\u202e"}`},
		{0, "", `[]`},
		{0, "", `null`},
		{0, "", `{"name":"a","expires_in_seconds":-1}`},
		{0, "", `{"name":"a","expires_in_seconds":1e99}`},
		{0, "", `{"name":"a"}{"name":"b"}`},
		{0, "", `{"a":` + strings.Repeat("[", 1000)},
		{1, "1", `{"name":"renamed"}`},
		{1, "1", `{"allowed_ips":null}`},
		{1, "1", `{"id":5}`},
		{1, "2", `{}`},
		{2, "1", `{"grace_period_seconds":60}`},
		{2, "1", `{"grace_period_seconds":"60"}`},
		{3, "1", ""},
		{3, "-1", ""},
		{3, "0", ""},
		{3, "99999999999999999999", ""},
		{3, "1e3", ""},
		{3, "0x10", ""},
		{3, "%2F", ""},
		{3, " 1", ""},
		{3, "current", ""},
		{4, "2", ""},
		{4, "abc", ""},
		{5, "", "limit=5&status=active"},
		{5, "", "limit=0&cursor=abc"},
		{5, "", "limit=101"},
		{5, "", "limit=-1&limit=2"},
		{5, "", "status=bogus&x=1"},
		{5, "", "cursor=" + strings.Repeat("A", 300)},
	}
	for _, s := range seeds {
		f.Add(s.op, s.id, s.body)
	}
	h, _, caller, st := hotServerStore(f, nil, store.Options{})
	f.Fuzz(func(t *testing.T, opIndex uint8, id, body string) {
		op := fuzzOps[int(opIndex)%len(fuzzOps)]
		// The caller's own token is never changed (revoked, rotated, or
		// fenced off by allowed_ips): that would leave every later input
		// unauthenticated. The id is compared as the gateway parses it, so
		// "01" and "+1" are the caller's too.
		if n, err := strconv.ParseInt(id, 10, 64); err == nil && n == caller.ID && op.method != http.MethodGet {
			id = "2"
		}
		target := strings.Replace(op.path, "{id}", url.PathEscape(id), 1)
		if op.query {
			target += "?" + body
		}
		var reqBody *strings.Reader
		if op.body {
			reqBody = strings.NewReader(body)
		} else {
			reqBody = strings.NewReader("")
		}
		r := httptest.NewRequest(op.method, "http://tokend.test/", reqBody)
		if u, err := url.ParseRequestURI(target); err == nil {
			r.URL = u
		} else {
			r.URL.Path = target // a path no client library would send; the server must still cope
		}
		r.RemoteAddr = "127.0.0.1:40000"
		r.Header.Set("Authorization", "Bearer "+caller.Secret)
		if op.body {
			r.Header.Set("Content-Type", "application/json")
		}
		before := storedTokens(t, st)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		code, out := w.Code, w.Body.Bytes()

		if code >= 500 {
			t.Fatalf("%s %s %q: %d %s", op.method, target, body, code, out)
		}
		// Every input carries the caller's valid secret: a 401 means an
		// earlier input locked the caller out, and the rest of the run
		// would only exercise authentication failures.
		if code == http.StatusUnauthorized {
			t.Fatalf("%s %s %q: 401 with the caller's own secret: %s", op.method, target, body, out)
		}
		if code < 400 {
			if code != op.ok {
				t.Fatalf("%s %s %q: success %d, want %d", op.method, target, body, code, op.ok)
			}
			if code != http.StatusNoContent && !json.Valid(out) {
				t.Fatalf("%s %s: a %d whose body is not JSON: %q", op.method, target, code, out)
			}
			if bytes.Contains(out, []byte(secret.Prefix)) && op.method == http.MethodGet {
				t.Fatalf("a read returned a secret: %s", out)
			}
			return
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("%s %s %q: %d with Content-Type %q", op.method, target, body, code, ct)
		}
		var p struct {
			Status int    `json:"status"`
			Detail string `json:"detail"`
		}
		if err := json.Unmarshal(out, &p); err != nil || p.Status != code {
			t.Fatalf("%s %s %q: problem %s (%v), want status %d", op.method, target, body, out, err, code)
		}
		for _, leak := range []string{"strconv", "proto:", "runtime error", "goroutine", "invalid character"} {
			if strings.Contains(p.Detail, leak) {
				t.Fatalf("%s %s %q: detail leaks %q: %s", op.method, target, body, leak, p.Detail)
			}
		}
		if after := storedTokens(t, st); after != before {
			t.Fatalf("%s %s %q was refused with %d but changed the store:\nbefore %s\nafter  %s", op.method, target, body, code, before, after)
		}
	})
}

// storedTokens renders every token of the fuzzing user as stored.
func storedTokens(t *testing.T, st *store.Store) string {
	t.Helper()
	ts, err := st.List("alice")
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
