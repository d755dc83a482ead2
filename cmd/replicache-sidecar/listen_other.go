//go:build !linux

package main

import (
	"syscall"
	"time"
)

// setUserTimeout: TCP_USER_TIMEOUT is Linux's; elsewhere keep-alive alone
// finds dead peers (idle ones only).
func setUserTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}

// openFilesLimit: not checked elsewhere than on Linux.
func openFilesLimit() (uint64, bool) { return 0, false }
