package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkBody vets the JSON body of every route that takes one before
// grpc-gateway decodes it: at most maxBytes (413), Content-Type
// application/json (415), one JSON object whose keys are fields of the
// route's message, each of the right JSON type (400, listing every bad
// field). protojson alone would accept camelCase aliases and numbers in
// strings, and its errors quote library internals; this keeps the API to
// exactly what the OpenAPI document says. The checked body is handed on
// unchanged.
//
// It is also where routing is decided: a method that a literal path does
// not take (PATCH /api/v1/me/tokens/current) is 405, where grpc-gateway
// would hand "current" to a templated route as a malformed id, and a path
// the route table does not match is 404; grpc-gateway sees only requests
// the table routed. HEAD is served as GET wherever GET is.
func (router *router) checkBody(maxBytes int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := routingPath(r)
		method := r.Method
		if method == http.MethodHead {
			// HEAD is GET without the body (RFC 9110 9.3.2): routed and
			// served as GET; the server sends the headers and drops the
			// body for a HEAD request.
			method = http.MethodGet
		}
		res := router.resolve(method, path)
		switch {
		case res.otherMethods:
			router.handleRoutingError(r.Context(), nil, nil, w, r, http.StatusMethodNotAllowed)
			return
		case res.route == nil:
			// Refused here, not handed on: grpc-gateway would match routes
			// this table does not (a {token_id} segment left empty, as in
			// PATCH /api/v1/me/tokens/), and its generated handlers read the
			// whole body before anything checks it.
			router.handleRoutingError(r.Context(), nil, nil, w, r, http.StatusNotFound)
			return
		}
		rt := res.route
		if !rt.canonicalID(path) {
			writeProblem(w, r, http.StatusBadRequest, detailTokenIDInvalid)
			return
		}
		if method != r.Method || r.URL.RawPath != "" && path != r.URL.RawPath {
			// grpc-gateway routes on the method and RawPath: give it the
			// method and path the table routed on.
			r = r.WithContext(r.Context())
			u := *r.URL
			u.RawPath = path
			r.URL = &u
			r.Method = method
		}
		if rt.query != nil {
			if fields := vetQuery(r, rt.query); len(fields) > 0 {
				writeProblem(w, r, http.StatusBadRequest, "The query string has invalid parameters.", fields...)
				return
			}
		}
		if rt.body == nil {
			next.ServeHTTP(w, withoutContentType(r))
			return
		}
		if r.ContentLength > maxBytes {
			refuseTooLarge(w, r, maxBytes)
			return
		}
		data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				refuseTooLarge(w, r, maxBytes)
				return
			}
			writeProblem(w, r, http.StatusBadRequest, "The request body could not be read.")
			return
		}
		if len(bytes.TrimSpace(data)) == 0 {
			next.ServeHTTP(w, withoutContentType(withCheckedBody(r, data)))
			return
		}
		if ct := r.Header.Values("Content-Type"); len(ct) != 1 || !isJSON(ct[0]) {
			w.Header().Set("Accept", "application/json")
			writeProblem(w, r, http.StatusUnsupportedMediaType, "The request body must be JSON, sent with one Content-Type: application/json.")
			return
		}
		if ce := r.Header.Values("Content-Encoding"); len(ce) > 0 && (len(ce) > 1 || !strings.EqualFold(strings.TrimSpace(ce[0]), "identity")) {
			// A compressed body would be read as if it were not (RFC 9110
			// 15.5.16: say which codings are accepted).
			w.Header().Set("Accept-Encoding", "identity")
			writeProblem(w, r, http.StatusUnsupportedMediaType, "The request body must not be encoded (no Content-Encoding).")
			return
		}
		if detail, fields := vetJSON(data, rt.route); detail != "" {
			writeProblem(w, r, http.StatusBadRequest, detail, fields...)
			return
		}
		next.ServeHTTP(w, withCheckedBody(r, data))
	})
}

