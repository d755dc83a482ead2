package tracing

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TestTracingNamesTheService: spans name the service replicache-sidecar
// and its version (a failing resource detector must not drop them for
// unknown_service:<executable>).
func TestTracingNamesTheService(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	tr, shutdown, err := New(context.Background(), "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = shutdown(context.Background()) }()
	_, sp := tr.Start(context.Background(), "x")
	defer sp.End()
	attrs := map[string]string{}
	for _, kv := range sp.(sdktrace.ReadOnlySpan).Resource().Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	if attrs["service.name"] != "replicache-sidecar" || attrs["service.version"] != "v1.2.3" {
		t.Errorf("resource: service.name %q, service.version %q; want replicache-sidecar, v1.2.3", attrs["service.name"], attrs["service.version"])
	}
}
