package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/inspection"
)

// Exit statuses of `replicache-sidecar inspect`.
const (
	inspectShown   = 0 // the group is shown
	inspectUnknown = 1 // the sidecar does not know the group
	inspectFailed  = 2 // it could not run: bad flags, the admin listener unreachable or failing
)

const inspectUsage = `Usage: replicache-sidecar inspect [flags] GROUP

Shows one client group as the sidecar keeps it, for when a user says "my edit
vanished": its user, clients and their last mutation ids, the mutations still
pending, its view record and sources, its poke streams, its rejections, and
its recent history (each mutation's outcome with the API's status, and the
pulls that changed what its clients hold, with their cookies).

It asks the admin listener of a running sidecar (GET /groups/GROUP), which
reads the sidecar's database: any replica shows the same group, but poke
streams are counted on the replica that answers. Run it where that listener
is reachable, e.g. kubectl exec deploy/APP -c replicache-sidecar --
replicache-sidecar inspect GROUP.

Exit status: 0 shown, 1 no such group, 2 it could not run.

Flags:
`

// runInspect is `replicache-sidecar inspect`; it returns the exit status.
func runInspect(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		_, _ = io.WriteString(stderr, inspectUsage)
		fs.PrintDefaults()
	}
	admin := fs.String("admin", "", "the admin listener's `URL` (default: from SIDECAR_ADMIN_ADDR, as the sidecar listens on it)")
	asJSON := fs.Bool("json", false, "print the endpoint's JSON as it is")
	timeout := fs.Duration("timeout", 15*time.Second, "give up after this long")
	// Flags may follow the group too (inspect GROUP --json).
	var groups []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return inspectFailed
		}
		if fs.NArg() == 0 {
			break
		}
		groups, rest = append(groups, fs.Arg(0)), fs.Args()[1:]
	}
	if len(groups) != 1 {
		_, _ = fmt.Fprintln(stderr, "inspect: name one client group (its clientGroupID)")
		fs.Usage()
		return inspectFailed
	}
	base := *admin
	if base == "" {
		base = adminURL(env["SIDECAR_ADMIN_ADDR"])
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		_, _ = fmt.Fprintf(stderr, "inspect: --admin %q is not an http(s) URL\n", base)
		return inspectFailed
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	raw, status, err := fetchGroup(ctx, strings.TrimRight(base, "/")+"/groups/"+url.PathEscape(groups[0]))
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "inspect: asking the admin listener at %s: %v\n", base, err)
		return inspectFailed
	}
	if status != http.StatusOK {
		var p struct{ Error, Message string }
		if json.Unmarshal(raw, &p) != nil || p.Message == "" {
			p.Message = strings.TrimSpace(string(raw))
		}
		_, _ = fmt.Fprintf(stderr, "inspect: %s answered %d: %s\n", base, status, p.Message)
		if status == http.StatusNotFound && p.Error == "NotFound" {
			return inspectUnknown
		}
		return inspectFailed
	}
	if *asJSON {
		_, err = stdout.Write(append(raw, '\n'))
		if err != nil {
			return inspectFailed
		}
		return inspectShown
	}
	var rep inspection.Group
	if err := json.Unmarshal(raw, &rep); err != nil {
		_, _ = fmt.Fprintf(stderr, "inspect: %s answered what is not a group report: %v\n", base, err)
		return inspectFailed
	}
	if _, err := io.WriteString(stdout, renderGroup(rep, time.Now())); err != nil {
		return inspectFailed
	}
	return inspectShown
}

