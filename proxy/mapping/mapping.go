// Package mapping loads the mapping file: how each mutator becomes an API
// call (package mutators) and which GET endpoints make up the client view
// (package clientview). A Mapping is compiled once and is immutable, so a
// reload swaps a whole new one in while running requests keep theirs.
package mapping

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
)

// fileFormat is the mapping file's format. Unknown fields are refused
// (every one is named, see unknownFields) so a typo fails at start instead
// of silently mapping nothing.
type fileFormat struct {
	Mutators   map[string]mutators.Spec `json:"mutators"`
	ClientView []clientview.Source      `json:"clientView"`
}

// Mapping is a loaded, compiled mapping file. It is immutable.
type Mapping struct {
	Mutators *mutators.Set
	View     *clientview.View
	// Sources describes the view's sources, in order.
	Sources []clientview.SourceInfo
	// Hash is the SHA-256 of the file's bytes, to tell versions apart.
	Hash string
}

// maxMappingBytes bounds the mapping file; real ones are a few kilobytes.
const maxMappingBytes = 4 << 20

// Load reads and compiles the mapping file at path. The error lists
// every problem found: it joins one error per problem (errors.Join), each
// naming its mutator or source.
func Load(path string) (*Mapping, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading mapping: %w", err)
	}
	return Parse(raw)
}

// Parse compiles a mapping file's bytes: JSON, or YAML when the
// content does not start with "{".
func Parse(raw []byte) (*Mapping, error) {
	if len(raw) > maxMappingBytes {
		return nil, fmt.Errorf("mapping is larger than %d bytes", maxMappingBytes)
	}
	doc, err := ToJSON(raw, '{')
	if err != nil {
		return nil, fmt.Errorf("mapping is %w", err)
	}
	// Every unknown field, with its place and the name likely meant, then
	// the rest of what is wrong: a typo often causes a second problem (a
	// required field missing), and both are worth seeing at once.
	var generic any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return nil, fmt.Errorf("mapping is not valid: %w", err)
	}
	errs := unknownFields(generic)
	var f fileFormat
	if err := json.Unmarshal(doc, &f); err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf("mapping is not valid: %w", err))...)
	}
	if len(f.Mutators) == 0 && len(f.ClientView) == 0 {
		errs = append(errs, errors.New("mapping has neither mutators nor clientView"))
	}
	muts, err := mutators.Compile(f.Mutators)
	errs = appendFlat(errs, err)
	view, err := clientview.Compile(f.ClientView)
	errs = appendFlat(errs, err)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sum := sha256.Sum256(raw)
	return &Mapping{Mutators: muts, View: view, Sources: view.Sources(), Hash: hex.EncodeToString(sum[:])}, nil
}

// appendFlat appends err to errs, each error it joins on its own (so the
// caller can prefix every line); nil appends nothing.
func appendFlat(errs []error, err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			errs = appendFlat(errs, e)
		}
		return errs
	}
	if err != nil {
		errs = append(errs, err)
	}
	return errs
}

// ToJSON returns a document given as JSON or YAML as JSON: raw itself
// when its content starts with open ('{' for an object, '[' for a list),
// else raw read as YAML. Its error starts "not valid YAML".
func ToJSON(raw []byte, open byte) ([]byte, error) {
	if trimmed := bytes.TrimSpace(raw); len(trimmed) > 0 && trimmed[0] == open {
		return raw, nil
	}
	doc, err := yamlToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	return doc, nil
}

// yamlToJSON re-encodes a YAML document as JSON, so one strict decoder
// checks both formats.
func yamlToJSON(raw []byte) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return json.Marshal(stringKeys(v))
}

// stringKeys turns YAML maps with keys other than strings (outcomes:
// {404: applied} reads 404 as a number) into maps keyed by the keys' text,
// as JSON has them.
func stringKeys(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = stringKeys(e)
		}
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = stringKeys(e)
		}
	}
	return v
}
