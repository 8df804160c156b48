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

// Error joins the details after ErrInvalid's text.
func (e *ValidationError) Error() string {
	return ErrInvalid.Error() + ": " + e.detail()
}

func (e *ValidationError) detail() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Detail
	}
	return strings.Join(parts, "; ")
}

// Detail returns the text of an ErrInvalid error for the caller: the rules
// the input broke, without ErrInvalid's "invalid input: " prefix or any
// wrapping before it.
func Detail(err error) string {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.detail()
	}
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, ErrInvalid.Error()+": "); ok {
		return rest
	}
	return msg
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Violations collects field violations.
type Violations struct {
	list []FieldViolation
}

// Add records err, if it is not nil, against field, with Detail(err) as
// the detail.
func (v *Violations) Add(field string, err error) {
	if err == nil {
		return
	}
	var ve *ValidationError
	if errors.As(err, &ve) {
		v.list = append(v.list, ve.Violations...)
		return
	}
	v.list = append(v.list, FieldViolation{Field: field, Detail: Detail(err)})
}

// Err returns a *ValidationError with the violations, or nil if none.
func (v *Violations) Err() error {
	if len(v.list) == 0 {
		return nil
	}
	return &ValidationError{Violations: v.list}
}
