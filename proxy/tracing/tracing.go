// Package tracing exports the sidecar's spans over OTLP/HTTP when the
// standard OpenTelemetry variable OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set. Unset, there is no exporter
// and no tracer: the sidecar only propagates the W3C trace context, at no
// cost.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Enabled reports whether env asks for span export.
func Enabled(env map[string]string) bool {
	return env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "" || env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] != ""
}

// New returns a tracer exporting to the OTLP/HTTP endpoint the standard
// OTEL_* variables name (the exporter reads them: endpoint, headers,
// timeout, compression; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name
// the service), and the function that flushes and stops it. Spans are
// sampled as their parent was; a trace the sidecar starts is sampled
// (OTEL_TRACES_SAMPLER can say otherwise).
func New(ctx context.Context, version string) (trace.Tracer, func(context.Context) error, error) {
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the defaults.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("replicache-sidecar"), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if res == nil {
		res = resource.Default()
	}
	_ = err // a partial resource (one detector failing) is kept
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp.Tracer("github.com/replicache-sidecar/replicache-sidecar"), tp.Shutdown, nil
}

// Start is New when env enables tracing (Enabled), else a nil tracer. Its
// stop sends the spans still buffered, for up to 5 s, logging a failure;
// call it as the process ends.
func Start(ctx context.Context, env map[string]string, version string, log *slog.Logger) (trace.Tracer, func(), error) {
	if !Enabled(env) {
		return nil, func() {}, nil
	}
	tracer, shutdown, err := New(ctx, version)
	if err != nil {
		return nil, nil, err
	}
	return tracer, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			log.Warn("flushing spans", "error", err)
		}
	}, nil
}
