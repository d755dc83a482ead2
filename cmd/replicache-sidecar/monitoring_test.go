package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// runningSidecar starts the binary against a test upstream and pushes a few
// mutations, so every series has samples.
func runningSidecar(t *testing.T) *sidecarProc {
	t.Helper()
	api := proxytest.NewIdempotentAPI(t)
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}},"clientView":[{"path":"/items","key":"i/{id}"}]}`), 0o600)
	dbURL := proxytest.DatabaseURL(t)
	schema := fmt.Sprintf("mon_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	sc := startSidecar(t, map[string]string{
		"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_DB_SCHEMA": schema,
	})
	if s := pushOnce(sc.public, "g", "c", 1, 5); s != 200 {
		t.Fatalf("push = %d", s)
	}
	lastMutationIDs(sc.public, "g")
	return sc
}

// exportedMetrics returns the metric families of the sidecar's exposition
// with their types.
func exportedMetrics(t *testing.T, sc *sidecarProc) map[string]string {
	t.Helper()
	resp, err := http.Get(sc.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	types := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
	}
	return types
}

var metricNameRE = regexp.MustCompile(`\b(replicache_sidecar_[a-z_]+|go_[a-z_]+|process_[a-z_]+)\b`)

// TestMonitoringReferencesExportedMetrics: the alert rules pass promtool,
// and every metric the rules and the Grafana dashboard use is one the
// sidecar exports, or one listed in pendingMetrics while it is being added.
func TestMonitoringReferencesExportedMetrics(t *testing.T) {
	promtool := prometheusTool(t, "promtool")
	rules := filepath.Join("..", "..", "deploy", "monitoring", "alerts.yaml")
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	dashboardFile := filepath.Join("..", "..", "deploy", "monitoring", "grafana-dashboard.json")
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dashboard struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dashboard); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	if len(dashboard.Panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	exported := exportedMetrics(t, runningSidecar(t))
	known := maps.Clone(exported)
	for name, typ := range pendingMetrics {
		if got := exported[name]; got != "" {
			t.Errorf("%s is exported now (a %s; pending as a %s): delete it from pendingMetrics", name, got, typ)
			continue
		}
		known[name] = typ
	}
	usedNames := map[string]bool{}
	rulesText, _ := os.ReadFile(rules)
	sources := map[string]string{"alerts.yaml": string(rulesText)}
	for _, p := range dashboard.Panels {
		for _, tg := range p.Targets {
			sources["dashboard panel "+p.Title] += tg.Expr + "\n"
		}
	}
	used := 0
	for where, text := range sources {
		for _, name := range metricNameRE.FindAllString(text, -1) {
			used++
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && known[b] == "histogram" {
					base = b
				}
			}
			usedNames[base] = true
			if known[base] == "" {
				t.Errorf("%s uses %s, which the sidecar does not export", where, name)
			}
		}
	}
	if used < 10 {
		t.Errorf("only %d metric references found; the check proves little", used)
	}
	for name := range pendingMetrics {
		if !usedNames[name] {
			t.Errorf("pendingMetrics lists %s, which neither the alerts nor the dashboard use: delete it", name)
		}
	}
}

// TestPrometheusScrape runs a real Prometheus (Debian's package) on
// loopback, scraping a running sidecar every second, and waits until the
// pushed mutations show in its query API.
func TestPrometheusScrape(t *testing.T) {
	prom := prometheusTool(t, "prometheus")
	sc := runningSidecar(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	_ = os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: replicache-sidecar
    static_configs:
      - targets: [%q]
`, mustAbs(t, filepath.Join("..", "..", "deploy", "monitoring", "alerts.yaml")), strings.TrimPrefix(sc.admin, "http://"))), 0o600)
	addr := freeAddr(t)
	cmd := exec.Command(prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var logs proxytest.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	query := "http://" + addr + "/api/v1/query?query=" + url.QueryEscape(`sum(replicache_sidecar_mutations_total{outcome="applied"})`)
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for {
		if resp, err := http.Get(query); err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			last = string(b)
			var r struct {
				Data struct {
					Result []struct {
						Value []any `json:"value"`
					} `json:"result"`
				} `json:"data"`
			}
			if json.Unmarshal(b, &r) == nil && len(r.Data.Result) == 1 && r.Data.Result[0].Value[1] == "5" {
				return // Prometheus scraped the 5 applied mutations
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus never showed the 5 mutations; last answer %s\nprometheus log:\n%s", last, tail(logs.String(), 2000))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// prometheusTool finds a binary of Debian's prometheus package. `make test`
// installs it and sets REQUIRE_PROMTOOL, so CI never skips; a bare `go test`
// without it skips and says why.
func prometheusTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("REQUIRE_PROMTOOL") != "" {
			t.Fatalf("%s is not installed (apt-get install prometheus)", name)
		}
		t.Skipf("%s is not installed; `make test` installs it", name)
	}
	return p
}
