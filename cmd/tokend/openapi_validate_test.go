package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	liberrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/helpers"
	"github.com/pb33f/libopenapi-validator/paths"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// The published OpenAPI document (gateway/openapi.json) is the REST
// contract. Every exchange the end-to-end tests make goes through
// validateExchange, so each response the server sends, and each request it
// accepts, is checked against the document.

// apiContract is the validator for the document and the schema of a problem
// body, for responses to requests the document does not describe.
type apiContract struct {
	v       validator.Validator
	doc     *v3.Document
	problem *base.Schema
	// hasHead: the document defines some HEAD operation. The validator
	// takes HEAD on a path without one as that path's GET; the contract
	// does not, so HEAD is then a method the document does not have.
	hasHead bool
}

// openAPIContract builds the validator once per test binary.
var openAPIContract = sync.OnceValues(func() (*apiContract, error) {
	b, err := os.ReadFile("../../gateway/openapi.json")
	if err != nil {
		return nil, err
	}
	doc, err := libopenapi.NewDocument(b)
	if err != nil {
		return nil, fmt.Errorf("parse the OpenAPI document: %w", err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("build the OpenAPI model: %w", err)
	}
	problem := model.Model.Components.Schemas.GetOrZero("Problem")
	if problem == nil {
		return nil, fmt.Errorf("the OpenAPI document has no Problem schema")
	}
	hasHead := false
	for _, item := range model.Model.Paths.PathItems.FromOldest() {
		hasHead = hasHead || item.Head != nil
	}
	// Format assertions make date-time, uri and friends count.
	v := validator.NewValidatorFromV3Model(&model.Model, config.WithFormatAssertions())
	return &apiContract{v: v, doc: &model.Model, problem: problem.Schema(), hasHead: hasHead}, nil
})

// Paths that the server answers outside the API's operations: the
// document itself and its HTML rendering.
var outsideContract = []string{"/openapi.json", "/docs", "/healthz", "/readyz"}

var contractTraceID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// validateExchange checks one REST exchange against the OpenAPI document
// and reports every disagreement with t.Errorf. reqBody and respBody are the
// bodies as sent and received (req's and resp's own bodies are spent).
//
//   - The response is always validated when the document has the request's
//     path and method: status, headers and body.
//   - The request is validated only when the server accepted it (status
//     below 400): a request the server takes must conform. Tests send
//     invalid requests on purpose to see them refused.
//   - A path or method the document does not have may only be a deliberate
//     negative case, so the answer must be 404 or 405 (with Allow), and a
//     well-formed problem.
func validateExchange(t *testing.T, req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	t.Helper()
	if slices.Contains(outsideContract, req.URL.Path) {
		return
	}
	c, err := openAPIContract()
	if err != nil {
		t.Fatalf("OpenAPI contract: %v", err)
	}
	where := fmt.Sprintf("%s %s → %d", req.Method, req.URL.RequestURI(), resp.StatusCode)

	vreq := req.Clone(context.Background())
	vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
	vreq.ContentLength = int64(len(reqBody))
	vreq.GetBody = nil
	vresp := *resp
	vresp.Request = vreq
	vresp.Body = io.NopCloser(bytes.NewReader(respBody))

	if req.Method == http.MethodHead && !c.hasHead {
		checkHead(t, c, where, vreq, resp, respBody)
		return
	}
	_, respErrs := c.v.ValidateHttpResponse(vreq, &vresp)
	if notInDocument(respErrs) {
		checkUndocumented(t, c, where, resp, respBody)
		return
	}
	reportValidation(t, where, "response", respErrs)

	if resp.StatusCode < 400 {
		vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
		_, reqErrs := c.v.ValidateHttpRequest(vreq)
		reportValidation(t, where, "accepted request", reqErrs)
	}

	// What the validator leaves alone: a response without content (204)
	// must have no body.
	if resp.StatusCode == http.StatusNoContent && len(respBody) > 0 {
		t.Errorf("%s: a 204 response has a %d-byte body: %q", where, len(respBody), respBody)
	}
}

// notInDocument reports whether the validator's errors say only that the
// request's path, or its method on that path, is not in the document.
func notInDocument(errs []*liberrors.ValidationError) bool {
	if len(errs) == 0 {
		return false
	}
	for _, e := range errs {
		missing := e.ValidationSubType == helpers.ValidationMissing || e.ValidationSubType == helpers.ValidationMissingOperation
		if e.ValidationType != helpers.PathValidation || !missing {
			return false
		}
	}
	return true
}

// checkHead checks the answer to a HEAD request, which the server serves as
// GET without the body (RFC 9110 9.3.2): where the document has the path's
// GET, the status must be one that GET documents, with no body and the
// headers every answer carries; elsewhere HEAD is a method the document
// does not have.
func checkHead(t *testing.T, c *apiContract, where string, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	get := req.Clone(context.Background())
	get.Method = http.MethodGet
	item, errs, _ := paths.FindPath(get, c.doc, nil)
	if item == nil || item.Get == nil || len(errs) > 0 {
		checkUndocumented(t, c, where, resp, body)
		return
	}
	if len(body) > 0 {
		t.Errorf("%s: a HEAD answer has a %d-byte body", where, len(body))
	}
	if item.Get.Responses.FindResponseByCode(resp.StatusCode) == nil && item.Get.Responses.Default == nil {
		t.Errorf("%s: the document's GET of this path has no %d answer", where, resp.StatusCode)
	}
	wantType := "application/json"
	if resp.StatusCode >= 400 {
		wantType = "application/problem+json"
	}
	if ct := resp.Header.Get("Content-Type"); ct != wantType {
		t.Errorf("%s: Content-Type = %q, want %s, as the GET's", where, ct, wantType)
	}
	if got := resp.Header.Get("X-Trace-Id"); !contractTraceID.MatchString(got) {
		t.Errorf("%s: X-Trace-Id = %q, want 32 lowercase hex digits", where, got)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("%s: Cache-Control = %q, want no-store", where, got)
	}
}

// checkUndocumented checks the answer to a request for a path or method the
// document does not have.
func checkUndocumented(t *testing.T, c *apiContract, where string, resp *http.Response, body []byte) {
	t.Helper()
	switch resp.StatusCode {
	case http.StatusNotFound:
	case http.StatusMethodNotAllowed:
		if resp.Header.Get("Allow") == "" {
			t.Errorf("%s: 405 without an Allow header", where)
		}
	default:
		t.Errorf("%s: the OpenAPI document has no such path or method, so only 404 or 405 may answer it", where)
		return
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type = %q, want application/problem+json", where, ct)
	}
	if got := resp.Header.Get("X-Trace-Id"); !contractTraceID.MatchString(got) {
		t.Errorf("%s: X-Trace-Id = %q, want 32 lowercase hex digits", where, got)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("%s: Cache-Control = %q, want no-store", where, got)
	}
	if resp.Request != nil && resp.Request.Method == http.MethodHead {
		return // no body to check
	}
	if !json.Valid(body) {
		t.Errorf("%s: the problem body is not JSON: %q", where, body)
		return
	}
	ok, errs := schema_validation.NewSchemaValidator().ValidateSchemaBytes(c.problem, body)
	if !ok {
		reportValidation(t, where, "problem body", errs)
	}
}

func reportValidation(t *testing.T, where, what string, errs []*liberrors.ValidationError) {
	t.Helper()
	for _, e := range errs {
		var msg strings.Builder
		fmt.Fprintf(&msg, "%s: %s does not match the OpenAPI document: %s", where, what, e.Message)
		if e.Reason != "" && e.Reason != e.Message {
			fmt.Fprintf(&msg, " (%s)", e.Reason)
		}
		for _, s := range e.SchemaValidationErrors {
			fmt.Fprintf(&msg, "\n\t%s", s.Reason)
			if s.FieldPath != "" {
				fmt.Fprintf(&msg, " at %s", s.FieldPath)
			}
			if s.KeywordLocation != "" {
				fmt.Fprintf(&msg, " [schema %s]", s.KeywordLocation)
			}
		}
		t.Error(msg.String())
	}
}
