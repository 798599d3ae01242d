"""A small unittest suite that splices a file into a pipe with os.splice.

Run it under splicecow in detect mode to find the bug it contains:

    splicecow run --mode detect --fail-on-conflict -- \
        python3 examples/detect-pytest/test_splice.py

splice(2) from a file into a pipe does not copy: the pipe keeps references to the
file's page cache. ``test_buggy_*`` change the file (ftruncate / pwrite) *before*
reading the pipe, so the reader may get zeroes or new bytes instead of what was
spliced. ``test_clean_*`` read the pipe first and only then change the file.

The buggy tests do not assert on the data (the suite passes either way, so that
only splicecow's --fail-on-conflict makes the run fail); each test prints one line

    splice-example: test=NAME pid=PID path=PATH corrupted=N

to stdout, N being how many bytes read back differ from what was spliced.
Only the standard library is used (no pytest needed).
"""

import os
import tempfile
import unittest

SIZE = 65536  # one default pipe buffer: the whole splice fits without a reader


def pattern(size):
    """Bytes that are never zero and differ from any pwrite below."""
    return bytes((i * 7 + 1) % 251 + 1 for i in range(size))


class SpliceTest(unittest.TestCase):
    """Each test gets a fresh file holding ``pattern(SIZE)`` and a fresh pipe."""

    def setUp(self):
        fd, self.path = tempfile.mkstemp(prefix="splice-example-", suffix=".dat")
        self.fd = fd
        self.data = pattern(SIZE)
        os.write(self.fd, self.data)
        self.r, self.w = os.pipe()

    def tearDown(self):
        for fd in (self.fd, self.r, self.w):
            os.close(fd)
        os.unlink(self.path)

    def splice_all(self):
        """Splices the whole file into the pipe; nobody reads it yet."""
        moved = 0
        while moved < SIZE:
            n = os.splice(self.fd, self.w, SIZE - moved, offset_src=moved)
            self.assertGreater(n, 0)
            moved += n

    def read_pipe(self):
        """Reads back exactly SIZE bytes from the pipe."""
        out = bytearray()
        while len(out) < SIZE:
            chunk = os.read(self.r, SIZE - len(out))
            self.assertTrue(chunk, "pipe closed early")
            out += chunk
        return bytes(out)

    def say(self, got):
        corrupted = sum(1 for a, b in zip(got, self.data) if a != b)
        print(
            f"splice-example: test={self._testMethodName} pid={os.getpid()} "
            f"path={self.path} corrupted={corrupted}",
            flush=True,
        )
        return corrupted

    # --- the classic bug: change the file while the pipe still holds its pages ---

    def test_buggy_ftruncate(self):
        """Splice, truncate the file, then read the pipe (wrong order)."""
        self.splice_all()
        os.ftruncate(self.fd, 30000)
        self.say(self.read_pipe())  # no assertion: we only exercise the pattern

    def test_buggy_pwrite(self):
        """Splice, overwrite 16 bytes (twice: one conflict), then read (wrong order)."""
        self.splice_all()
        os.pwrite(self.fd, b"X" * 16, 4096)
        os.pwrite(self.fd, b"Y" * 16, 4096)
        self.say(self.read_pipe())  # no assertion: we only exercise the pattern

    # --- the correct order: consume the pipe, then change the file ---

    def test_clean_read_then_change(self):
        """Splice, read the pipe, and only then truncate and overwrite the file."""
        self.splice_all()
        got = self.read_pipe()
        os.ftruncate(self.fd, 30000)
        os.pwrite(self.fd, b"X" * 16, 4096)
        self.assertEqual(self.say(got), 0)
        self.assertEqual(got, self.data)


if __name__ == "__main__":
    unittest.main()