// adminURL is the URL of an admin listener at addr (SIDECAR_ADMIN_ADDR, as
// the sidecar listens on it): a host left out or unspecified (":9090",
// "0.0.0.0:9090") is this host. addr may be a URL already.
func adminURL(addr string) string {
	if addr == "" {
		addr = ":9090" // the sidecar's default
	}
	if strings.Contains(addr, "://") {
		return addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr // said as it is, refused by the URL check if wrong
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// fetchGroup GETs url and returns the answer's body (at most 16 MiB) and
// status.
func fetchGroup(ctx context.Context, url string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, 0, errors.Join(errors.New("reading the answer"), err)
	}
	return raw, resp.StatusCode, nil
}

// renderGroup is the report for people: sections in the order an
// operator asks "where did the edit go?".
func renderGroup(rep inspection.Group, now time.Time) string {
	var b strings.Builder
	when := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z") + " (" + ago(now.Sub(t)) + ")"
	}
	user := rep.User
	if user == "" {
		user = "(none: single-tenant)"
	}
	fmt.Fprintf(&b, "client group %s\n", rep.ClientGroupID)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintf(tw, "  user\t%s\n", user)
	_, _ = fmt.Fprintf(tw, "  created\t%s\n", when(rep.CreatedAt))
	_, _ = fmt.Fprintf(tw, "  last used\t%s\n", when(rep.LastUsedAt))
	if !rep.DeletedAt.IsZero() {
		_, _ = fmt.Fprintf(tw, "  DELETED\t%s: idle past SIDECAR_CLIENT_GROUP_TTL; its clients start over\n", when(rep.DeletedAt))
	}
	_, _ = fmt.Fprintf(tw, "  cookie order\t%d\n", rep.CookieOrder)
	_ = tw.Flush()

	fmt.Fprintf(&b, "\nclients (%d)\n", len(rep.Clients))
	if len(rep.Clients) > 0 {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "  CLIENT\tLAST MUTATION\tUPDATED")
		for _, c := range rep.Clients {
			_, _ = fmt.Fprintf(tw, "  %s\t%d\t%s\n", c.ClientID, c.LastMutationID, when(c.UpdatedAt))
		}
		_ = tw.Flush()
	}

	fmt.Fprintf(&b, "\npending mutations (%d): the API answered with a retryable status; kept and sent again\n", len(rep.Pending))
	if len(rep.Pending) > 0 {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "  MUTATION\tLAST STATUS\tANSWERS (TOWARD GIVING UP / NOT)\tFIRST\tLAST")
		for _, p := range rep.Pending {
			_, _ = fmt.Fprintf(tw, "  %s/%d\t%d\t%d / %d\t%s\t%s\n", p.ClientID, p.MutationID, p.LastStatus, p.Counted, p.Uncounted,
				when(p.FirstAt), when(p.LastAt))
		}
		_ = tw.Flush()
	}

	r := rep.Record
	b.WriteString("\nview record ")
	if r.ID == "" {
		b.WriteString("none yet (no pull in diff mode)\n")
	} else {
		fmt.Fprintf(&b, "%s: version %d (diffs from %d), %d entries, %d removals remembered, %s", r.ID, r.Version, r.MinVersion,
			r.Entries, r.Removed, size(r.Bytes))
		if r.Evicted {
			b.WriteString(", EVICTED (SIDECAR_MAX_VIEW_RECORDS_PER_USER): the next pull answers a reset")
		}
		b.WriteString("\n")
	}
	if len(r.Sources) > 0 {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "  SOURCE\tREAD\tLAST READ\tLAST FULL READ\tWATERMARK")
		for _, s := range r.Sources {
			path, mode := s.Path, s.Mode
			if path == "" {
				path, mode = "(fingerprint "+s.Fingerprint+")", "no longer mapped"
			}
			_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", path, mode, when(s.ReadAt), when(s.FullAt), orDash(s.Watermark))
		}
		_ = tw.Flush()
	}

	fmt.Fprintf(&b, "\npoke streams naming the group: %d open on replica %s (each replica counts its own)\n",
		rep.PokeStreams.Open, orDash(rep.PokeStreams.Replica))

	fmt.Fprintf(&b, "\nrejections (%d, newest first)\n", len(rep.Rejections))
	for _, x := range rep.Rejections {
		status := "refused by the mapping"
		if x.Status != 0 {
			status = fmt.Sprintf("%d", x.Status)
		}
		fmt.Fprintf(&b, "  %s  %s/%d %s  %s: %s\n", when(x.At), x.ClientID, x.MutationID, x.Mutator, status, x.Reason)
		if x.Body != "" {
			fmt.Fprintf(&b, "      the API answered: %s\n", oneLine(x.Body, 200))
		}
	}

	fmt.Fprintf(&b, "\nhistory (%d events, newest first; at most %d kept)\n", len(rep.History), rep.HistoryKept)
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, e := range rep.History {
		_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\n", e.At.UTC().Format("2006-01-02 15:04:05.000Z"), e.Kind, describeEvent(e))
	}
	_ = tw.Flush()
	return b.String()
}

// describeEvent says what one history event was.
func describeEvent(e inspection.Event) string {
	if e.Kind == "pull" {
		n := func(p *int) int {
			if p == nil {
				return 0
			}
			return *p
		}
		switch e.Outcome {
		case "lost":
			return "ClientStateNotFound: the client's cookie is from another database or a lost history; it starts over"
		case "reset":
			return fmt.Sprintf("reset: cookie %d, version %d, %d entries put", e.CookieOrder, e.Version, n(e.Puts))
		}
		since := int64(0)
		if e.Since != nil {
			since = *e.Since
		}
		return fmt.Sprintf("diff: cookie %d, version %d → %d, %d put, %d deleted", e.CookieOrder, since, e.Version, n(e.Puts), n(e.Dels))
	}
	s := fmt.Sprintf("%s/%d %s: %s", e.ClientID, e.MutationID, orDash(e.Mutator), e.Outcome)
	if e.Status != 0 {
		s += fmt.Sprintf(" (API %d)", e.Status)
	}
	switch {
	case e.Outcome == "pending" && e.Counted != nil && *e.Counted:
		s += ", counts toward giving up"
	case e.Outcome == "pending":
		s += ", not counted toward giving up (the API failing for everyone)"
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

func ago(d time.Duration) string {
	switch {
	case d < 0:
		return "in the future by this clock"
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine shows text on one line, at most max bytes of it.
func oneLine(text string, max int) string {
	text = strings.Join(strings.Fields(text), " ")
	if len(text) > max {
		cut := max
		for cut > 0 && text[cut]&0xC0 == 0x80 {
			cut--
		}
		text = text[:cut] + "…"
	}
	return text
}
