package telemetry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/tokend/tokend/service/request"
)

// OTLP transport protocols, as OTEL_EXPORTER_OTLP_PROTOCOL names them.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// TracingConfig configures NewTracing.
type TracingConfig struct {
	// Endpoint is the OTLP collector's URL, such as http://collector:4317
	// for gRPC or http://collector:4318 for HTTP (whose path defaults to
	// /v1/traces). An http:// URL is sent in clear text, https:// over TLS.
	// Empty turns tracing off.
	Endpoint string
	// EndpointIsBase says Endpoint came from OTEL_EXPORTER_OTLP_ENDPOINT,
	// which the OpenTelemetry specification makes a base URL for every
	// signal: over HTTP, traces go to its path plus /v1/traces (a path
	// given any other way is used as it is).
	EndpointIsBase bool
	// Protocol is ProtocolGRPC (the default) or ProtocolHTTP.
	Protocol string
	// SampleRatio is the fraction of requests traced, from 0 to 1. The
	// client's sampled flag is not obeyed: a client cannot make the
	// server trace (and export) every request it sends.
	SampleRatio float64
	// ServiceVersion is reported as service.version.
	ServiceVersion string
}

// ConfigError names the TracingConfig field whose value NewTracing
// refuses.
type ConfigError struct {
	Field string // "Endpoint", "Protocol" or "SampleRatio"
	Msg   string
}

// Error returns the message that says what is wrong with the field.
func (e *ConfigError) Error() string { return e.Msg }

// Validate reports a configuration NewTracing would refuse, as a
// *ConfigError.
func (c TracingConfig) Validate() error {
	if !(c.SampleRatio >= 0 && c.SampleRatio <= 1) {
		return &ConfigError{"SampleRatio", fmt.Sprintf("trace sample ratio %v is not between 0 and 1", c.SampleRatio)}
	}
	if c.Endpoint == "" {
		return nil
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &ConfigError{"Endpoint", fmt.Sprintf("OTLP endpoint %q is not an http:// or https:// URL", c.Endpoint)}
	}
	if c.Protocol != ProtocolGRPC && c.Protocol != ProtocolHTTP {
		return &ConfigError{"Protocol", fmt.Sprintf("OTLP protocol %q is not %s or %s", c.Protocol, ProtocolGRPC, ProtocolHTTP)}
	}
	return nil
}

// Tracing is OpenTelemetry tracing of both transports, exported over OTLP.
// Incoming W3C traceparent headers (or gRPC metadata) continue the client's
// trace, so a request's trace id is the one its client and its log line
// and problem details show.
type Tracing struct {
	tp   *sdktrace.TracerProvider
	prop propagation.TextMapPropagator
}

// NewTracing starts an OTLP exporter for cfg, or returns nil (tracing off)
// when cfg has no endpoint. The exporter connects lazily: a collector that
// is down loses spans, never requests.
func NewTracing(ctx context.Context, cfg TracingConfig) (*Tracing, error) {
	if cfg.Endpoint == "" {
		return nil, nil
	}
	if cfg.Protocol == "" {
		cfg.Protocol = ProtocolGRPC
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var exp *otlptrace.Exporter
	var err error
	switch cfg.Protocol {
	case ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(cfg.Endpoint))
	case ProtocolHTTP:
		u, _ := url.Parse(cfg.Endpoint)
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.Endpoint),
			otlptracehttp.WithURLPath(tracesPath(u.Path, cfg.EndpointIsBase)))
	}
	if err != nil {
		return nil, fmt.Errorf("start OTLP exporter: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", "tokend"),
		attribute.String("service.version", cfg.ServiceVersion),
	)
	// A client's traceparent is continued, but neither its sampled flag
	// nor its trace id decides whether tokend records it.
	sample := randomSampler{cfg.SampleRatio}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sample,
			sdktrace.WithRemoteParentSampled(sample), sdktrace.WithRemoteParentNotSampled(sample))),
	)
	return &Tracing{tp: tp, prop: propagation.TraceContext{}}, nil
}

