package token

import (
	"errors"
	"strings"
)

// FieldViolation says why one field of a request is invalid.
type FieldViolation struct {
	// Field is the field's name as the API spells it, such as "allowed_ips".
	Field string
	// Detail is a sentence for the caller.
	Detail string
}

// ValidationError lists every invalid field of a request, so a client can
// fix them all at once. It matches ErrInvalid with errors.Is.
type ValidationError struct {
	Violations []FieldViolation
}

// Error joins the details.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Detail
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Violations collects field violations.
type Violations struct {
	list []FieldViolation
}

// Add records err, if it is not nil, against field. The detail is err's
// text without the "invalid input: " prefix of ErrInvalid.
func (v *Violations) Add(field string, err error) {
	if err == nil {
		return
	}
	var ve *ValidationError
	if errors.As(err, &ve) {
		v.list = append(v.list, ve.Violations...)
		return
	}
	v.list = append(v.list, FieldViolation{Field: field, Detail: strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": ")})
}

// Err returns a *ValidationError with the violations, or nil if none.
func (v *Violations) Err() error {
	if len(v.list) == 0 {
		return nil
	}
	return &ValidationError{Violations: v.list}
}
