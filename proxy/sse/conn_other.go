//go:build !linux

package sse

import (
	"errors"
	"net"
	"syscall"
)

// Elsewhere than on Linux every stream is written through its connection,
// and has a reader of its own.

func rawConn(net.Conn) syscall.RawConn { return nil }

func writeNow(syscall.RawConn, []byte) (int, error) { return 0, errors.ErrUnsupported }

type poller struct{}

func (w *Writer) watch(*Stream) bool { return false }

func (w *Writer) unwatch(*Stream) {}
