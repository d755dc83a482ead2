package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

type row struct {
	figure, sidecar, limit, ratio, target, met string
}

func (b *bench) add(r row) {
	b.rows = append(b.rows, r)
	fmt.Fprintf(os.Stderr, "bench:   %s: %s | %s | %s\n", r.figure, r.sidecar, r.limit, r.ratio)
}

func (b *bench) print(w io.Writer, took time.Duration) error {
	var pgVersion string
	_ = b.pg.QueryRow(context.Background(), `SHOW server_version`).Scan(&pgVersion)
	var out strings.Builder
	fmt.Fprintf(&out, "Measured %s on %d cores, %s of memory, %s, Postgres %s; the bench took %s.",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), memTotal(), runtime.Version(), pgVersion, took.Round(time.Second))
	if b.o.quick {
		out.WriteString(" QUICK RUN: a few iterations each, the figures mean nothing.")
	}
	out.WriteString("\n\n| figure | sidecar | physical limit, same run | ratio | target | met |\n|---|---|---|---|---|---|\n")
	for _, r := range b.rows {
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %s | %s |\n", r.figure, r.sidecar, r.limit, r.ratio, r.target, r.met)
	}
	_, err := io.WriteString(w, out.String())
	return err
}

func memTotal() string {
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return "unknown"
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) + " ms"
}

func ratio(a, b time.Duration) string {
	return fmt.Sprintf("%.2f×", float64(a)/float64(b))
}

// met says whether a ≤ k·b.
func met(a, b time.Duration, k float64) string { return metRatio(float64(a)/float64(b), k) }

func metRatio(r, k float64) string { return yes(r <= k) }

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// mb writes a byte count: KB below a megabyte.
func mb(n int) string {
	if n < 1_000_000 {
		return fmt.Sprintf("%.1f KB", float64(n)/1e3)
	}
	return fmt.Sprintf("%.2f MB", float64(n)/1e6)
}

// count writes n with thousands separators.
func count(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
