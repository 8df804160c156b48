package request_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokend/tokend/service/request"
)

const (
	validTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	validID = "4bf92f3577b34da6a3ce929d0e0e4736"
)

func TestParseTraceparent(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // "" means refused
	}{
		{"W3C example", validTP, validID},
		{"flags 00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", validID},
		{"random flag", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", validID},
		{"reserved flags in version 00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", ""},
		{"future version, any flags", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", validID},
		{"future version", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", validID},
		{"future version with extra field", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", validID},
		{"future version with empty extra field", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", validID},
		{"version fe", "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", validID},

		{"uppercase trace id", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""},
		{"one uppercase trace id digit", "00-4bf92f3577b34da6a3ce929d0e0e473A-00f067aa0ba902b7-01", ""},
		{"uppercase parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", ""},
		{"uppercase flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", ""},
		{"uppercase version", "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"all-zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"all-zero parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""},
		{"version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"version ff with extra field", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", ""},
		{"version 00 with extra field", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", ""},
		{"version 00 with trailing dash, as OpenTelemetry reads it", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", validID},
		{"version 00 with trailing char", validTP + "x", ""},
		{"future version, extra without dash", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xyz", ""},
		{"non-hex version", "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"non-hex trace id", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", ""},
		{"non-hex parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01", ""},
		{"non-hex flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x", ""},
		{"empty", "", ""},
		{"one char short", validTP[:54], ""},
		{"trace id one short", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", ""},
		{"trace id one long", "00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01", ""},
		{"parent id one short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", ""},
		{"parent id one long", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b70-01", ""},
		{"one-digit flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", ""},
		{"underscore separators", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", ""},
		{"first separator wrong", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"second separator wrong", "00-4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7-01", ""},
		{"third separator wrong", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7:01", ""},
		{"leading space", " " + validTP, ""},
		{"trailing space", validTP + " ", ""},
		{"leading dash", "-" + validTP, ""},
		{"three-digit version", "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := request.ParseTraceparent(tt.in)
			if ok != (tt.want != "") || got != tt.want {
				t.Errorf("ParseTraceparent(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.want != "")
			}
			if otel := otelTraceID(tt.in); otel != got {
				t.Errorf("ParseTraceparent(%q) = %q, OpenTelemetry's propagator reads %q", tt.in, got, otel)
			}
		})
	}
}

func isTraceID(s string) bool {
	if len(s) != 32 || s == strings.Repeat("0", 32) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func TestTraceID(t *testing.T) {
	if got := request.TraceID(validTP); got != validID {
		t.Errorf("TraceID(%q) = %q, want %q", validTP, got, validID)
	}
	future := "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"
	if got := request.TraceID(future); got != validID {
		t.Errorf("TraceID(%q) = %q, want %q", future, got, validID)
	}
	invalid := []string{
		"",
		"garbage",
		strings.ToUpper(validTP),
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		validTP + "-xyz",
	}
	seen := make(map[string]bool)
	for _, in := range invalid {
		for i := 0; i < 20; i++ {
			got := request.TraceID(in)
			if !isTraceID(got) {
				t.Fatalf("TraceID(%q) = %q, want 32 lowercase hex digits, not all zero", in, got)
			}
			if got == validID {
				t.Errorf("TraceID(%q) = the id inside the refused header", in)
			}
			if seen[got] {
				t.Fatalf("TraceID(%q) = %q, drawn before", in, got)
			}
			seen[got] = true
		}
	}
}

func TestContext(t *testing.T) {
	if ri := request.FromContext(context.Background()); ri != nil {
		t.Errorf("FromContext(background) = %+v, want nil", ri)
	}
	ri := &request.Info{TraceID: validID}
	ctx := request.NewContext(context.Background(), ri)
	got := request.FromContext(ctx)
	if got != ri {
		t.Fatalf("FromContext = %p, want the same *Info %p", got, ri)
	}
	// Later layers fill in the one shared record.
	got.Client = netip.MustParseAddr("203.0.113.7")
	if ri.Client != got.Client {
		t.Error("Info is not shared through the context")
	}
	inner := context.WithValue(ctx, struct{}{}, 1)
	if request.FromContext(inner) != ri {
		t.Error("FromContext of a derived context lost the Info")
	}
}

// otelTraceID is what OpenTelemetry's W3C propagator, which serves when
// tracing is on, reads from the header h: the trace id, or "".
func otelTraceID(h string) string {
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": h})
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.TraceID().String()
	}
	return ""
}