// randomSampler records a ratio of the traces it decides by a random draw
// of the server's. sdktrace's TraceIDRatioBased decides by the trace id,
// which a client chooses (traceparent): one whose id ends in zeros would
// have every request exported. The client's tracestate is not carried
// into tokend's spans either.
type randomSampler struct{ ratio float64 }

func (s randomSampler) ShouldSample(sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if s.ratio >= 1 || s.ratio > 0 && rand.Float64() < s.ratio {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.Drop}
}

func (s randomSampler) Description() string { return fmt.Sprintf("RandomRatio{%g}", s.ratio) }

// tracesPath is the URL path OTLP/HTTP exports traces to, for an endpoint
// whose path is p: /v1/traces when p is empty, p plus /v1/traces when the
// endpoint is a base URL (EndpointIsBase), else p itself.
func tracesPath(p string, base bool) string {
	switch {
	case strings.Trim(p, "/") == "":
		return "/v1/traces"
	case base:
		return strings.TrimSuffix(p, "/") + "/v1/traces"
	}
	return p
}

// Shutdown exports the spans still buffered and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.tp.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// ServerOptions trace the calls of a network gRPC server, of the methods
// it has only (known; a span is named by its method, and a method the
// server does not have is the client's to invent); nil options for a nil
// Tracing.
func (t *Tracing) ServerOptions(known func(fullMethod string) bool) []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.tp),
		otelgrpc.WithPropagators(t.prop),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelgrpc.WithFilter(func(ri *stats.RPCTagInfo) bool { return known(ri.FullMethodName) }),
	))}
}

// InstrumentHTTP traces the requests h answers: a server span each,
// continuing the client's trace (traceparent), named by method and route
// template (from route, never the raw path), and holding only what tokend
// chooses to record. Generic instrumentation (otelhttp) also records the
// raw path (where a client may put a secret), its user agent and any
// method it sends, verbatim; here a method HTTP does not define is
// _OTHER, as the semantic conventions say, and Annotate adds what tokend
// derived about the request.
func (t *Tracing) InstrumentHTTP(h http.Handler, route func(*http.Request) string) http.Handler {
	if t == nil {
		return h
	}
	tracer := t.tp.Tracer("github.com/tokend/tokend/service/telemetry")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		method, name := httpMethod(r.Method)
		ctx, span := tracer.Start(ctx, name+" "+route(r), trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", method)))
		defer span.End()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// httpMethod returns the method for the http.request.method attribute
// and for the span name: itself if HTTP defines it, else _OTHER and HTTP.
func httpMethod(m string) (attr, name string) {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m, m
	}
	return "_OTHER", "HTTP"
}

// AnnotateHTTP records a REST response's status code on the request's
// span, if it is traced; the edge, which knows the code, calls it.
func AnnotateHTTP(ctx context.Context, status int) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= http.StatusInternalServerError {
		span.SetStatus(codes.Error, "")
	}
}

// Annotate records on the request's span, if it is traced, what tokend
// derived about the request: its route, the client address as derived from
// the trusted proxies (overriding any address the instrumentation took from
// a forwarding header a client may have written), and the token that
// authenticated it. Nothing secret is recorded.
func Annotate(ctx context.Context, ri *request.Info) {
	span := trace.SpanFromContext(ctx)
	if ri == nil || !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 3)
	if ri.Route != "" {
		attrs = append(attrs, attribute.String("http.route", ri.Route))
	}
	if ri.Client.IsValid() {
		attrs = append(attrs, attribute.String("client.address", ri.Client.String()))
	}
	if ri.TokenID != 0 {
		attrs = append(attrs, attribute.Int64("tokend.token_id", int64(ri.TokenID)))
	}
	span.SetAttributes(attrs...)
}
