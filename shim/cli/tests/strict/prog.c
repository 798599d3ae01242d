/* Statically linked helper of tests/strict.rs (built there with gcc -static).
 *
 *   prog splice FILE LEN [MUTATOR ARGS...]  splice LEN bytes of FILE (with an offset
 *        pointer) into stdout, a pipe; then run MUTATOR in a child process and wait
 *        (exits with the mutator's status when it fails)
 *   prog pwrite|write|ftruncate|truncate|punch FILE   change FILE (16 'X' at 4096, or
 *        cut at 30000, or punch 100..65100)
 *   prog via tee|splice FILE LEN [MUTATOR ARGS...]  splice LEN bytes of FILE into a pipe
 *        of its own, tee or splice them from there into stdout, then run MUTATOR in a
 *        child process and wait
 *   prog marked FILE [MUTATOR ARGS...]  splice bytes 0..32768 of FILE into stdout, write
 *        16 'M' into it, splice bytes 32768..61440, then run MUTATOR (16 pipe buffers)
 *   prog mprotect FILE   map FILE shared read-only, mprotect it writable, store 16 'X'
 *        at 4096 through the mapping
 *   prog map-splice FILE LEN   map FILE shared and writable first, then splice LEN bytes
 *        of it into stdout, then store 16 'X' at 4096 through the mapping
 *   prog dedupe FILE     FIDEDUPERANGE of bytes 4096..8192 from FILE.twin, a copy made
 *        here, into FILE (the same bytes: only the pages change; exit 6: unsupported)
 *   prog fidelity FILE   trapped calls with bad arguments: one "name result errno" line
 *        each (a segment of FILE is live meanwhile)
 *   prog epipe FILE [ignore]   splice FILE and then tee and write into a pipe whose
 *        reader is closed (SIGPIPE ignored with "ignore"): "name result errno" lines,
 *        or death by SIGPIPE at the first
 *   prog interleave FILE N   N times: splice page i%15 of FILE into stdout, then write
 *        the 8-byte marker "M%07d" of i into it
 *   prog pwrite-loop FILE N   N 64-byte pwrites; prints the nanoseconds per call
 *   prog pending DIR     fill a pipe, then a blocking splice into it; the result is
 *        reported as the directory DIR/result-<errno> (mkdir is not trapped: once the
 *        supervisor is gone every trapped call, write included, fails)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sys/sendfile.h>

static void report(const char *name, long r) {
    printf("%s %ld %d\n", name, r, r < 0 ? errno : 0);
    fflush(stdout);
}

/* A twin of FILE with the same bytes, then bytes 4096..8192 of FILE deduplicated
 * against it: the kernel drops FILE's pages of that range from the page cache (it zeroes
 * the part of a large folio it cannot split off, which a pipe may still show). */
static int dedupe(const char *file) {
    static char bytes[1 << 20];
    int fd = open(file, O_RDWR);
    char twin[4096];
    snprintf(twin, sizeof twin, "%s.twin", file);
    int t = open(twin, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || t < 0) return 2;
    ssize_t n = read(fd, bytes, sizeof bytes);
    if (n < 8192 || write(t, bytes, n) != n || fsync(t)) return 3;
    struct {
        struct file_dedupe_range range;
        struct file_dedupe_range_info info;
    } req;
    memset(&req, 0, sizeof req);
    req.range.src_offset = 4096;
    req.range.src_length = 4096;
    req.range.dest_count = 1;
    req.info.dest_fd = fd;
    req.info.dest_offset = 4096;
    if (ioctl(t, FIDEDUPERANGE, &req))
        return errno == EOPNOTSUPP || errno == EINVAL || errno == ENOTTY ? 6 : 3;
    return req.info.status == FILE_DEDUPE_RANGE_SAME && req.info.bytes_deduped == 4096 ? 0 : 3;
}

static int mutate(const char *how, const char *file) {
    char x[16];
    memset(x, 'X', sizeof x);
    if (!strcmp(how, "dedupe")) return dedupe(file);
    if (!strcmp(how, "mprotect")) {
        int fd = open(file, O_RDWR);
        char *p = fd < 0 ? MAP_FAILED : mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return 2;
        if (mprotect(p, 65536, PROT_READ | PROT_WRITE)) return 3;
        memset(p + 4096, 'X', 16);
        return munmap(p, 65536) ? 3 : 0;
    }
    int fd = open(file, O_RDWR);
    if (fd < 0) return 2;
    if (!strcmp(how, "pwrite")) return pwrite(fd, x, 16, 4096) == 16 ? 0 : 3;
    if (!strcmp(how, "write")) {
        lseek(fd, 4096, SEEK_SET);
        return write(fd, x, 16) == 16 ? 0 : 3;
    }
    if (!strcmp(how, "ftruncate")) return ftruncate(fd, 30000) ? 3 : 0;
    if (!strcmp(how, "truncate")) return truncate(file, 30000) ? 3 : 0;
    if (!strcmp(how, "punch"))
        return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 65000) ? 3 : 0;
    return 4;
}

