package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// runbookBase is where every alert's runbook_url points: an entry of the
// "Runbook" section of the README, on the project's repository.
const runbookBase = "https://github.com/replicache-sidecar/replicache-sidecar/blob/main/README.md#"

var alertsFile = filepath.Join("..", "..", "deploy", "monitoring", "alerts.yaml")

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// alertRules returns the alerting rules of deploy/monitoring/alerts.yaml.
func alertRules(t *testing.T) []alertRule {
	t.Helper()
	raw, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var rules []alertRule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" { // not a recording rule
				rules = append(rules, r)
			}
		}
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no alerts", alertsFile)
	}
	return rules
}

// githubAnchor is the anchor GitHub gives a Markdown heading: lower case,
// punctuation other than '-' and '_' dropped, spaces turned into '-'.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r) || r == '_' || r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// runbookEntries returns the headings under the README's "### Runbook" (up
// to the next heading of its level or above) by their anchor, numbering
// repeated anchors across the whole file as GitHub does.
func runbookEntries(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	entries := map[string]string{}
	seen := map[string]int{}
	inFence, inRunbook, found := false, false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		level := len(line) - len(strings.TrimLeft(line, "#"))
		text := strings.TrimSpace(line[level:])
		anchor := githubAnchor(text)
		if n := seen[anchor]; n > 0 {
			seen[anchor]++
			anchor = anchor + "-" + strconv.Itoa(n)
		} else {
			seen[anchor] = 1
		}
		switch {
		case level == 3 && text == "Runbook":
			inRunbook, found = true, true
		case level <= 3:
			inRunbook = false
		case inRunbook:
			entries[anchor] = text
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal(`README.md has no "### Runbook" section`)
	}
	return entries
}

// TestMonitoringAlertsHaveRunbooks: every alert says how bad it is, what
// happened, and links to its entry in the README's runbook; every runbook
// entry is an alert's; and deploy/README.md lists every alert.
func TestMonitoringAlertsHaveRunbooks(t *testing.T) {
	entries := runbookEntries(t)
	deployReadme, err := os.ReadFile(filepath.Join("..", "..", "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, r := range alertRules(t) {
		alerts[r.Alert] = true
		t.Run(r.Alert, func(t *testing.T) {
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("severity %q; want warning or critical", s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("no %s annotation", a)
				}
			}
			url := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(url, runbookBase)
			switch {
			case !ok:
				t.Errorf("runbook_url %q does not start with %s", url, runbookBase)
			case entries[anchor] == "":
				t.Errorf("runbook_url %q: README.md's Runbook has no entry with anchor %q", url, anchor)
			case entries[anchor] != r.Alert:
				t.Errorf("runbook_url %q leads to the entry %q, not %q", url, entries[anchor], r.Alert)
			}
			if !strings.Contains(string(deployReadme), "`"+r.Alert+"`") {
				t.Errorf("deploy/README.md does not list it")
			}
		})
	}
	for anchor, heading := range entries {
		if !alerts[heading] {
			t.Errorf("README.md's Runbook has an entry %q (#%s), which is no alert in %s", heading, anchor, alertsFile)
		}
	}
}

// TestMonitoringAlertRulesFire runs the promtool unit tests of the alert
// rules (testdata/alert_rules_test.yaml): each alert fires on the series it
// is about and not on the ones beside it. Every alert must fire in at
// least one case.
func TestMonitoringAlertRulesFire(t *testing.T) {
	promtool := prometheusTool(t, "promtool")
	// The rules without their annotations: the cases state labels only
	// (promtool compares annotations too, and their text is checked above).
	raw, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules map[string]any
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	groups, _ := rules["groups"].([]any)
	for _, g := range groups {
		rs, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rs {
			delete(r.(map[string]any), "annotations")
		}
	}
	stripped, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	cases, err := os.ReadFile(filepath.Join("testdata", "alert_rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "alerts.yaml"), stripped, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alert_rules_test.yaml"), cases, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "test", "rules", "alert_rules_test.yaml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(cases, &tests); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, r := range alertRules(t) {
		if !fires[r.Alert] {
			t.Errorf("%s fires in no case of testdata/alert_rules_test.yaml", r.Alert)
		}
	}
}
