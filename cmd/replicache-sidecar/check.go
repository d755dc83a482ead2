package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/replicache-sidecar/replicache-sidecar/proxy"
	sidecarcheck "github.com/replicache-sidecar/replicache-sidecar/proxy/check"
)

// Exit statuses of `replicache-sidecar check`.
const (
	checkClean    = 0 // nothing to fix
	checkProblems = 1 // problems (the configuration's included)
	checkFailed   = 2 // it could not run: bad flags, the API unreachable
)

const checkUsage = `Usage: replicache-sidecar check [flags]

Tries the mapping against the live API before any client syncs: reads the
same SIDECAR_* settings and mapping as the server (every configuration
problem at once; no database needed), fetches each view source as the given
user would see it, following pagination as a pull does, tries the delta
read of each source with changes, and renders each mutator's examples, in
the order given. Nothing is written unless --write is given.

An example meant to be refused says so: --example deleteTodo:rejected='{…}'
(or :404, :4xx), or "expect" in an examples file, a JSON or YAML list of
{"mutator": …, "args": {…}, "expect": …}.

Exit status: 0 nothing to fix (warnings are printed, and do not fail it),
1 problems, 2 it could not run.

Flags:
`

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ", ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// exampleFlag is --example or --examples: each adds to one list, in the
// order given on the command line.
type exampleFlag struct {
	file bool
	list *[]exampleArg
}

type exampleArg struct {
	file  bool
	value string
}

func (e exampleFlag) String() string { return "" }
func (e exampleFlag) Set(v string) error {
	*e.list = append(*e.list, exampleArg{e.file, v})
	return nil
}

// runCheck is `replicache-sidecar check`; it returns the exit status.
func runCheck(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		_, _ = io.WriteString(stderr, checkUsage)
		fs.PrintDefaults()
	}
	var headers multiFlag
	var examples []exampleArg
	fs.Var(&headers, "header", "a header the client would send, `'Name: value'` (repeatable), e.g. 'Authorization: Bearer …'")
	user := fs.String("user", "", "the user `id`, when users are named by SIDECAR_USER_ID_HEADER")
	fs.Var(exampleFlag{list: &examples}, "example", "a mutator's example args, `name[:expect]='{json}'` (repeatable; sent in the order given)")
	fs.Var(exampleFlag{file: true, list: &examples}, "examples", "a `file` of examples: a JSON or YAML list of {mutator, args, expect} (repeatable)")
	write := fs.Bool("write", false, "send each example's mutation to the API once (it changes the API's data)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return checkFailed
	}
	if fs.NArg() > 0 {
		_, _ = fmt.Fprintf(stderr, "check: unexpected argument %q\n", fs.Arg(0))
		return checkFailed
	}
	o := sidecarcheck.Options{Header: http.Header{}, User: *user, Write: *write}
	for i, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" || strings.ContainsAny(strings.TrimSpace(name), " \t") {
			// Not echoed: a mistyped header is often a credential.
			_, _ = fmt.Fprintf(stderr, "check: --header number %d is not 'Name: value' (its text is not shown)\n", i+1)
			return checkFailed
		}
		o.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	for _, e := range examples {
		if !e.file {
			ex, err := sidecarcheck.ParseExample(e.value)
			if err != nil {
				_, _ = fmt.Fprintf(stderr, "check: --example %q: %v\n", e.value, err)
				return checkFailed
			}
			o.Examples = append(o.Examples, ex)
			continue
		}
		raw, err := os.ReadFile(e.value)
		if err == nil {
			var list []sidecarcheck.Example
			if list, err = sidecarcheck.ParseExamples(raw); err == nil {
				o.Examples = append(o.Examples, list...)
				continue
			}
		}
		_, _ = fmt.Fprintf(stderr, "check: --examples %s:\n  %s\n", e.value, strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return checkFailed
	}
	env = withoutDatabase(env)
	cfg, err := proxy.LoadConfig(env)
	if err != nil {
		if *asJSON {
			var problems []string
			for _, line := range strings.Split(err.Error(), "\n")[1:] { // after "invalid configuration:"
				problems = append(problems, strings.TrimSpace(line))
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(map[string]any{"configurationProblems": problems, "problems": len(problems)})
		} else {
			_, _ = fmt.Fprintf(stdout, "%v\n\nThe configuration has problems (fix them first; nothing was fetched).\n", err)
		}
		return checkProblems
	}
	rep, err := sidecarcheck.Run(ctx, cfg, o)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "check:", err)
		return checkFailed
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return checkFailed
		}
	} else if err := printCheck(stdout, rep, *write); err != nil {
		return checkFailed
	}
	if rep.Problems > 0 {
		return checkProblems
	}
	return checkClean
}

