package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testMapping is a small mapping that parses.
const testMapping = `{
  "mutators": {
    "createTodo": {"method": "POST", "path": "/api/todos"},
    "updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}", "body": {"title": "{args.title?}"}},
    "deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}"},
    "tagTodo": {"method": "POST", "path": "/api/todos/{args.id}/tags?tag={args.tag}"}
  },
  "clientView": [{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}}]
}`

const testSecret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := Load(map[string]string{
		"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:3000/v1",
		"SIDECAR_DATABASE_URL": "postgres://u@localhost/db",
		"SIDECAR_MAPPING_FILE": writeFile(t, testMapping),
	})
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.ListenAddr, ":8080"},
		{"admin", cfg.AdminAddr, ":9090"},
		{"push path", cfg.PushPath, "/replicache/push"},
		{"pull path", cfg.PullPath, "/replicache/pull"},
		{"schema", cfg.DBSchema, "replicache"},
		{"forward", strings.Join(cfg.ForwardHeaders, ","), "Authorization"},
		{"user header", cfg.UserIDHeader, ""},
		{"auth path", cfg.AuthPath, ""},
		{"auth field", cfg.AuthUserField, "id"},
		{"timeout", cfg.UpstreamTimeout, 10 * time.Second},
		{"max body", cfg.MaxBodyBytes, int64(33554432)},
		{"budget", cfg.PushTimeBudget, 20 * time.Second},
		{"idempotency header", cfg.IdempotencyHeader, "Idempotency-Key"},
		{"upstream host", cfg.Upstream.Host, "127.0.0.1:3000"},
		{"mutators", strings.Join(cfg.Mapping.Mutators.Names(), ","), "createTodo,deleteTodo,tagTodo,updateTodo"},
		{"view records per user", cfg.MaxViewRecordsPerUser, 64},
		{"previous secret", cfg.IdempotencySecretPrevious, ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadConfigListsEveryProblem(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"nothing set", map[string]string{}, []string{
			`"SIDECAR_UPSTREAM_URL" is not set`, `"SIDECAR_DATABASE_URL" is not set`, `"SIDECAR_MAPPING_FILE" is not set`,
		}},
		{"many bad values", map[string]string{
			"SIDECAR_UPSTREAM_URL":       "ftp://x",
			"SIDECAR_DATABASE_URL":       "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE":       "/nonexistent/mapping.json",
			"SIDECAR_DB_SCHEMA":          "Robert'); DROP TABLE",
			"SIDECAR_UPSTREAM_TIMEOUT":   "soon",
			"SIDECAR_MAX_BODY_BYTES":     "-1",
			"SIDECAR_PUSH_PATH":          "/same",
			"SIDECAR_PULL_PATH":          "/same",
			"SIDECAR_FORWARD_HEADERS":    "Authorization,Bad Header",
			"SIDECAR_LOG_LEVEL":          "loud",
			"SIDECAR_TRUSTED_PROXIES":    "10.0.0.0/8,gateway",
			"SIDECAR_IDEMPOTENCY_SECRET": "too short",
		}, []string{
			"SIDECAR_UPSTREAM_URL", "reading mapping", "SIDECAR_DB_SCHEMA", "UPSTREAM_TIMEOUT", "SIDECAR_MAX_BODY_BYTES must be positive",
			"must differ", `"Bad Header" is not a header name`, "SIDECAR_LOG_LEVEL", `SIDECAR_TRUSTED_PROXIES: "gateway"`, "SIDECAR_IDEMPOTENCY_SECRET must be at least 32 bytes",
		}},
		{"invalid mapping", map[string]string{
			"SIDECAR_UPSTREAM_URL": "http://x",
			"SIDECAR_DATABASE_URL": "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE": writeFile(t, `{"mutators":{"a":{"method":"FETCH","path":"/x/{args.id}/{who}"}},
				"clientView":[{"path":"/v","key":"v/{id}","pagination":{"type":"pages"}}]}`),
		}, []string{`mutator "a": method "FETCH"`, `unknown placeholder {who}`, `pagination type "pages"`},
		},
		{"poke fairness settings", map[string]string{
			"SIDECAR_UPSTREAM_URL":         "http://x",
			"SIDECAR_DATABASE_URL":         "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE":         writeFile(t, testMapping),
			"SIDECAR_POKE_PASSTHROUGH":     "anonymous",
			"SIDECAR_POKE_CALLER_INTERVAL": "-1s",
			"SIDECAR_POKE_MAX_LIFETIME":    "0s",
		}, []string{`SIDECAR_POKE_PASSTHROUGH "anonymous": want identified, all or off`,
			"SIDECAR_POKE_CALLER_INTERVAL must not be negative", "SIDECAR_POKE_MAX_LIFETIME must be positive"}},
		{"view records per user", map[string]string{
			"SIDECAR_UPSTREAM_URL":              "http://x",
			"SIDECAR_DATABASE_URL":              "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE":              writeFile(t, testMapping),
			"SIDECAR_MAX_VIEW_RECORDS_PER_USER": "-1",
		}, []string{"SIDECAR_MAX_VIEW_RECORDS_PER_USER -1"}},
		{"the generated secret as the previous one, while it is the current one", map[string]string{
			"SIDECAR_UPSTREAM_URL":                "http://x",
			"SIDECAR_DATABASE_URL":                "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE":                writeFile(t, testMapping),
			"SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS": "generated",
		}, []string{"SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS=generated needs SIDECAR_IDEMPOTENCY_SECRET"}},
		{"a previous secret like the current one", map[string]string{
			"SIDECAR_UPSTREAM_URL":                "http://x",
			"SIDECAR_DATABASE_URL":                "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE":                writeFile(t, testMapping),
			"SIDECAR_IDEMPOTENCY_SECRET":          testSecret,
			"SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS": testSecret,
		}, []string{"SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS must differ"}},
		{"a short previous secret", map[string]string{
			"SIDECAR_UPSTREAM_URL":                "http://x",
			"SIDECAR_DATABASE_URL":                "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE":                writeFile(t, testMapping),
			"SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS": "short",
		}, []string{"SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS must be at least 32 bytes"}},
		{"typo in mapping", map[string]string{
			"SIDECAR_UPSTREAM_URL": "http://x",
			"SIDECAR_DATABASE_URL": "postgres://u@localhost/db",
			"SIDECAR_MAPPING_FILE": writeFile(t, `{"mutator":{}}`),
		}, []string{`unknown field "mutator"`}},
		{"secret stays out of the message", map[string]string{
			"SIDECAR_UPSTREAM_URL": "http://x",
			"SIDECAR_DATABASE_URL": "postgres://u:hunter2@localhost:notaport/db",
			"SIDECAR_MAPPING_FILE": writeFile(t, testMapping),
		}, []string{"SIDECAR_DATABASE_URL: not a valid"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.env)
			if err == nil {
				t.Fatal("LoadConfig accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the database password: %v", err)
			}
		})
	}
}

// TestConfigExampleListsEverySetting keeps config.example.env in step with
// Config: every setting appears there (set, or commented out), nothing
// else does, and a setting given a value there shows its real default.
func TestConfigExampleListsEverySetting(t *testing.T) {
	raw, err := os.ReadFile("../../config.example.env")
	if err != nil {
		t.Fatal(err)
	}
	example := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		name, value, ok := strings.Cut(line, "=")
		if ok && strings.HasPrefix(name, "SIDECAR_") && !strings.ContainsAny(name, " \t") {
			example[name] = value
		}
	}
	settings := map[string]bool{}
	ct := reflect.TypeFor[Config]()
	for i := range ct.NumField() {
		f := ct.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		name := "SIDECAR_" + tag
		settings[name] = true
		v, ok := example[name]
		switch {
		case !ok:
			t.Errorf("%s (Config.%s) is missing from config.example.env", name, f.Name)
		case v != "" && v != f.Tag.Get("envDefault"):
			t.Errorf("config.example.env shows %s=%s, but its default is %q", name, v, f.Tag.Get("envDefault"))
		}
	}
	for name := range example {
		if !settings[name] {
			t.Errorf("config.example.env documents %s, which is no setting", name)
		}
	}
}
