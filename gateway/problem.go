package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/rpc"
)

// ProblemContentType is the media type of every error response (RFC 9457).
const ProblemContentType = "application/problem+json"

// Problem is an RFC 9457 problem details object, with the trace id as an
// extension member. Type is always "about:blank", so Title is the HTTP
// reason phrase of Status.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
	TraceID  string `json:"trace_id"`
	// Errors lists each invalid field of a refused request (an extension
	// member); it is present only on validation failures.
	Errors []FieldError `json:"errors,omitempty"`
}

// FieldError says why one field of a request was refused.
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// Details for errors whose own message is not for clients.
const (
	detailInternal       = rpc.MessageInternal
	detailNotFound       = "No such resource."
	detailBadRequest     = "The request is malformed."
	detailTokenIDInvalid = "The token id must be a positive integer no greater than 9223372036854775807."
)

// writeProblem writes a problem details response for r.
func writeProblem(w http.ResponseWriter, r *http.Request, code int, detail string, fields ...FieldError) {
	p := Problem{
		Errors:   fields,
		Type:     "about:blank",
		Title:    http.StatusText(code),
		Status:   code,
		Detail:   detail,
		Instance: r.URL.EscapedPath(),
	}
	if ri := request.FromContext(r.Context()); ri != nil {
		p.TraceID = ri.TraceID
	}
	if p.Title == "" {
		p.Title = "Error"
	}
	body, err := json.Marshal(p)
	if err != nil { // cannot happen: every field is a string or an int
		body = []byte(`{"type":"about:blank","title":"Internal Server Error","status":500}`)
		code = http.StatusInternalServerError
	}
	h := w.Header()
	h.Set("Content-Type", ProblemContentType)
	h.Del("Content-Length")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// httpStatus maps a gRPC code to an HTTP status. It is grpc-gateway's table
// with one deviation, commented below.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.Unknown:
		// An unmapped error is a server fault, not the client's.
		return http.StatusInternalServerError
	case codes.FailedPrecondition:
		// tokend uses it for valid requests that conflict with the state
		// (quota reached, idempotency key reused, rotating a revoked
		// token): 409 says "retrying as is won't help", 400 would blame
		// the request's syntax.
		return http.StatusConflict
	}
	return runtime.HTTPStatusFromCode(c)
}

// handleError is the gateway's one error handler: every error from the
// service, or from the gateway's own request parsing, becomes problem+json
// here. Messages of errors that tokend produced (marked by their ErrorInfo
// domain) are written for clients; any other message may hold library
// internals (strconv errors, say) and is replaced by a plain one.
func handleError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	st := status.Convert(err)
	code := httpStatus(st.Code())
	var custom *runtime.HTTPStatusError
	if errors.As(err, &custom) {
		code = custom.HTTPStatus
		st = status.Convert(custom.Err)
	}
	reason := rpc.Reason(st)
	detail := st.Message()
	if reason == "" {
		detail = libraryDetail(st)
	}
	if retry := retryAfter(st); retry > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retry))
	}
	if code == http.StatusUnauthorized {
		// RFC 6750 §3: error="invalid_token" only when a token was presented.
		challenge := `Bearer realm="tokend"`
		if reason == rpc.ReasonInvalidToken {
			challenge += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
	}
	writeProblem(w, r, code, detail, fieldErrors(st)...)
}

// retryAfter is the whole seconds (rounded up) of a status's RetryInfo, or
// 0 without one.
func retryAfter(st *status.Status) int {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			ns := ri.GetRetryDelay().AsDuration().Nanoseconds()
			return int((ns + 1e9 - 1) / 1e9)
		}
	}
	return 0
}

// fieldErrors lists the field violations of a tokend status.
func fieldErrors(st *status.Status) []FieldError {
	var out []FieldError
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, FieldError{Field: v.GetField(), Detail: v.GetDescription()})
			}
		}
	}
	return out
}

var paramRE = regexp.MustCompile(`parameter: ([a-z_.]+)`)

// libraryDetail describes an error that did not come from tokend's service
// without repeating its message.
func libraryDetail(st *status.Status) string {
	switch st.Code() {
	case codes.InvalidArgument:
		if m := paramRE.FindStringSubmatch(st.Message()); m != nil {
			if m[1] == "token_id" {
				return detailTokenIDInvalid
			}
			return fmt.Sprintf("The parameter %q is malformed or out of range.", m[1])
		}
		return detailBadRequest
	case codes.NotFound:
		return detailNotFound
	case codes.Canceled:
		return "The request was canceled."
	case codes.DeadlineExceeded:
		return "The request took too long."
	}
	if c := httpStatus(st.Code()); c < 500 {
		return strings.TrimSuffix(http.StatusText(c), ".") + "."
	}
	return detailInternal
}

// handleRoutingError answers requests that match no route: 404 for an
// unknown path, and 405 with Allow for a known path with another method
// (grpc-gateway's default would say 501).
func (rt *router) handleRoutingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	switch code {
	case http.StatusMethodNotAllowed:
		allow := rt.allowedMethods(r)
		if len(allow) == 0 {
			writeProblem(w, r, http.StatusNotFound, detailNotFound)
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeProblem(w, r, code, fmt.Sprintf("Method %s is not allowed here; use %s.", r.Method, strings.Join(allow, " or ")))
	case http.StatusNotFound:
		writeProblem(w, r, code, detailNotFound)
	default:
		writeProblem(w, r, code, detailBadRequest)
	}
}