// withoutDatabase lets the configuration load without a database URL: the
// check needs none.
func withoutDatabase(env map[string]string) map[string]string {
	out := make(map[string]string, len(env)+1)
	for k, v := range env {
		out[k] = v
	}
	if out["SIDECAR_DATABASE_URL"] == "" {
		out["SIDECAR_DATABASE_URL"] = "postgres://unused.invalid/check"
	}
	return out
}

func printCheck(w io.Writer, rep *sidecarcheck.Report, write bool) error {
	var b strings.Builder
	user := rep.User
	if user == "" {
		user = "(anonymous)"
	}
	fmt.Fprintf(&b, "Checked the mapping against %s as user %s in %.0f ms.\n", rep.Upstream, user, rep.TookMs)
	for _, p := range rep.Identity {
		fmt.Fprintf(&b, "  ✗ %s\n", p)
	}
	if len(rep.Sources) > 0 {
		b.WriteString("\nView sources (fetched as a pull would)\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "  SOURCE\tPAGINATION\tPAGES\tENTITIES\tSAMPLE KEYS\tTIME")
		for _, s := range rep.Sources {
			_, _ = fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\t%.1f ms\n", s.Path, s.Pagination, s.Pages, s.Entities, strings.Join(s.SampleKeys, ", "), s.TookMs)
		}
		_ = tw.Flush()
		for _, s := range rep.Sources {
			for _, p := range s.Problems {
				fmt.Fprintf(&b, "  ✗ %s: %s\n", s.Path, p)
			}
			for _, w := range s.Warnings {
				fmt.Fprintf(&b, "  ! %s: %s\n", s.Path, w)
			}
			if s.Changes != "" {
				fmt.Fprintf(&b, "  ✓ %s: %s\n", s.Path, s.Changes)
			}
		}
	}
	if len(rep.Mutators) > 0 {
		b.WriteString("\nMutators")
		if write {
			b.WriteString(" (each example sent once, in the order given)")
		}
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "  MUTATOR\tMETHOD\tPATH\tOUTCOME")
		for _, m := range rep.Mutators {
			outcome := m.Outcome
			switch {
			case !m.Example:
				outcome = "no example (--example " + m.Name + "='{…}')"
			case outcome == "":
				outcome = "rendered, not sent (--write sends it)"
			case m.Status != 0:
				outcome = fmt.Sprintf("%s (%d)", outcome, m.Status)
			}
			if m.ServerID != "" {
				outcome += ", the API's id " + m.ServerID
			}
			if m.Expect != "" {
				outcome += ", expected " + m.Expect
			}
			_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", m.Name, m.Method, m.Path, outcome)
		}
		_ = tw.Flush()
		for _, m := range rep.Mutators {
			for _, p := range m.Problems {
				fmt.Fprintf(&b, "  ✗ %s: %s\n", m.Name, p)
			}
		}
	}
	for _, p := range rep.View {
		fmt.Fprintf(&b, "  ✗ the whole view, as a pull fetches it: %s\n", p)
	}
	for _, n := range rep.Unknown {
		fmt.Fprintf(&b, "  ✗ --example %s: the mapping has no such mutator\n", n)
	}
	b.WriteString("\n" + summary(rep.Problems, rep.Warnings) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// summary is the report's last line.
func summary(problems, warnings int) string {
	plural := func(n int, one, many string) string {
		if n == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %s", n, many)
	}
	switch {
	case problems == 0 && warnings == 0:
		return "Nothing to fix."
	case problems == 0:
		return fmt.Sprintf("No problems, but %s (!): what they name was not verified, or may go wrong; read them before relying on this check.",
			plural(warnings, "warning", "warnings"))
	case warnings == 0:
		return plural(problems, "problem", "problems") + " to fix."
	}
	return plural(problems, "problem", "problems") + " to fix. " + plural(warnings, "warning", "warnings") + " (!) to read."
}
