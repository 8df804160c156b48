// Package telemetry is what operators see of tokend beyond its log:
// Prometheus metrics, served on a listener of their own, and OpenTelemetry
// traces, exported over OTLP when an endpoint is configured. Both are built
// from the ecosystem's standard libraries and middleware; a nil *Metrics or
// *Tracing is valid and does nothing, so a server without them pays nothing.
package telemetry

import (
	"context"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/usage"
)

// Namespace prefixes tokend's own metric names.
const Namespace = "tokend"

// latencyBuckets suit a service whose successful requests take tens of
// microseconds to a few milliseconds, and whose deadline cap is 10 s.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10}

// Sources are the parts of the server whose state the metrics read when
// scraped. Either may be nil.
type Sources struct {
	// Usage is the usage recorder, for flush lag, failures and backlog.
	Usage *usage.Recorder
	// DBSize returns the database file's size in bytes.
	DBSize func() int64
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// Version describes the build (tokend version), exported as the
	// version label of tokend_build_info.
	Version string
}

// Metrics holds tokend's collectors on a registry of its own (nothing is
// registered globally, so any number of servers can run in one process).
type Metrics struct {
	reg          *prometheus.Registry
	grpc         *grpcprom.ServerMetrics
	httpRequests *prometheus.CounterVec
	httpLatency  *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	throttled    prometheus.Counter
}

var _ auth.Observer = (*Metrics)(nil)

// NewMetrics builds the collectors and registers them, with the Go runtime
// and process collectors, on a new registry.
func NewMetrics(src Sources) *Metrics {
	now := src.Now
	if now == nil {
		now = time.Now
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(latencyBuckets))),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "REST requests answered, by route template, HTTP method and status code.",
		}, []string{"route", "method", "code"}),
		httpLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time to answer a REST request, by route template, HTTP method and status code.",
			Buckets: latencyBuckets,
		}, []string{"route", "method", "code"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "auth", Name: "failures_total",
			Help: "Failed authentications over both transports, by reason.",
		}, []string{"reason"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "auth", Name: "throttled_total",
			Help: "Requests refused (429 / ResourceExhausted) because their client address failed authentication too often.",
		}),
	}
	// Every reason is exported from the start, at zero, so that a rate
	// over it is defined before the first failure.
	for _, r := range auth.Reasons() {
		m.authFailures.WithLabelValues(r)
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.grpc, m.httpRequests, m.httpLatency, m.authFailures, m.throttled,
	)
	if rec := src.Usage; rec != nil {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: Namespace, Subsystem: "usage", Name: "flush_lag_seconds",
				Help: "Seconds since disk last held every counted use: what a crash now would lose. Stays near the flush interval while flushes succeed.",
			}, func() float64 {
				st := rec.Stats()
				if st.Pending == 0 {
					return 0
				}
				return now().Sub(st.LastFlush).Seconds()
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: Namespace, Subsystem: "usage", Name: "pending",
				Help: "Counted uses held in memory, not yet written to disk.",
			}, func() float64 { return float64(rec.Stats().Pending) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "usage", Name: "flushes_total",
				Help: "Usage flushes that committed.",
			}, func() float64 { return float64(rec.Stats().Flushes) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "usage", Name: "flush_failures_total",
				Help: "Usage flushes that failed; their uses stay in memory and are retried.",
			}, func() float64 { return float64(rec.Stats().Failures) }),
		)
	}
	if src.Version != "" {
		info := prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "build_info",
			Help:        "Always 1; its version label says which build is running.",
			ConstLabels: prometheus.Labels{"version": src.Version},
		})
		info.Set(1)
		m.reg.MustRegister(info)
	}
	if size := src.DBSize; size != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "db", Name: "size_bytes",
			Help: "Size of the bbolt database file.",
		}, func() float64 { return float64(size()) }))
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// UnaryServerInterceptor counts and times calls of the network gRPC server
// (grpc_server_handled_total, grpc_server_handling_seconds). It belongs
// outermost, so that refused and failed calls are counted too; nil for a
// nil Metrics.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	if m == nil {
		return nil
	}
	return m.grpc.UnaryServerInterceptor()
}

// StreamServerInterceptor counts and times the streaming calls of the
// network gRPC server (health Watch, reflection), whose series
// InitializeGRPC exports too; nil for a nil Metrics.
func (m *Metrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	if m == nil {
		return nil
	}
	return m.grpc.StreamServerInterceptor()
}

// InitializeGRPC exports every method of srv at zero before its first call.
func (m *Metrics) InitializeGRPC(srv *grpc.Server) {
	if m != nil {
		m.grpc.InitializeMetrics(srv)
	}
}

// InstrumentHTTP counts and times the requests h answers, labelled with the
// route template (never the raw path, which a client chooses). h must run
// inside the gateway's edge, which puts the route on the request's Info.
func (m *Metrics) InstrumentHTTP(h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	route := promhttp.WithLabelFromCtx("route", func(ctx context.Context) string {
		if ri := request.FromContext(ctx); ri != nil && ri.Route != "" {
			return ri.Route
		}
		return "unmatched"
	})
	return promhttp.InstrumentHandlerDuration(m.httpLatency,
		promhttp.InstrumentHandlerCounter(m.httpRequests, h, route), route)
}

// Refused counts a failed authentication.
func (m *Metrics) Refused(reason string) {
	if m != nil {
		m.authFailures.WithLabelValues(reason).Inc()
	}
}

// Throttled counts a request refused by the failed-authentication throttle.
func (m *Metrics) Throttled() {
	if m != nil {
		m.throttled.Inc()
	}
}
