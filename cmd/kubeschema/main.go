// Command kubeschema writes strict, standalone JSON schemas for kubeconform
// from the real Kubernetes OpenAPI spec (api/openapi-spec/swagger.json in the
// k8s.io/kubernetes Go module) and from CustomResourceDefinitions, for the
// kinds that the given manifests use.
//
//	kubeschema -swagger swagger.json [-crd crd.yaml]... -out DIR manifest.yaml...
//
// Each schema is written as DIR/<kind>-<group>-<version>.json (the names
// kubeconform's {{ .ResourceKind }}{{ .KindSuffix }} template asks for).
// Strict means every object that lists its properties refuses others, so a
// misspelled field fails validation instead of being silently ignored.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	swagger := flag.String("swagger", "", "Kubernetes swagger.json (OpenAPI v2)")
	out := flag.String("out", "", "directory to write schemas to")
	var crds multiFlag
	flag.Var(&crds, "crd", "a CustomResourceDefinition YAML file (repeatable)")
	flag.Parse()
	if *swagger == "" || *out == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: kubeschema -swagger swagger.json [-crd crd.yaml]... -out DIR manifest.yaml...")
		os.Exit(2)
	}
	if err := run(*swagger, crds, *out, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "kubeschema:", err)
		os.Exit(1)
	}
}

// gvk names a resource type as manifests do.
type gvk struct{ apiVersion, kind string }

// fileName is kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}.json.
func (g gvk) fileName() string {
	group, version, hasGroup := strings.Cut(g.apiVersion, "/")
	suffix := "-" + strings.ToLower(strings.Split(group, ".")[0])
	if hasGroup {
		suffix += "-" + strings.ToLower(version)
	}
	return strings.ToLower(g.kind) + suffix + ".json"
}

func run(swaggerPath string, crdPaths []string, out string, manifests []string) error {
	needed := map[gvk]bool{}
	for _, m := range manifests {
		docs, err := readYAMLDocs(m)
		if err != nil {
			return err
		}
		for _, d := range docs {
			av, _ := d["apiVersion"].(string)
			k, _ := d["kind"].(string)
			if av == "" || k == "" {
				return fmt.Errorf("%s: a document without apiVersion or kind", m)
			}
			needed[gvk{av, k}] = true
		}
	}
	raw, err := os.ReadFile(swaggerPath)
	if err != nil {
		return err
	}
	var spec struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		return fmt.Errorf("reading %s: %w", swaggerPath, err)
	}
	schemas := map[gvk]map[string]any{}
	for name, def := range spec.Definitions {
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, x := range gvks {
			m, _ := x.(map[string]any)
			group, _ := m["group"].(string)
			version, _ := m["version"].(string)
			kind, _ := m["kind"].(string)
			av := version
			if group != "" {
				av = group + "/" + version
			}
			if g := (gvk{av, kind}); needed[g] {
				schemas[g] = standalone(name, spec.Definitions)
			}
		}
	}
	for _, p := range crdPaths {
		docs, err := readYAMLDocs(p)
		if err != nil {
			return err
		}
		for _, d := range docs {
			if err := addCRD(d, needed, schemas); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	var missing []string
	for g := range needed {
		if schemas[g] == nil {
			missing = append(missing, g.apiVersion+" "+g.kind)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("no schema for %s", strings.Join(missing, ", "))
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for g, s := range schemas {
		b, err := json.Marshal(s)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, g.fileName()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func readYAMLDocs(path string) ([]map[string]any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

const refPrefix = "#/definitions/"

// standalone returns definition root with every definition it references
// (transitively) embedded, made strict.
func standalone(root string, defs map[string]map[string]any) map[string]any {
	used := map[string]bool{}
	var visit func(v any)
	visit = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok && strings.HasPrefix(ref, refPrefix) {
				name := strings.TrimPrefix(ref, refPrefix)
				if !used[name] {
					used[name] = true
					visit(defs[name])
				}
			}
			for _, c := range x {
				visit(c)
			}
		case []any:
			for _, c := range x {
				visit(c)
			}
		}
	}
	visit(defs[root])
	out := strictCopy(defs[root]).(map[string]any)
	embedded := map[string]any{}
	for name := range used {
		embedded[name] = strictCopy(defs[name])
	}
	out["definitions"] = embedded
	out["$schema"] = "http://json-schema.org/draft-07/schema#"
	return out
}

// strictCopy deep-copies a schema, refusing unknown properties on objects
// that list theirs, and accepting both forms of int-or-string and quantity
// values (YAML writes port: 8080 and cpu: 1 as numbers).
func strictCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if f, _ := x["format"].(string); f == "int-or-string" {
			return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
		}
		if ref, _ := x["$ref"].(string); ref == refPrefix+"io.k8s.apimachinery.pkg.api.resource.Quantity" {
			return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
		}
		out := make(map[string]any, len(x)+1)
		for k, c := range x {
			if k == "x-kubernetes-int-or-string" {
				continue
			}
			out[k] = strictCopy(c)
		}
		if intOrString, _ := x["x-kubernetes-int-or-string"].(bool); intOrString {
			delete(out, "type")
			out["anyOf"] = []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}
		}
		_, hasProps := x["properties"]
		_, hasAdditional := x["additionalProperties"]
		preserve, _ := x["x-kubernetes-preserve-unknown-fields"].(bool)
		if hasProps && !hasAdditional && !preserve {
			out["additionalProperties"] = false
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, c := range x {
			out[i] = strictCopy(c)
		}
		return out
	default:
		return v
	}
}

// addCRD adds the schemas of a CustomResourceDefinition's versions.
func addCRD(d map[string]any, needed map[gvk]bool, schemas map[gvk]map[string]any) error {
	if d["kind"] != "CustomResourceDefinition" {
		return nil
	}
	spec, _ := d["spec"].(map[string]any)
	group, _ := spec["group"].(string)
	names, _ := spec["names"].(map[string]any)
	kind, _ := names["kind"].(string)
	versions, _ := spec["versions"].([]any)
	for _, v := range versions {
		vm, _ := v.(map[string]any)
		name, _ := vm["name"].(string)
		g := gvk{group + "/" + name, kind}
		if !needed[g] {
			continue
		}
		schema, _ := vm["schema"].(map[string]any)
		root, ok := schema["openAPIV3Schema"].(map[string]any)
		if !ok {
			return fmt.Errorf("%s has no openAPIV3Schema", g.kind)
		}
		s := strictCopy(root).(map[string]any)
		// A CRD's schema leaves metadata open; the API server checks it
		// as ObjectMeta. Keep the common fields typed at least.
		if props, ok := s["properties"].(map[string]any); ok {
			props["metadata"] = map[string]any{"type": "object"}
		}
		s["$schema"] = "http://json-schema.org/draft-07/schema#"
		schemas[g] = s
	}
	return nil
}
