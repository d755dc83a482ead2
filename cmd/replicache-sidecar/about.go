package main

// What the binary says about itself: its build (version) and its commands
// (usage).

// version and revision name the build; `make build` and the image set them
// with -ldflags "-X main.version=… -X main.revision=…".
var (
	version  = "dev"
	revision = ""
)

const usage = `Usage: replicache-sidecar [command]

Commands:
  (none)     serve: push, pull, poke streams and pass-through on SIDECAR_LISTEN_ADDR,
             health, readiness and metrics on SIDECAR_ADMIN_ADDR
  check      try the mapping against the live API (replicache-sidecar check --help)
  inspect    show one client group, from a running sidecar's admin listener
             (replicache-sidecar inspect --help)
  version    print the version

Configuration is read from SIDECAR_* environment variables (config.example.env).
`

// orUnknown is s, or "unknown" when the build did not name it.
func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
