package rpc

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error tokend
// itself produces. An error without it came from a library (such as the
// gateway's parameter parsing), and its message is not shown to clients.
const ErrorDomain = "tokend"

// Reasons carried in google.rpc.ErrorInfo, stable for clients to match on.
const (
	ReasonMissingCredentials = "MISSING_CREDENTIALS"
	ReasonInvalidToken       = "INVALID_TOKEN"
	ReasonNotFound           = "NOT_FOUND"
	ReasonInvalidArgument    = "INVALID_ARGUMENT"
	ReasonConflict           = "CONFLICT"
	ReasonThrottled          = "TOO_MANY_FAILURES"
	// ReasonPreviousSecret: a change asked for with a secret a rotation
	// has replaced; it may still read until its grace period ends.
	ReasonPreviousSecret = "PREVIOUS_SECRET"
	ReasonInternal       = "INTERNAL"
	// ReasonStorageUnavailable: the database takes no writes now (disk
	// full, I/O errors); reads still work, and the write may be retried.
	ReasonStorageUnavailable = "STORAGE_UNAVAILABLE"
)

// MessageInternal is what a client is told of an internal error, over
// either transport: the cause is logged under the trace id, never sent.
const MessageInternal = "An internal error occurred. Quote the trace_id when reporting it."

// Messages shown to clients for errors whose own text is not for them.
const (
	msgMissingCredentials = "Missing bearer token"
	msgInvalidToken       = "Authentication failed"
	msgTokenNotFound      = "Access token not found"
	msgUserNotFound       = "Unknown user"
	msgStorageUnavailable = "The token store cannot take writes right now; retry later"
)

// storageRetryDelay is the RetryInfo (REST: Retry-After) of a write refused
// because the database takes no writes: a few seconds, about how often the
// server checks whether writes work again.
const storageRetryDelay = 5 * time.Second

// mapError is the one place where handler errors become gRPC statuses
// (guardInterceptor calls it). Domain errors are matched with errors.Is, so
// wrapping keeps them recognisable. Anything unrecognised is Internal with
// a generic message, and its cause is logged once, with the trace id, and
// never sent; so is the cause of a write the database could not take
// (Unavailable).
func mapError(ctx context.Context, log *slog.Logger, fullMethod string, err error) error {
	st := toStatus(err)
	var msg string
	switch {
	case errors.Is(err, store.ErrUnavailable):
		msg = "storage unavailable"
	case st.Code() == codes.Internal:
		msg = "internal error"
	}
	if msg != "" {
		attrs := []any{slog.String("method", fullMethod), slog.String("error", err.Error())}
		if ri := request.FromContext(ctx); ri != nil {
			attrs = append(attrs, slog.String("trace_id", ri.TraceID))
		}
		log.ErrorContext(ctx, msg, attrs...)
	}
	return st.Err()
}

func toStatus(err error) *status.Status {
	switch {
	case errors.Is(err, auth.ErrNoCredentials):
		return newStatus(codes.Unauthenticated, ReasonMissingCredentials, msgMissingCredentials)
	case errors.Is(err, auth.ErrInvalidToken):
		return newStatus(codes.Unauthenticated, ReasonInvalidToken, msgInvalidToken)
	case errors.Is(err, auth.ErrThrottled):
		var details []protoadapt.MessageV1
		var te *auth.ThrottledError
		if errors.As(err, &te) {
			details = append(details, retryInfo(te.RetryAfter))
		}
		return newStatus(codes.ResourceExhausted, ReasonThrottled, "Too many failed authentications from this address; retry later", details...)
	case errors.Is(err, auth.ErrPreviousSecret):
		return newStatus(codes.PermissionDenied, ReasonPreviousSecret,
			"This secret has been replaced by a rotation: until its grace period ends it can read, but not change tokens. Use the new secret.")
	case errors.Is(err, token.ErrNotFound):
		return newStatus(codes.NotFound, ReasonNotFound, msgTokenNotFound)
	case errors.Is(err, token.ErrUserNotFound):
		return newStatus(codes.NotFound, ReasonNotFound, msgUserNotFound)
	case errors.Is(err, token.ErrInvalid):
		// Validation errors are written for the caller: their text says
		// which rule the input broke, and nothing internal.
		var details []protoadapt.MessageV1
		var ve *token.ValidationError
		if errors.As(err, &ve) {
			br := &errdetails.BadRequest{}
			for _, v := range ve.Violations {
				br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Detail})
			}
			details = append(details, br)
		}
		return newStatus(codes.InvalidArgument, ReasonInvalidArgument, token.Detail(err), details...)
	case errors.Is(err, token.ErrConflict):
		return newStatus(codes.FailedPrecondition, ReasonConflict, conflictMessage(err))
	case errors.Is(err, store.ErrUnavailable):
		// The cause (an errno, a file path) is for the log; the client
		// learns only that retrying later may work.
		return newStatus(codes.Unavailable, ReasonStorageUnavailable, msgStorageUnavailable, retryInfo(storageRetryDelay))
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded")
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		// Already a status, from grpc-go itself or a library: keep its code.
		return st
	}
	return newStatus(codes.Internal, ReasonInternal, MessageInternal)
}

// newStatus builds a status carrying the tokend ErrorInfo for reason, then
// details.
func newStatus(c codes.Code, reason, msg string, details ...protoadapt.MessageV1) *status.Status {
	st := status.New(c, msg)
	all := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}}, details...)
	if withDetails, err := st.WithDetails(all...); err == nil {
		return withDetails
	}
	return st
}

// retryInfo says when the client may try again.
func retryInfo(after time.Duration) *errdetails.RetryInfo {
	return &errdetails.RetryInfo{RetryDelay: durationpb.New(after)}
}

// conflictMessage strips the "conflict: " prefix of token.ErrConflict and
// any wrapping before it.
func conflictMessage(err error) string {
	if _, rest, ok := strings.Cut(err.Error(), token.ErrConflict.Error()+": "); ok {
		return rest
	}
	return "The request conflicts with the current state"
}

// Reason returns the ErrorInfo reason of a tokend status, or "" for a
// status tokend did not produce.
func Reason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}
