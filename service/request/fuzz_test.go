package request_test

import (
	"testing"

	"github.com/tokend/tokend/service/request"
)

func FuzzParseTraceparent(f *testing.F) {
	for _, s := range []string{
		validTP,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
		"", "00", "00-", "-----------------------------------------------------------",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		id, ok := request.ParseTraceparent(h)
		// With tracing on, OpenTelemetry's propagator reads the header;
		// off, this parser does. The trace id must not depend on which.
		if otel := otelTraceID(h); otel != id {
			t.Errorf("ParseTraceparent(%q) = %q, OpenTelemetry reads %q", h, id, otel)
		}
		if !ok {
			if id != "" {
				t.Errorf("ParseTraceparent(%q) = %q alongside false", h, id)
			}
		} else {
			if !isTraceID(id) {
				t.Errorf("ParseTraceparent(%q) = %q, not 32 lowercase hex digits other than all zero", h, id)
			}
			if id != h[3:35] {
				t.Errorf("ParseTraceparent(%q) = %q, not the trace-id field", h, id)
			}
			// Version 00 is 55 characters; OpenTelemetry also takes one
			// trailing "-" (an empty extra field), and so does this.
			if h[:2] == "ff" || h[:2] == "00" && len(h) != 55 && h != h[:55]+"-" {
				t.Errorf("ParseTraceparent(%q) accepted version %q of length %d", h, h[:2], len(h))
			}
		}
		if got := request.TraceID(h); !isTraceID(got) || ok && got != id {
			t.Errorf("TraceID(%q) = %q (parse %q, %v)", h, got, id, ok)
		}
	})
}
