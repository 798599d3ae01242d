// Go helper of tests/strict.rs (built there with `go build`, no modules): Go makes its
// system calls itself, so the preload cannot see them; strict mode's filter can.
//
//	goprog splice FILE LEN [MUTATOR ARGS...]  splice LEN bytes of FILE (with an offset
//	     pointer) into stdout, a pipe, with syscall.Splice; then run MUTATOR in a child
//	     process and wait for it
//	goprog writeat|write|truncate|ftruncate|punch FILE  change FILE the Go way: 16 'X'
//	     at 4096 ((*os.File).WriteAt, or Seek + Write), cut at 30000 (os.Truncate,
//	     (*os.File).Truncate), or punch 100..65100 (syscall.Fallocate)
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

func mutate(how, file string) error {
	x := bytes.Repeat([]byte{'X'}, 16)
	if how == "truncate" {
		return os.Truncate(file, 30000)
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	switch how {
	case "writeat":
		_, err = f.WriteAt(x, 4096)
	case "write":
		if _, err = f.Seek(4096, io.SeekStart); err == nil {
			_, err = f.Write(x)
		}
	case "ftruncate":
		err = f.Truncate(30000)
	case "punch":
		const punchHole, keepSize = 0x02, 0x01
		err = syscall.Fallocate(int(f.Fd()), punchHole|keepSize, 100, 65000)
	default:
		err = fmt.Errorf("unknown mutation %q", how)
	}
	return err
}

func splice(file string, n int64, mutator []string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	var off int64
	for off < n {
		// fd 1 is the pipe; f.Fd() keeps f blocking, as the splice wants.
		moved, err := syscall.Splice(int(f.Fd()), &off, 1, nil, int(n-off), 0)
		if err != nil {
			return fmt.Errorf("splice: %w", err)
		}
		if moved == 0 {
			return fmt.Errorf("splice: end of file at %d", off)
		}
	}
	if len(mutator) > 0 {
		cmd := exec.Command(mutator[0], mutator[1:]...)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("mutator: %w", err)
		}
	}
	return nil
}

func main() {
	if len(os.Args) < 3 {
		os.Exit(1)
	}
	var err error
	if os.Args[1] == "splice" && len(os.Args) > 3 {
		n, perr := strconv.ParseInt(os.Args[3], 10, 64)
		if perr != nil {
			os.Exit(1)
		}
		err = splice(os.Args[2], n, os.Args[4:])
	} else {
		err = mutate(os.Args[1], os.Args[2])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "goprog:", err)
		os.Exit(3)
	}
}
