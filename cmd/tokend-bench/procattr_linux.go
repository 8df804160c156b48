package main

import "syscall"

// childAttr makes the kernel terminate a child if the harness dies without
// stopping it (SIGKILL, a crash).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