// withCheckedBody returns a shallow copy of r (handlers must not change
// the request they are given, and its URL is shared with the caller's)
// whose body is data, already read and checked, and whose query string is
// empty: grpc-gateway would also fill the request from the query string,
// letting ?update_mask=allowed_ips override the mask derived from the
// body, and a route with a body takes its input from the body alone.
func withCheckedBody(r *http.Request, data []byte) *http.Request {
	r = r.WithContext(r.Context())
	u := *r.URL
	u.RawQuery = ""
	r.URL = &u
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.ContentLength = int64(len(data))
	return r
}

// withoutContentType returns r, or if it has a Content-Type, a shallow
// copy without it: for a request with no body, where the header means
// nothing, and grpc-gateway, which parses it on every request to choose a
// decoder, would write one it cannot parse to the process's stderr as is,
// outside tokend's structured log.
func withoutContentType(r *http.Request) *http.Request {
	if ct, ok := r.Header["Content-Type"]; !ok || len(ct) == 1 && ct[0] == "application/json" {
		return r // nothing to drop, or what many clients send on every request, harmless
	}
	r = r.WithContext(r.Context())
	r.Header = r.Header.Clone()
	delete(r.Header, "Content-Type")
	return r
}

// vetQuery checks the query parameters that name fields of msg: integers
// must be integers in range, and a field that is not a list is given once.
// Other parameters are ignored, as grpc-gateway ignores them.
func vetQuery(r *http.Request, msg proto.Message) []FieldError {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return []FieldError{{Field: "query", Detail: "is not a valid query string"}}
	}
	fields := msg.ProtoReflect().Descriptor().Fields()
	var bad []FieldError
	for _, key := range slices.Sorted(maps.Keys(q)) {
		fd := fields.ByName(protoreflect.Name(key))
		if fd == nil {
			continue
		}
		if len(q[key]) > 1 && !fd.IsList() {
			bad = append(bad, FieldError{Field: key, Detail: "must be given once"})
			continue
		}
		switch fd.Kind() {
		case protoreflect.Int32Kind, protoreflect.Int64Kind:
			bits := 64
			if fd.Kind() == protoreflect.Int32Kind {
				bits = 32
			}
			if _, err := strconv.ParseInt(q[key][0], 10, bits); err != nil {
				bad = append(bad, FieldError{Field: key, Detail: "must be an integer"})
			}
		}
	}
	return bad
}

func tooLarge(max int64) string {
	return fmt.Sprintf("The request body must be at most %d bytes.", max)
}

func isJSON(contentType string) bool {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" {
		return false
	}
	// JSON is UTF-8 (RFC 8259); a body declared in another charset would
	// be read as UTF-8 all the same.
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}

// vetJSON checks data against rt's body message. It returns a detail and
// field errors for a bad body, or "" for a good one.
func vetJSON(data []byte, rt route) (string, []FieldError) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return "The request body is not valid JSON.", nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return "The request body must be a JSON object.", nil
	}
	fields := rt.body.ProtoReflect().Descriptor().Fields()
	seen := make(map[string]bool)
	var bad []FieldError
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return "The request body is not valid JSON.", nil
		}
		key, _ := kt.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return "The request body is not valid JSON.", nil
		}
		if seen[key] {
			bad = append(bad, FieldError{Field: key, Detail: "appears more than once"})
			continue
		}
		seen[key] = true
		fd := fields.ByName(protoreflect.Name(key))
		if fd == nil || isPathParam(rt.template, key) {
			bad = append(bad, FieldError{Field: key, Detail: "is not a field of this request"})
			continue
		}
		if problem := vetValue(fd, raw); problem != "" {
			bad = append(bad, FieldError{Field: key, Detail: problem})
		}
	}
	if _, err := dec.Token(); err != nil {
		return "The request body is not valid JSON.", nil
	}
	if _, err := dec.Token(); err != io.EOF {
		return "The request body must hold exactly one JSON object.", nil
	}
	if len(bad) > 0 {
		return "The request body has invalid fields.", bad
	}
	return "", nil
}

func isPathParam(template, name string) bool {
	return strings.Contains(template, "{"+name+"}")
}

