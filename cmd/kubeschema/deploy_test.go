package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Kubernetes version whose API the manifests are checked against, and
// the Prometheus Operator release whose ServiceMonitor CRD is used. Both
// come from the Go module proxy (no cluster, no other network).
const (
	kubernetesModule = "k8s.io/kubernetes@v1.34.2"
	promOperator     = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
)

// tool finds a checking tool: $ENV, then bin/tools (make installs them
// there), then PATH. `make test` sets REQUIRE_DEPLOY_TOOLS so CI never
// skips; a bare `go test` without the tools skips and says why.
func tool(t *testing.T, env, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", "..", "bin", "tools", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("REQUIRE_DEPLOY_TOOLS") != "" {
		t.Fatalf("%s is not installed (make tools)", name)
	}
	t.Skipf("%s is not installed; `make test` installs it", name)
	return ""
}

// moduleDir downloads a module through the Go module proxy and returns its
// directory, without touching this module's go.mod.
func moduleDir(t *testing.T, mod string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module tmp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", mod, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s: %s %v", mod, info.Error, err)
	}
	return info.Dir
}

type checker struct {
	t                      *testing.T
	kustomize, kubeconform string
	swagger, crd           string
}

func newChecker(t *testing.T) *checker {
	c := &checker{t: t, kustomize: tool(t, "KUSTOMIZE", "kustomize"), kubeconform: tool(t, "KUBECONFORM", "kubeconform")}
	c.swagger = filepath.Join(moduleDir(t, kubernetesModule), "api", "openapi-spec", "swagger.json")
	c.crd = filepath.Join(moduleDir(t, promOperator), "example", "prometheus-operator-crd", "monitoring.coreos.com_servicemonitors.yaml")
	return c
}

// render builds a kustomization and returns the file holding its output.
func (c *checker) render(dir string) string {
	c.t.Helper()
	out, err := exec.Command(c.kustomize, "build", dir).Output()
	if err != nil {
		c.t.Fatalf("kustomize build %s: %v", dir, err)
	}
	f := filepath.Join(c.t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(f, out, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return f
}

// validate runs kubeconform -strict on manifest with schemas generated for
// it, returning kubeconform's output and whether it passed.
func (c *checker) validate(manifest string) (string, bool) {
	c.t.Helper()
	schemas := filepath.Join(c.t.TempDir(), "schemas")
	if err := run(c.swagger, []string{c.crd}, schemas, []string{manifest}); err != nil {
		c.t.Fatalf("generating schemas: %v", err)
	}
	cmd := exec.Command(c.kubeconform, "-strict", "-summary",
		"-schema-location", schemas+"/{{ .ResourceKind }}{{ .KindSuffix }}.json", manifest)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// kustomizations lists every directory of deploy/ holding a kustomization.
func kustomizations(t *testing.T) []string {
	var dirs []string
	err := filepath.WalkDir(filepath.Join("..", "..", "deploy"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(p))
		}
		return err
	})
	if err != nil || len(dirs) < 2 {
		t.Fatalf("kustomizations: %v %v", dirs, err)
	}
	return dirs
}

func TestDeployManifestsAreValid(t *testing.T) {
	c := newChecker(t)
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			out, ok := c.validate(c.render(dir))
			if !ok || !strings.Contains(out, "Invalid: 0, Errors: 0, Skipped: 0") {
				t.Fatalf("kubeconform:\n%s", out)
			}
		})
	}
}

// TestTyposFail proves the check is strict: a misspelled or mistyped field
// anywhere fails it.
func TestTyposFail(t *testing.T) {
	c := newChecker(t)
	good, err := os.ReadFile(c.render(filepath.Join("..", "..", "deploy", "base")))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, complaint string }{
		{"terminationGracePeriodSeconds:", "terminationGracePeriodSecond:", "terminationGracePeriodSecond"},
		{"readOnlyRootFilesystem:", "readOnlyRootFileSystem:", "readOnlyRootFileSystem"},
		{"minAvailable:", "minAvailible:", "minAvailible"},
		{"targetPort: 8080", "targetport: 8080", "targetport"},
		{"interval: 15s", "intervall: 15s", "intervall"},
		{"containerPort: 8080", "containerPort: eighty", "containerPort"},
		{"namespaceSelector:", "namespaceSelecter:", "namespaceSelecter"},
		{"seconds: 10", "second: 10", "second"},
	} {
		t.Run(tc.to, func(t *testing.T) {
			if !strings.Contains(string(good), tc.from) {
				t.Fatalf("the base no longer has %q", tc.from)
			}
			f := filepath.Join(t.TempDir(), "typo.yaml")
			_ = os.WriteFile(f, []byte(strings.Replace(string(good), tc.from, tc.to, 1)), 0o644)
			out, ok := c.validate(f)
			if ok || !strings.Contains(out, tc.complaint) {
				t.Fatalf("kubeconform accepted %q (or did not name it):\n%s", tc.to, out)
			}
		})
	}
}
