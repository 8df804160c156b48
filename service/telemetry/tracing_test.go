package telemetry

import "testing"

// TestTracesPath checks where OTLP/HTTP sends traces for an endpoint's
// path: a base URL from OTEL_EXPORTER_OTLP_ENDPOINT gets /v1/traces
// appended, as the OpenTelemetry specification says; a traces endpoint
// given any other way keeps its path; no path is /v1/traces either way.
func TestTracesPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		base bool
		want string
	}{
		{"", false, "/v1/traces"},
		{"/", true, "/v1/traces"},
		{"/otel", true, "/otel/v1/traces"},
		{"/otel/", true, "/otel/v1/traces"},
		{"/otel/v1/traces", false, "/otel/v1/traces"},
		{"/custom", false, "/custom"},
	} {
		if got := tracesPath(tc.path, tc.base); got != tc.want {
			t.Errorf("tracesPath(%q, base %v) = %q, want %q", tc.path, tc.base, got, tc.want)
		}
	}
}
