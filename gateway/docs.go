package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// docsCSP allows the page nothing but its own inline style sheet.
const docsCSP = "default-src 'none'; style-src 'unsafe-inline'"

// docsHandler serves /docs: a readable API reference rendered on the server
// from the embedded OpenAPI document, with no scripts and no external
// assets. The page is rendered once, here, so a document the page cannot
// describe is an error at startup rather than on a request.
func docsHandler() (http.Handler, error) {
	page, err := renderDocs(openAPIDocument)
	if err != nil {
		return nil, fmt.Errorf("render /docs: %w", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", docsCSP)
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Length", strconv.Itoa(len(page)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(page)
		}
	}), nil
}

// The parts of an OpenAPI document that the page shows. References ($ref)
// are resolved against components when the page is built.

type oaDoc struct {
	Info struct {
		Title       string `json:"title"`
		Version     string `json:"version"`
		Description string `json:"description"`
	} `json:"info"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas         map[string]*oaSchema   `json:"schemas"`
		Responses       map[string]*oaResponse `json:"responses"`
		Parameters      map[string]*oaParam    `json:"parameters"`
		Headers         map[string]*oaHeader   `json:"headers"`
		SecuritySchemes map[string]struct {
			Type   string `json:"type"`
			Scheme string `json:"scheme"`
		} `json:"securitySchemes"`
	} `json:"components"`
}

type oaOperation struct {
	OperationID string                 `json:"operationId"`
	Summary     string                 `json:"summary"`
	Description string                 `json:"description"`
	Parameters  []*oaParam             `json:"parameters"`
	RequestBody *oaBody                `json:"requestBody"`
	Responses   map[string]*oaResponse `json:"responses"`
	Security    []map[string][]string  `json:"security"`
}

type oaParam struct {
	Ref         string    `json:"$ref"`
	Name        string    `json:"name"`
	In          string    `json:"in"`
	Required    bool      `json:"required"`
	Description string    `json:"description"`
	Schema      *oaSchema `json:"schema"`
}

type oaBody struct {
	Description string                 `json:"description"`
	Required    bool                   `json:"required"`
	Content     map[string]oaMediaType `json:"content"`
}

type oaMediaType struct {
	Schema *oaSchema `json:"schema"`
}

type oaResponse struct {
	Ref         string                 `json:"$ref"`
	Description string                 `json:"description"`
	Headers     map[string]*oaHeader   `json:"headers"`
	Content     map[string]oaMediaType `json:"content"`
}

type oaHeader struct {
	Ref         string    `json:"$ref"`
	Description string    `json:"description"`
	Required    bool      `json:"required"`
	Schema      *oaSchema `json:"schema"`
}

type oaSchema struct {
	Ref         string               `json:"$ref"`
	Type        oaTypes              `json:"type"`
	Format      string               `json:"format"`
	Description string               `json:"description"`
	Enum        []any                `json:"enum"`
	Const       any                  `json:"const"`
	Default     any                  `json:"default"`
	Pattern     string               `json:"pattern"`
	Minimum     *json.Number         `json:"minimum"`
	Maximum     *json.Number         `json:"maximum"`
	MinLength   *int                 `json:"minLength"`
	MaxLength   *int                 `json:"maxLength"`
	MinItems    *int                 `json:"minItems"`
	MaxItems    *int                 `json:"maxItems"`
	Items       *oaSchema            `json:"items"`
	Required    []string             `json:"required"`
	Properties  map[string]*oaSchema `json:"properties"`
}

// oaTypes is a schema's type: one name or, in OpenAPI 3.1, a list.
type oaTypes []string

func (t *oaTypes) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*t = oaTypes{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*t = many
	return nil
}

// The page's view model.

type docsPage struct {
	Title       string
	Version     string
	Description []paragraph
	Auth        string
	Operations  []docsOperation
	Schemas     []docsSchema
}

type docsOperation struct {
	ID          string
	Method      string // GET
	MethodClass string // m-get
	Path        string
	Summary     string
	Description []paragraph
	Auth        bool
	Parameters  []docsParam
	Body        *docsBody
	Responses   []docsResponse
}

type docsParam struct {
	Name, In, Type string
	Required       bool
	Description    []paragraph
}

type docsBody struct {
	MediaType, Schema string
	Required          bool
	Description       []paragraph
}

type docsResponse struct {
	Status      string
	Description []paragraph
	MediaType   string
	Schema      string
	Headers     []docsHeader
}

type docsHeader struct {
	Name        string
	Required    bool
	Description []paragraph
}

type docsSchema struct {
	Name        string
	Description []paragraph
	Fields      []docsField
}

type docsField struct {
	Name, Type  string
	SchemaLink  string // set when the type is (an array of) a named schema
	Required    bool
	Constraints []paragraph
	Description []paragraph
}

// paragraph is a run of text with `code` and **bold** spans marked.
type paragraph []span

type span struct {
	Text       string
	Code, Bold bool
}

func renderDocs(raw string) ([]byte, error) {
	var doc oaDoc
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		return nil, err
	}
	page := docsPage{
		Title:       doc.Info.Title,
		Version:     doc.Info.Version,
		Description: paragraphs(doc.Info.Description),
	}
	for name, s := range doc.Components.SecuritySchemes {
		if s.Type == "http" && strings.EqualFold(s.Scheme, "bearer") {
			page.Auth = name
		}
	}
	paths := make([]string, 0, len(doc.Paths))
	for p := range doc.Paths {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, path := range paths {
		item := doc.Paths[path]
		var shared []*oaParam
		if rawParams, ok := item["parameters"]; ok {
			if err := json.Unmarshal(rawParams, &shared); err != nil {
				return nil, fmt.Errorf("%s parameters: %w", path, err)
			}
		}
		// The order operations of one path are shown in.
		for _, method := range []string{"get", "put", "post", "patch", "delete", "head", "options", "trace"} {
			rawOp, ok := item[method]
			if !ok {
				continue
			}
			var op oaOperation
			if err := json.Unmarshal(rawOp, &op); err != nil {
				return nil, fmt.Errorf("%s %s: %w", method, path, err)
			}
			o, err := doc.operation(method, path, shared, &op)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", method, path, err)
			}
			page.Operations = append(page.Operations, o)
		}
	}
	names := make([]string, 0, len(doc.Components.Schemas))
	for n := range doc.Components.Schemas {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		page.Schemas = append(page.Schemas, schemaView(n, doc.Components.Schemas[n]))
	}
	tmpl, err := template.New("docs").Parse(docsTemplate)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, page); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (d *oaDoc) operation(method, path string, shared []*oaParam, op *oaOperation) (docsOperation, error) {
	if op.OperationID == "" {
		return docsOperation{}, fmt.Errorf("no operationId")
	}
	o := docsOperation{
		ID:          op.OperationID,
		Method:      strings.ToUpper(method),
		MethodClass: "m-" + method,
		Path:        path,
		Summary:     op.Summary,
		Description: paragraphs(op.Description),
		Auth:        op.Security == nil || slices.ContainsFunc(op.Security, func(m map[string][]string) bool { return len(m) > 0 }),
	}
	for _, p := range slices.Concat(shared, op.Parameters) {
		if p.Ref != "" {
			name := strings.TrimPrefix(p.Ref, "#/components/parameters/")
			if p = d.Components.Parameters[name]; p == nil {
				return o, fmt.Errorf("unresolved parameter %s", name)
			}
		}
		o.Parameters = append(o.Parameters, docsParam{
			Name: p.Name, In: p.In, Type: typeName(p.Schema), Required: p.Required,
			Description: paragraphs(p.Description + constraints(p.Schema, " ")),
		})
	}
	if b := op.RequestBody; b != nil {
		for _, mt := range docsKeys(b.Content) {
			o.Body = &docsBody{MediaType: mt, Schema: refName(b.Content[mt].Schema), Required: b.Required, Description: paragraphs(b.Description)}
			break
		}
	}
	codes := docsKeys(op.Responses) // "2xx" < "4xx" < "default"
	for _, code := range codes {
		r := op.Responses[code]
		if r.Ref != "" {
			name := strings.TrimPrefix(r.Ref, "#/components/responses/")
			if r = d.Components.Responses[name]; r == nil {
				return o, fmt.Errorf("unresolved response %s", name)
			}
		}
		dr := docsResponse{Status: code, Description: paragraphs(r.Description)}
		for _, mt := range docsKeys(r.Content) {
			dr.MediaType, dr.Schema = mt, refName(r.Content[mt].Schema)
			break
		}
		for _, name := range docsKeys(r.Headers) {
			h := r.Headers[name]
			if h.Ref != "" {
				ref := strings.TrimPrefix(h.Ref, "#/components/headers/")
				if h = d.Components.Headers[ref]; h == nil {
					return o, fmt.Errorf("unresolved header %s", ref)
				}
			}
			dr.Headers = append(dr.Headers, docsHeader{Name: name, Required: h.Required, Description: paragraphs(h.Description)})
		}
		o.Responses = append(o.Responses, dr)
	}
	return o, nil
}

func schemaView(name string, s *oaSchema) docsSchema {
	v := docsSchema{Name: name, Description: paragraphs(s.Description)}
	for _, f := range docsKeys(s.Properties) {
		p := s.Properties[f]
		field := docsField{
			Name:        f,
			Type:        typeName(p),
			Required:    slices.Contains(s.Required, f),
			Constraints: paragraphs(constraints(p, "")),
			Description: paragraphs(p.Description),
		}
		if n := refName(p); n != "" {
			field.SchemaLink = n
		} else if p.Items != nil && refName(p.Items) != "" {
			field.SchemaLink = refName(p.Items)
		}
		v.Fields = append(v.Fields, field)
	}
	return v
}

func refName(s *oaSchema) string {
	if s == nil {
		return ""
	}
	return strings.TrimPrefix(s.Ref, "#/components/schemas/")
}

// typeName spells a schema's type for people: "string (date-time) | null",
// "array of Token".
func typeName(s *oaSchema) string {
	if s == nil {
		return ""
	}
	if n := refName(s); n != "" {
		return n
	}
	var parts []string
	for _, t := range s.Type {
		switch {
		case t == "array" && s.Items != nil:
			parts = append(parts, "array of "+typeName(s.Items))
		case t != "null" && s.Format != "":
			parts = append(parts, t+" ("+s.Format+")")
		default:
			parts = append(parts, t)
		}
	}
	return strings.Join(parts, " | ")
}

// constraints summarizes a schema's limits in words.
func constraints(s *oaSchema, lead string) string {
	if s == nil {
		return ""
	}
	var c []string
	if len(s.Enum) > 0 {
		var vs []string
		for _, e := range s.Enum {
			vs = append(vs, fmt.Sprintf("`%v`", e))
		}
		c = append(c, "one of "+strings.Join(vs, ", "))
	}
	if s.Const != nil {
		c = append(c, fmt.Sprintf("always `%v`", s.Const))
	}
	if s.Minimum != nil {
		c = append(c, "minimum "+s.Minimum.String())
	}
	if s.Maximum != nil {
		c = append(c, "maximum "+s.Maximum.String())
	}
	if s.MinLength != nil {
		if *s.MinLength == 1 {
			c = append(c, "not empty")
		} else {
			c = append(c, fmt.Sprintf("at least %d characters", *s.MinLength))
		}
	}
	if s.MaxLength != nil {
		c = append(c, fmt.Sprintf("at most %d characters", *s.MaxLength))
	}
	if s.MinItems != nil {
		if *s.MinItems == 1 {
			c = append(c, "never empty")
		} else {
			c = append(c, fmt.Sprintf("at least %d items", *s.MinItems))
		}
	}
	if s.MaxItems != nil {
		c = append(c, fmt.Sprintf("at most %d items", *s.MaxItems))
	}
	if s.Pattern != "" {
		c = append(c, "pattern `"+s.Pattern+"`")
	}
	if s.Default != nil {
		c = append(c, fmt.Sprintf("default `%v`", s.Default))
	}
	if len(c) == 0 {
		return ""
	}
	out := strings.Join(c, "; ")
	if lead != "" {
		return lead + "(" + out + ")"
	}
	return out
}

func docsKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// paragraphs splits text on blank lines and marks the `code` and **bold**
// spans of the small Markdown subset the document's descriptions use.
func paragraphs(text string) []paragraph {
	var out []paragraph
	for _, para := range strings.Split(text, "\n\n") {
		para = strings.TrimSpace(para)
		if para == "" {
			continue
		}
		var p paragraph
		for i, chunk := range strings.Split(para, "`") {
			if i%2 == 1 {
				p = append(p, span{Text: chunk, Code: true})
				continue
			}
			for j, part := range strings.Split(chunk, "**") {
				if part != "" {
					p = append(p, span{Text: part, Bold: j%2 == 1})
				}
			}
		}
		out = append(out, p)
	}
	return out
}