static int fidelity(const char *file) {
    int fd = open(file, O_RDWR);
    int keep[2], p[2];
    if (fd < 0 || pipe(keep) || pipe(p)) return 2;
    loff_t off = 0;
    /* A live segment, so the supervisor's slow paths run for the calls below. */
    report("splice_live", splice(fd, &off, keep[1], NULL, 4096, 0));
    char buf[16] = {0};
    report("write_badfd", write(999, buf, 16));
    report("write_badptr", write(fd, (void *)16, 16));
    report("pwrite_badfd", pwrite(-1, buf, 16, 0));
    report("pwrite_negoff", pwrite(fd, buf, 16, -5));
    report("pwrite_badptr", pwrite(fd, (void *)16, 16, 0));
    struct iovec iov = {buf, 16};
    report("writev_badiov", writev(fd, (void *)16, 1));
    report("pwritev_badfd", pwritev(999, &iov, 1, 0));
    report("ftruncate_badfd", ftruncate(999, 0));
    report("ftruncate_neg", ftruncate(fd, -1));
    report("truncate_badptr", truncate((const char *)16, 0));
    report("truncate_missing", truncate("/nonexistent/x", 0));
    report("open_trunc_missing", open("/nonexistent/x", O_WRONLY | O_TRUNC));
    report("open_trunc_badptr", syscall(SYS_open, (const char *)16, O_WRONLY | O_TRUNC));
    report("fallocate_badfd", fallocate(999, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1));
    report("copy_file_range_badptr", copy_file_range(fd, NULL, fd, (loff_t *)16, 16, 0));
    report("splice_badfd", splice(999, NULL, p[1], NULL, 16, 0));
    report("splice_badoff", splice(fd, (loff_t *)16, p[1], NULL, 16, 0));
    loff_t neg = -1;
    report("splice_negoff", splice(fd, &neg, p[1], NULL, 16, 0));
    report("splice_readend", splice(fd, NULL, p[0], NULL, 16, 0));
    report("splice_badflags", splice(fd, NULL, p[1], NULL, 16, 0x100));
    loff_t past = 1 << 30;
    report("splice_pasteof", splice(fd, &past, p[1], NULL, 16, 0));
    report("splice_offset_moved", (long)past);
    off_t soff = 0;
    report("sendfile_pipe", sendfile(p[1], fd, &soff, 100));
    report("sendfile_offset", (long)soff);
    report("sendfile_badfd", sendfile(p[1], 999, NULL, 100));
    report("lseek_after", lseek(fd, 0, SEEK_CUR));
    report("splice_cursor", splice(fd, NULL, p[1], NULL, 50, 0));
    report("lseek_moved", lseek(fd, 0, SEEK_CUR));
    int full[2];
    if (pipe2(full, O_NONBLOCK)) return 2;
    fcntl(full[1], F_SETPIPE_SZ, 4096);
    report("fill", write(full[1], (char[4096]){0}, 4096));
    report("splice_full_nonblock", splice(fd, NULL, full[1], NULL, 16, 0));
    report("splice_full_flag", splice(fd, NULL, keep[1], NULL, 16, SPLICE_F_NONBLOCK) >= 0);
    int empty[2];
    if (pipe(empty)) return 2;
    report("tee_notpipe", tee(fd, p[1], 16, 0));
    report("tee_same", tee(keep[0], keep[1], 16, 0));
    report("tee_empty_nonblock", tee(empty[0], p[1], 16, SPLICE_F_NONBLOCK));
    report("tee_badflags", tee(keep[0], p[1], 16, 0x100));
    report("tee_live", tee(keep[0], p[1], 100, 0));
    loff_t poff = 0;
    report("splice_pipe_offset", splice(keep[0], &poff, p[1], NULL, 16, 0));
    report("splice_pipes", splice(keep[0], NULL, p[1], NULL, 50, 0));
    report("splice_pipes_empty", splice(empty[0], NULL, p[1], NULL, 50, SPLICE_F_NONBLOCK));
    report("io_uring_setup", syscall(425, 1, NULL));
    return 0;
}

static int pending(const char *dir) {
    int p[2];
    if (pipe(p)) return 2;
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    static char page[4096];
    if (write(p[1], page, sizeof page) != sizeof page) return 3;
    char file[4096];
    snprintf(file, sizeof file, "%s/data", dir);
    int fd = open(file, O_RDONLY);
    if (fd < 0) return 4;
    char ready[4096];
    snprintf(ready, sizeof ready, "%s/waiting", dir);
    mkdir(ready, 0700);
    long r = splice(fd, NULL, p[1], NULL, 16, 0); /* blocks: nobody reads */
    char out[4096];
    snprintf(out, sizeof out, "%s/result-%ld-%d", dir, r, r < 0 ? errno : 0);
    mkdir(out, 0700);
    return 0;
}

/* Splices LEN bytes of fd (from offset 0, through an offset pointer) into stdout. */
static int splice_out(int fd, size_t len) {
    loff_t off = 0;
    while (off < (loff_t)len) {
        ssize_t n = splice(fd, &off, 1, NULL, len - off, 0);
        if (n <= 0) return 3;
    }
    return 0;
}