// vetValue checks one field's JSON value. null means "none" for a list
// (no IP restriction) or a timestamp (no expiry), and is refused elsewhere.
func vetValue(fd protoreflect.FieldDescriptor, raw json.RawMessage) string {
	if string(raw) == "null" {
		if fd.IsList() || fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Timestamp" {
			return ""
		}
		return "must not be null"
	}
	if fd.IsList() {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return "must be an array or null"
		}
		for _, it := range items {
			if p := vetScalar(fd, it); p != "" {
				return "each element " + p
			}
		}
		return ""
	}
	if p := vetScalar(fd, raw); p != "" {
		return p
	}
	return ""
}

// vetScalar checks one value: a field's, or a list's element. It refuses
// what protojson would, with a field error where protojson gives only a
// generic message.
func vetScalar(fd protoreflect.FieldDescriptor, raw json.RawMessage) string {
	if string(raw) == "null" {
		return "must not be null"
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "must be a string"
		}
		if !utf8.Valid(raw) || !pairedSurrogates(raw) {
			// encoding/json would read either as U+FFFD; protojson refuses
			// both.
			return "must be valid Unicode (UTF-8, with no \\u escape of half a surrogate pair)"
		}
	case protoreflect.Int64Kind, protoreflect.Int32Kind:
		n, ok := integer(raw)
		if !ok {
			return "must be an integer"
		}
		if fd.Kind() == protoreflect.Int32Kind && (n < math.MinInt32 || n > math.MaxInt32) {
			return "is out of range"
		}
	case protoreflect.MessageKind:
		if fd.Message().FullName() == "google.protobuf.Timestamp" {
			var s string
			if json.Unmarshal(raw, &s) != nil {
				return "must be an RFC 3339 date-time string"
			}
			t, err := time.Parse(time.RFC3339, s)
			if err != nil || fractionDigits(s) > 9 {
				return "must be an RFC 3339 date-time such as 2030-01-02T15:04:05Z"
			}
			// google.protobuf.Timestamp's range.
			if y := t.UTC().Year(); y < 1 || y > 9999 {
				return "must be between years 0001 and 9999"
			}
		}
	}
	return ""
}

// fractionDigits counts the digits after the seconds' decimal point of an
// RFC 3339 date-time (time.Parse takes any number of them; a Timestamp
// holds nanoseconds).
func fractionDigits(s string) int {
	_, frac, ok := strings.Cut(s, ".")
	if !ok {
		return 0
	}
	n := 0
	for n < len(frac) && frac[n] >= '0' && frac[n] <= '9' {
		n++
	}
	return n
}

// pairedSurrogates reports whether every \u escape of a UTF-16 surrogate
// in the JSON string raw is half of a pair: a high one followed by a low.
func pairedSurrogates(raw json.RawMessage) bool {
	surrogate := func(i int) (rune, bool) { // the \u escape at raw[i:], if any
		if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
			return 0, false
		}
		v, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 16)
		return rune(v), err == nil
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		r, ok := surrogate(i)
		switch {
		case !ok:
			i++ // another escape: skip the escaped character
		case r >= 0xDC00 && r <= 0xDFFF:
			return false // a low half with no high half before it
		case r >= 0xD800 && r <= 0xDBFF:
			if lo, ok := surrogate(i + 6); !ok || lo < 0xDC00 || lo > 0xDFFF {
				return false
			}
			i += 11
		default:
			i += 5
		}
	}
	return true
}

// integer parses a JSON number without fraction or exponent that fits in an
// int64.
func integer(raw json.RawMessage) (int64, bool) {
	var num json.Number
	// json.Number also takes a quoted number: refuse strings first.
	if len(raw) == 0 || raw[0] == '"' || json.Unmarshal(raw, &num) != nil || strings.ContainsAny(string(num), ".eE") {
		return 0, false
	}
	n, err := num.Int64()
	return n, err == nil
}

// refuseTooLarge answers 413 and closes the connection: the rest of the
// body is not worth reading. (net/http would close it by itself had
// MaxBytesReader been handed its own ResponseWriter, which the edge's
// wrappers hide.)
func refuseTooLarge(w http.ResponseWriter, r *http.Request, maxBytes int64) {
	w.Header().Set("Connection", "close")
	writeProblem(w, r, http.StatusRequestEntityTooLarge, tooLarge(maxBytes))
}
