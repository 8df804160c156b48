package gateway

import (
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The OpenAPI document is the REST contract; these tests check that it is a
// valid OpenAPI 3.1 document, that it describes exactly the routes of the
// HTTP rule file, that its objects are closed, and that both handlers serve
// it.

// openAPIOperationIDs are the operations the contract names, by RPC.
var openAPIOperationIDs = map[string]string{
	"GetToken":        "getToken",
	"GetCurrentToken": "getCurrentToken",
	"CreateToken":     "createToken",
	"ListTokens":      "listTokens",
	"UpdateToken":     "updateToken",
	"RevokeToken":     "revokeToken",
	"RotateToken":     "rotateToken",
}

// openAPIRaw is the document as generic JSON, for checks that the typed
// model makes awkward.
func openAPIRaw(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal([]byte(openAPIDocument), &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	return doc
}

func TestOpenAPIDocumentIsValidOpenAPI31(t *testing.T) {
	onDisk, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if string(onDisk) != openAPIDocument {
		t.Fatal("the embedded document differs from openapi.json")
	}
	doc, err := libopenapi.NewDocument(onDisk)
	if err != nil {
		t.Fatalf("libopenapi cannot read the document: %v", err)
	}
	info := doc.GetSpecInfo()
	if info.Version != "3.1.0" {
		t.Errorf("openapi version = %q, want 3.1.0", info.Version)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		t.Fatalf("build the OpenAPI 3 model: %v", err)
	}
	if errs := model.Index.GetReferenceIndexErrors(); len(errs) > 0 {
		t.Errorf("reference errors: %v", errs)
	}
	if c := model.Index.GetCircularReferences(); len(c) > 0 {
		t.Errorf("%d circular references", len(c))
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("new validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("document validation: %s: %s", e.Message, e.Reason)
			for _, s := range e.SchemaValidationErrors {
				t.Errorf("  %s at %s", s.Reason, s.FieldPath)
			}
		}
	}
}

// httpRule is one binding of proto/tokend/v1/token_service_http.yaml.
type httpRule struct {
	Selector           string `yaml:"selector"`
	Get                string `yaml:"get"`
	Put                string `yaml:"put"`
	Post               string `yaml:"post"`
	Patch              string `yaml:"patch"`
	Delete             string `yaml:"delete"`
	Body               string `yaml:"body"`
	Custom             any    `yaml:"custom"`
	AdditionalBindings any    `yaml:"additional_bindings"`
}

func TestOpenAPIDocumentMatchesHTTPRules(t *testing.T) {
	b, err := os.ReadFile("../proto/tokend/v1/token_service_http.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		HTTP struct {
			Rules []httpRule `yaml:"rules"`
		} `yaml:"http"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatalf("parse the HTTP rule file: %v", err)
	}
	if len(file.HTTP.Rules) == 0 {
		t.Fatal("the HTTP rule file has no rules")
	}

	doc, err := libopenapi.NewDocument([]byte(openAPIDocument))
	if err != nil {
		t.Fatal(err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	// documented maps "METHOD path" to operationId.
	documented := map[string]string{}
	for path, item := range model.Model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			documented[strings.ToUpper(method)+" "+path] = op.OperationId
		}
	}

	seen := map[string]bool{}
	for _, r := range file.HTTP.Rules {
		if r.Custom != nil || r.AdditionalBindings != nil {
			t.Fatalf("%s: custom and additional bindings are not understood by this test; extend it", r.Selector)
		}
		var bindings []string
		for _, mb := range []struct{ method, path string }{
			{http.MethodGet, r.Get}, {http.MethodPut, r.Put}, {http.MethodPost, r.Post},
			{http.MethodPatch, r.Patch}, {http.MethodDelete, r.Delete},
		} {
			if mb.path != "" {
				// The gateway's field is token_id; the published URL
				// template names the segment {token}.
				bindings = append(bindings, mb.method+" "+strings.ReplaceAll(mb.path, "{token_id}", "{token}"))
			}
		}
		if len(bindings) != 1 {
			t.Errorf("%s: %d HTTP bindings, want 1", r.Selector, len(bindings))
			continue
		}
		key := bindings[0]
		rpc := r.Selector[strings.LastIndex(r.Selector, ".")+1:]
		opID, ok := documented[key]
		if !ok {
			t.Errorf("%s (%s) is not in the OpenAPI document", key, r.Selector)
			continue
		}
		if want := openAPIOperationIDs[rpc]; opID != want {
			t.Errorf("%s: operationId = %q, want %q", key, opID, want)
		}
		seen[key] = true
	}
	for key, id := range documented {
		if !seen[key] {
			t.Errorf("the document has %s (%s), which no HTTP rule binds", key, id)
		}
	}
	if len(documented) != len(openAPIOperationIDs) {
		t.Errorf("the document has %d operations, want %d", len(documented), len(openAPIOperationIDs))
	}
}

// TestOpenAPIObjectsAreClosed checks that every object schema refuses
// unknown keys, that response objects require every key (nullable values
// are sent as null, never omitted), and that every operation needs the
// bearer scheme.
func TestOpenAPIObjectsAreClosed(t *testing.T) {
	doc := openAPIRaw(t)
	components := doc["components"].(map[string]any)
	schemas := components["schemas"].(map[string]any)
	for _, name := range []string{
		"Token", "TokenEnvelope", "TokenList", "CreatedToken", "RotatedToken",
		"CreateTokenRequest", "UpdateTokenRequest", "RotateTokenRequest", "Problem", "FieldError",
	} {
		if _, ok := schemas[name]; !ok {
			t.Errorf("components.schemas lacks %s", name)
		}
	}
	var walk func(where string, s map[string]any)
	walk = func(where string, s map[string]any) {
		props, hasProps := s["properties"].(map[string]any)
		types := s["type"]
		isObject := hasProps || types == "object" || (reflect.TypeOf(types) == reflect.TypeOf([]any{}) && slices.Contains(types.([]any), "object"))
		if isObject && s["additionalProperties"] != false {
			t.Errorf("%s: object schema without additionalProperties: false", where)
		}
		for k, v := range props {
			if sub, ok := v.(map[string]any); ok {
				walk(where+"."+k, sub)
			}
		}
		if items, ok := s["items"].(map[string]any); ok {
			walk(where+"[]", items)
		}
	}
	for name, s := range schemas {
		walk(name, s.(map[string]any))
	}

	// Response objects: every key but Problem's optional errors is required.
	for _, name := range []string{"Token", "TokenEnvelope", "TokenList", "CreatedToken", "CreatedTokenEnvelope", "RotatedToken", "RotatedTokenEnvelope", "Problem", "FieldError"} {
		s, ok := schemas[name].(map[string]any)
		if !ok {
			t.Errorf("no schema %s", name)
			continue
		}
		var props, required []string
		for k := range s["properties"].(map[string]any) {
			if name == "Problem" && k == "errors" {
				continue
			}
			props = append(props, k)
		}
		for _, k := range s["required"].([]any) {
			required = append(required, k.(string))
		}
		slices.Sort(props)
		slices.Sort(required)
		if !slices.Equal(props, required) {
			t.Errorf("%s: required = %v, want every key %v", name, required, props)
		}
	}

	// The Token schema has exactly the keys the gateway writes.
	var goKeys []string
	for f := range reflect.TypeFor[Token]().Fields() {
		goKeys = append(goKeys, strings.Split(f.Tag.Get("json"), ",")[0])
	}
	var docKeys []string
	for k := range schemas["Token"].(map[string]any)["properties"].(map[string]any) {
		docKeys = append(docKeys, k)
	}
	slices.Sort(goKeys)
	slices.Sort(docKeys)
	if !slices.Equal(goKeys, docKeys) {
		t.Errorf("Token schema keys %v, gateway.Token JSON keys %v", docKeys, goKeys)
	}

	bearer := components["securitySchemes"].(map[string]any)["bearerAuth"].(map[string]any)
	if bearer["type"] != "http" || bearer["scheme"] != "bearer" {
		t.Errorf("bearerAuth = %v, want type http, scheme bearer", bearer)
	}
	for path, item := range doc["paths"].(map[string]any) {
		for method, v := range item.(map[string]any) {
			op, ok := v.(map[string]any)
			if !ok || method == "parameters" {
				continue
			}
			sec, _ := json.Marshal(op["security"])
			if string(sec) != `[{"bearerAuth":[]}]` {
				t.Errorf("%s %s: security = %s, want bearerAuth", method, path, sec)
			}
			if _, ok := op["responses"].(map[string]any)["401"]; !ok {
				t.Errorf("%s %s: no 401 response", method, path)
			}
		}
	}
}

func TestOpenAPIHandler(t *testing.T) {
	h := newHandler(t, &fakeConn{err: status.Error(codes.Internal, "must not be called")}, nil)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET: status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !json.Valid(rec.Body.Bytes()) {
		t.Error("GET: body is not valid JSON")
	}
	onDisk, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rec.Body.Bytes(), onDisk) {
		t.Error("GET: body differs from openapi.json")
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/openapi.json", nil))
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("HEAD: status %d, %d body bytes, Content-Type %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Type"))
	}

	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(m, "/openapi.json", nil))
		if rec.Code != http.StatusMethodNotAllowed || !strings.Contains(rec.Header().Get("Allow"), "GET") ||
			rec.Header().Get("Content-Type") != ProblemContentType {
			t.Errorf("%s: status %d, Allow %q, Content-Type %q; want a 405 problem allowing GET", m, rec.Code, rec.Header().Get("Allow"), rec.Header().Get("Content-Type"))
		}
	}
}

func TestDocsHandler(t *testing.T) {
	srv := httptest.NewServer(newHandler(t, &fakeConn{err: status.Error(codes.Internal, "must not be called")}, nil))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/docs")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, want := range map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
		"X-Content-Type-Options":  "nosniff",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	page := string(body)
	for _, bad := range []string{"<script", "src=\"http", "href=\"http", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("the page contains %q: it must not load anything", bad)
		}
	}

	doc := openAPIRaw(t)
	if title := doc["info"].(map[string]any)["title"].(string); !strings.Contains(page, "<title>"+html.EscapeString(title)) {
		t.Errorf("the page's <title> is not the document's title %q", title)
	}
	for path, item := range doc["paths"].(map[string]any) {
		if !strings.Contains(page, `<span class="path">`+html.EscapeString(path)+`</span>`) {
			t.Errorf("the page does not show path %s", path)
		}
		for method, v := range item.(map[string]any) {
			op, ok := v.(map[string]any)
			if !ok || method == "parameters" {
				continue
			}
			id := op["operationId"].(string)
			i := strings.Index(page, `id="op-`+id+`"`)
			if i < 0 {
				t.Errorf("the page has no section op-%s", id)
				continue
			}
			// The section shows its method and path.
			section := page[i:]
			if end := strings.Index(section, "</section>"); end >= 0 {
				section = section[:end]
			}
			if !strings.Contains(section, ">"+strings.ToUpper(method)+"<") || !strings.Contains(section, html.EscapeString(path)) {
				t.Errorf("section op-%s does not show %s %s", id, strings.ToUpper(method), path)
			}
		}
	}
	for _, id := range openAPIOperationIDs {
		if !strings.Contains(page, `id="op-`+id+`"`) {
			t.Errorf("the page has no section for %s", id)
		}
	}

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/docs", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" || resp.Header.Get("Content-Type") != ProblemContentType {
		t.Errorf("POST: status %d, Allow %q, Content-Type %q; want a 405 problem with Allow", resp.StatusCode, resp.Header.Get("Allow"), resp.Header.Get("Content-Type"))
	}
}