const docsTemplate = `{{define "para"}}{{range .}}<p>{{range .}}{{if .Code}}<code>{{.Text}}</code>{{else if .Bold}}<strong>{{.Text}}</strong>{{else}}{{.Text}}{{end}}{{end}}</p>{{end}}{{end -}}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}} {{.Version}}</title>
<style>
:root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --bg: #fff; --panel: #f6f8fa; --line: #d1d9e0; --accent: #0969da; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --panel: #151b23; --line: #3d444d; --accent: #4493f8; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
.layout { display: grid; grid-template-columns: 17rem 1fr; min-height: 100vh; }
nav { position: sticky; top: 0; height: 100vh; overflow: auto; padding: 1.25rem 1rem; border-right: 1px solid var(--line); background: var(--panel); }
nav h2 { font-size: .75rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 1.25rem 0 .4rem; }
nav ul { list-style: none; margin: 0; padding: 0; }
nav li a { display: block; padding: .2rem .3rem; border-radius: 4px; color: var(--fg); text-decoration: none; font-size: .9rem; }
nav li a:hover { background: var(--line); }
main { padding: 1.5rem 2.5rem 4rem; max-width: 62rem; }
h1 { margin: 0 0 .25rem; font-size: 1.8rem; }
h1 small { font-size: .9rem; font-weight: normal; color: var(--muted); }
section.op, section.schema { border-top: 1px solid var(--line); padding-top: 1rem; margin-top: 2rem; scroll-margin-top: 1rem; }
h2.op-title { display: flex; flex-wrap: wrap; gap: .6rem; align-items: baseline; font-size: 1.15rem; margin: 0 0 .25rem; }
.method { display: inline-block; min-width: 4.2rem; text-align: center; padding: .1rem .45rem; border-radius: 4px; font: 700 .8rem ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #fff; }
.m-get { background: #1a7f37; } .m-post { background: #0969da; } .m-patch { background: #9a6700; } .m-delete { background: #cf222e; } .m-put { background: #8250df; }
.path { font: 600 1rem ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.summary { color: var(--muted); margin: 0 0 .5rem; }
.opid { font-size: .8rem; color: var(--muted); }
code { font: .85em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--panel); border: 1px solid var(--line); border-radius: 4px; padding: 0 .25em; }
h3 { font-size: .95rem; margin: 1.1rem 0 .4rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; vertical-align: top; border-bottom: 1px solid var(--line); padding: .35rem .5rem; }
th { background: var(--panel); font-weight: 600; }
td p { margin: 0 0 .3rem; } td p:last-child { margin-bottom: 0; }
.req { color: #cf222e; font-size: .75rem; font-weight: 600; }
.status { font: 700 .9rem ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.constraints { color: var(--muted); font-size: .8rem; margin-top: .2rem; }
.headers { color: var(--muted); font-size: .85rem; margin-top: .3rem; }
.lock { font-size: .8rem; color: var(--muted); }
a { color: var(--accent); }
@media (max-width: 50rem) { .layout { display: block; } nav { position: static; height: auto; border-right: 0; border-bottom: 1px solid var(--line); } main { padding: 1rem; } }
</style>
</head>
<body>
<div class="layout">
<nav aria-label="Contents">
<strong>{{.Title}}</strong>
<h2>Operations</h2>
<ul>
{{range .Operations}}<li><a href="#op-{{.ID}}"><span class="method {{.MethodClass}}">{{.Method}}</span> {{.Summary}}</a></li>
{{end}}</ul>
<h2>Schemas</h2>
<ul>
{{range .Schemas}}<li><a href="#schema-{{.Name}}">{{.Name}}</a></li>
{{end}}</ul>
<h2>Machine-readable</h2>
<ul><li><a href="/openapi.json">openapi.json</a></li></ul>
</nav>
<main>
<header>
<h1>{{.Title}} <small>version {{.Version}} · OpenAPI 3.1</small></h1>
{{template "para" .Description}}
{{if .Auth}}<p class="lock">Operations marked “bearer” need <code>Authorization: Bearer &lt;secret&gt;</code> (security scheme <code>{{.Auth}}</code>).</p>{{end}}
</header>
{{range .Operations}}
<section class="op" id="op-{{.ID}}">
<h2 class="op-title"><span class="method {{.MethodClass}}">{{.Method}}</span> <span class="path">{{.Path}}</span></h2>
<p class="summary">{{.Summary}} <span class="opid">· operationId <code>{{.ID}}</code>{{if .Auth}} · bearer{{end}}</span></p>
{{template "para" .Description}}
{{if .Parameters}}<h3>Parameters</h3>
<table>
<thead><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr></thead>
<tbody>
{{range .Parameters}}<tr><td><code>{{.Name}}</code>{{if .Required}} <span class="req">required</span>{{end}}</td><td>{{.In}}</td><td>{{.Type}}</td><td>{{template "para" .Description}}</td></tr>
{{end}}</tbody>
</table>{{end}}
{{with .Body}}<h3>Request body{{if not .Required}} (optional){{end}}</h3>
<p><code>{{.MediaType}}</code>: <a href="#schema-{{.Schema}}">{{.Schema}}</a></p>
{{template "para" .Description}}{{end}}
<h3>Responses</h3>
<table>
<thead><tr><th>Status</th><th>Body</th><th>Description</th></tr></thead>
<tbody>
{{range .Responses}}<tr><td class="status">{{.Status}}</td><td>{{if .Schema}}<a href="#schema-{{.Schema}}">{{.Schema}}</a><br><code>{{.MediaType}}</code>{{else}}none{{end}}</td><td>{{template "para" .Description}}{{if .Headers}}<div class="headers">Headers: {{range $i, $h := .Headers}}{{if $i}}, {{end}}<code>{{$h.Name}}</code>{{end}}</div>{{end}}</td></tr>
{{end}}</tbody>
</table>
</section>
{{end}}
<section class="schema-list">
<h2>Schemas</h2>
<p>Objects accept and carry no keys other than those listed. In responses every listed key is present; nullable values are <code>null</code>, never omitted.</p>
{{range .Schemas}}
<section class="schema" id="schema-{{.Name}}">
<h3>{{.Name}}</h3>
{{template "para" .Description}}
{{if .Fields}}<table>
<thead><tr><th>Field</th><th>Type</th><th>Description</th></tr></thead>
<tbody>
{{range .Fields}}<tr><td><code>{{.Name}}</code>{{if .Required}} <span class="req">required</span>{{end}}</td><td>{{if .SchemaLink}}<a href="#schema-{{.SchemaLink}}">{{.Type}}</a>{{else}}{{.Type}}{{end}}{{if .Constraints}}<div class="constraints">{{template "para" .Constraints}}</div>{{end}}</td><td>{{template "para" .Description}}</td></tr>
{{end}}</tbody>
</table>{{end}}
</section>
{{end}}
</section>
</main>
</div>
</body>
</html>
`