static int map_splice(const char *file, size_t len) {
    int fd = open(file, O_RDWR);
    char *p = fd < 0 ? MAP_FAILED : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return 2;
    if (splice_out(fd, len)) return 3;
    memset(p + 4096, 'X', 16);
    return munmap(p, len) ? 3 : 0;
}

/* Through a pipe of its own: FILE into it, then tee or splice into stdout. */
static int via(const char *how, const char *file, size_t len) {
    int fd = open(file, O_RDONLY), p[2];
    if (fd < 0 || pipe(p)) return 2;
    fcntl(p[1], F_SETPIPE_SZ, (int)len);
    loff_t off = 0;
    while (off < (loff_t)len) {
        ssize_t n = splice(fd, &off, p[1], NULL, len - off, 0);
        if (n <= 0) return 3;
    }
    size_t moved = 0;
    while (moved < len) {
        ssize_t n = !strcmp(how, "tee") ? tee(p[0], 1, len - moved, 0)
                                        : splice(p[0], NULL, 1, NULL, len - moved, 0);
        if (n <= 0) return 3;
        moved += n;
        if (!strcmp(how, "tee")) break; /* tee does not consume: once is all */
    }
    return moved == len ? 0 : 4;
}

static int marked_splice(const char *file) {
    int fd = open(file, O_RDONLY);
    if (fd < 0) return 2;
    loff_t off = 0;
    while (off < 32768)
        if (splice(fd, &off, 1, NULL, 32768 - off, 0) <= 0) return 3;
    if (write(1, "MMMMMMMMMMMMMMMM", 16) != 16) return 3;
    while (off < 61440)
        if (splice(fd, &off, 1, NULL, 61440 - off, 0) <= 0) return 3;
    return 0;
}

static int pwrite_loop(const char *file, long n) {
    int fd = open(file, O_RDWR);
    if (fd < 0) return 2;
    char buf[64] = {0};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        if (pwrite(fd, buf, 64, 0) != 64) return 3;
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    printf("%ld\n", ns / n);
    return 0;
}

static int epipe(const char *file, int ignore) {
    if (ignore) signal(SIGPIPE, SIG_IGN);
    int fd = open(file, O_RDONLY);
    int p[2], q[2];
    if (fd < 0 || pipe(p) || pipe(q)) return 2;
    close(p[0]);
    ssize_t r = splice(fd, NULL, p[1], NULL, 4096, 0);
    printf("splice %zd %d\n", r, r < 0 ? errno : 0);
    fflush(stdout);
    if (write(q[1], "data", 4) != 4) return 3;
    r = tee(q[0], p[1], 4, 0);
    printf("tee %zd %d\n", r, r < 0 ? errno : 0);
    fflush(stdout);
    r = write(p[1], "data", 4);
    printf("write %zd %d\n", r, r < 0 ? errno : 0);
    return 0;
}

static int interleave(const char *file, long n) {
    int fd = open(file, O_RDONLY);
    if (fd < 0) return 2;
    for (long i = 0; i < n; i++) {
        loff_t off = (i % 15) * 4096;
        for (size_t left = 4096; left;) {
            ssize_t r = splice(fd, &off, 1, NULL, left, 0);
            if (r <= 0) return 3;
            left -= r;
        }
        char m[9];
        snprintf(m, sizeof m, "M%07ld", i);
        if (write(1, m, 8) != 8) return 4;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 1;
    if (!strcmp(argv[1], "pwrite-loop") && argc > 3) return pwrite_loop(argv[2], atol(argv[3]));
    if (!strcmp(argv[1], "fidelity")) return fidelity(argv[2]);
    if (!strcmp(argv[1], "pending")) return pending(argv[2]);
    if (!strcmp(argv[1], "interleave") && argc > 3) return interleave(argv[2], atol(argv[3]));
    if (!strcmp(argv[1], "epipe")) return epipe(argv[2], argc > 3 && !strcmp(argv[3], "ignore"));
    int marked = !strcmp(argv[1], "marked");
    if ((!strcmp(argv[1], "via") && argc > 4) || marked) {
        int r = marked ? marked_splice(argv[2]) : via(argv[2], argv[3], strtoul(argv[4], NULL, 10));
        int m = marked ? 3 : 5;
        if (r || argc <= m) return r;
        pid_t c = fork();
        if (c == 0) {
            execv(argv[m], argv + m);
            _exit(127);
        }
        int st;
        waitpid(c, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 5;
    }
    if (!strcmp(argv[1], "map-splice") && argc > 3)
        return map_splice(argv[2], strtoul(argv[3], NULL, 10));
    if (strcmp(argv[1], "splice")) return mutate(argv[1], argv[2]);
    if (argc < 4) return 1;
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) return 2;
    if (splice_out(fd, strtoul(argv[3], NULL, 10))) return 3;
    if (argc > 4) {
        pid_t c = fork();
        if (c == 0) {
            execv(argv[4], argv + 4);
            _exit(127);
        }
        int st;
        waitpid(c, &st, 0);
        if (!WIFEXITED(st)) return 5;
        if (WEXITSTATUS(st)) return WEXITSTATUS(st);
    }
    return 0;
}
