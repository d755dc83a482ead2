// Command devpg runs a command with a throwaway Postgres: it creates a
// cluster in a temporary directory, starts it on a free loopback port, runs
// the command with DATABASE_URL and SIDECAR_DATABASE_URL pointing at it, then
// stops the cluster and deletes its files. When either variable is already
// set, it only copies it to the other and runs the command.
//
// Usage: devpg [-q] -- command [args...]
//
// As root it runs Postgres as the "postgres" user (Postgres refuses root).
// The cluster trades durability for speed (fsync off): it is for tests and
// demos only.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/replicache-sidecar/replicache-sidecar/cmd/internal/pgcluster"
)

func main() {
	quiet := flag.Bool("q", false, "print nothing but errors")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: devpg [-q] -- command [args...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	code, err := run(flag.Args(), *quiet)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devpg:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(args []string, quiet bool) (int, error) {
	for _, k := range []string{"SIDECAR_DATABASE_URL", "DATABASE_URL"} {
		if url := os.Getenv(k); url != "" {
			return runCommand(args, url)
		}
	}
	c, err := pgcluster.New()
	if err != nil {
		return 1, err
	}
	defer c.Close()
	if !quiet {
		fmt.Fprintf(os.Stderr, "devpg: throwaway Postgres at %s (removed on exit)\n", c.URL())
	}
	return runCommand(args, c.URL())
}

// runCommand runs args with the database URL in the environment, passing
// SIGINT and SIGTERM on, and returns its exit code.
func runCommand(args []string, url string) (int, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url, "SIDECAR_DATABASE_URL="+url)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 127, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-done:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exit.ExitCode(), nil
			}
			return 0, err
		}
	}
}
