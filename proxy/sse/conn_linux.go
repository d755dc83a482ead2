//go:build linux

package sse

import (
	"io"
	"net"
	"syscall"
)

// rawConn returns conn's socket when conn is a plain socket, for writes
// that do not wait and for the poller; nil for anything else (a TLS
// connection, a wrapper), which is written and read through conn.
func rawConn(conn net.Conn) syscall.RawConn {
	var sc syscall.Conn
	switch c := conn.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// writeNow writes what the socket takes of p at once, without waiting:
// n < len(p) with no error means its buffer is full.
func writeNow(raw syscall.RawConn, p []byte) (n int, err error) {
	rerr := raw.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, e := syscall.Write(int(fd), p[n:])
			if m > 0 {
				n += m
			}
			switch {
			case e == syscall.EINTR:
			case e == syscall.EAGAIN:
				return true
			case e != nil:
				err = e
				return true
			case m <= 0:
				err = io.ErrShortWrite
				return true
			}
		}
		return true
	})
	if err == nil {
		err = rerr
	}
	return n, err
}

// epollET is EPOLLET (package syscall spells it as a negative int).
const epollET = 1 << 31

// poller notices clients that went away, for every watched stream at once:
// one epoll set, waited on by one goroutine, which reads what a socket
// that became readable holds (a client says nothing on a stream: only its
// end, or a failure, makes one readable).
type poller struct {
	epfd int
	byID map[uint64]*Stream
}

// watch has the poller notice when st's client goes away; false: it
// cannot, and st needs a reader of its own. w.mu is held.
func (w *Writer) watch(st *Stream) bool {
	if w.poller == nil {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return false
		}
		w.poller = &poller{epfd: fd, byID: map[uint64]*Stream{}}
		go w.poll(w.poller)
	}
	p := w.poller
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(st.id), Pad: int32(st.id >> 32)}
	var err error
	if cerr := st.raw.Control(func(fd uintptr) { err = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev) }); cerr != nil {
		err = cerr
	}
	if err != nil {
		return false
	}
	p.byID[st.id] = st
	return true
}

// unwatch stops watching st, before its connection closes; w.mu is held.
func (w *Writer) unwatch(st *Stream) {
	p := w.poller
	if p == nil || p.byID[st.id] != st {
		return
	}
	delete(p.byID, st.id)
	_ = st.raw.Control(func(fd uintptr) { _ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil) })
}

// pollTimeout: how long the poller waits before it looks whether it still
// watches anything (it ends when it does not).
const pollTimeout = 1000 // ms

// poll is the poller's goroutine.
func (w *Writer) poll(p *poller) {
	events := make([]syscall.EpollEvent, 256)
	var ready []*Stream
	for {
		n, err := syscall.EpollWait(p.epfd, events, pollTimeout)
		if err == syscall.EINTR {
			continue
		}
		w.mu.Lock()
		if err != nil {
			// Not expected: every watched stream gets a reader of its own.
			for _, st := range p.byID {
				go w.readUntilClosed(st)
			}
			clear(p.byID)
		}
		if err != nil || n == 0 && len(p.byID) == 0 {
			w.poller = nil
			w.mu.Unlock()
			_ = syscall.Close(p.epfd)
			return
		}
		ready = ready[:0]
		for _, ev := range events[:n] {
			if st := p.byID[uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32]; st != nil {
				ready = append(ready, st)
			}
		}
		w.mu.Unlock()
		for i, st := range ready {
			if closedNow(st.raw) {
				w.mark(st, gone)
			}
			ready[i] = nil
		}
	}
}

// closedNow reads what the client sent without waiting, dropping it, and
// reports whether the client closed its side or the connection failed.
func closedNow(raw syscall.RawConn) bool {
	var b [64]byte
	closed := false
	err := raw.Read(func(fd uintptr) bool {
		for {
			n, e := syscall.Read(int(fd), b[:])
			switch {
			case e == syscall.EINTR:
			case e == syscall.EAGAIN:
				return true
			case e != nil || n <= 0:
				closed = true
				return true
			}
		}
	})
	return closed || err != nil
}
