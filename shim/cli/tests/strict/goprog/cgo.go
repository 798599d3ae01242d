//go:build dynamic

// With the tag `dynamic` (and cgo), the helper links the C runtime dynamically: the
// preload then loads into it, but Go's own system calls still bypass it.
package main

import _ "runtime/cgo"
