/* Statically linked helper of tests/strict.rs (built there with gcc -static -pthread).
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
 *   prog signals FILE    blocking splices, sendfiles and writes (also into a pipe that
 *        holds spliced bytes) into a full pipe that a
 *        timer signal interrupts (also with a second thread in the process), with and
 *        without SA_RESTART (a child empties the pipe later for the restarted ones):
 *        one "name result errno" line each, with the offsets and handler counts
 *   prog storm FILE      with a SA_RESTART timer signal every 37 us: 3000 splices of 4096
 *        bytes of FILE (offset pointer) into an empty pipe, each read out and checked,
 *        and 3000 pwrites; counts what went wrong (a splice moving its bytes twice, a
 *        pwrite failing)
 *   prog forks FILE N    splice FILE into stdout, then N children at once each splice
 *        640 bytes of it (at 640*i) into a pipe of its own and write 16 'X' into that
 *        piece (at 640*i+100); then the children's pipes are copied to stdout in order
 *   prog threads FILE    splice FILE into stdout, then 8 threads at once each write 'X'
 *        (pwrite, write, punch: 16 bytes every 256) all over their eighth of FILE
 *   prog epipe FILE [ignore]   splice FILE and then tee and write into a pipe whose
 *        reader is closed (SIGPIPE ignored with "ignore"): "name result errno" lines,
 *        or death by SIGPIPE at the first
 *   prog interleave FILE N   N times: splice page i%15 of FILE into stdout, then write
 *        the 8-byte marker "M%07d" of i into it
 *   prog pwrite-loop FILE N   N 64-byte pwrites; prints the nanoseconds per call
 *   prog write-loop FILE N    N 1 MiB pwrites; prints the nanoseconds per call
 *   prog splice-loop FILE N   N times: splice FILE (1 MiB chunks) into a 1 MiB pipe and
 *        read it out; prints the nanoseconds per MiB
 *   prog pending DIR     fill a pipe, then a blocking splice into it; the result is
 *        reported as the directory DIR/result-<errno> (mkdir is not trapped: once the
 *        supervisor is gone every trapped call, write included, fails)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
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

static volatile sig_atomic_t caught;
static void on_alarm(int sig) { (void)sig; caught++; }

/* One SIGALRM after ms milliseconds, handled with or without SA_RESTART. */
static void alarm_in(int ms, int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval t = {{0, 0}, {0, ms * 1000}};
    setitimer(ITIMER_REAL, &t, NULL);
}

/* A pipe of 4096 bytes, full. */
static int full_pipe(int p[2]) {
    if (pipe(p)) return -1;
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    static char page[4096];
    return write(p[1], page, sizeof page) == sizeof page ? 0 : -1;
}

/* A child that empties pipe p after ms milliseconds, until the writer closes it (reads
 * are not trapped). */
static pid_t drain_later(int p[2], int ms) {
    pid_t c = fork();
    if (c == 0) {
        close(p[1]);
        usleep(ms * 1000);
        char buf[65536];
        while (read(p[0], buf, sizeof buf) > 0) {}
        _exit(0);
    }
    return c;
}

/* Starts one interrupted case on pipe p: with restart, a child that drains p after
 * 400 ms (so the call can finish); the counter reset; the signal due in 150 ms. Returns
 * the child (or -1). */
static pid_t arm(int p[2], int restart) {
    pid_t c = restart ? drain_later(p, 400) : -1;
    caught = 0;
    alarm_in(150, restart);
    return c;
}

/* Ends a case: closes p and waits for its drainer. */
static void disarm(int p[2], pid_t c) {
    close(p[1]);
    if (c > 0) waitpid(c, NULL, 0);
    close(p[0]);
}

/* report() under the name WHAT_TAGSUFFIX ("splice_off_intr_offset"), with the errno
 * the call left. */
static void report_as(const char *what, const char *tag, const char *suffix, long value) {
    int e = errno;
    char name[96];
    snprintf(name, sizeof name, "%s_%s%s", what, tag, suffix);
    errno = e;
    report(name, value);
}

static volatile int stop_idle;
static void *idle(void *arg) {
    (void)arg;
    while (!stop_idle) usleep(1000);
    return NULL;
}

static int signals(const char *file) {
    int fd = open(file, O_RDWR);
    int keep[2];
    if (fd < 0 || pipe(keep)) return 2;
    loff_t off = 0;
    /* A live segment, so the supervisor's slow paths run for the calls below. */
    report("splice_live", splice(fd, &off, keep[1], NULL, 4096, 0));
    for (int restart = 0; restart < 2; restart++) {
        const char *tag = restart ? "restart" : "intr";
        int p[2];
        pid_t c;
        /* splice with an offset pointer, waiting in the supervisor's transfer thread */
        if (full_pipe(p)) return 3;
        loff_t o = 100;
        c = arm(p, restart);
        report_as("splice_off", tag, "", splice(fd, &o, p[1], NULL, 16, 0));
        report_as("splice_off", tag, "_offset", (long)o);
        report_as("splice_off", tag, "_caught", caught);
        disarm(p, c);
        /* splice at the file's own offset */
        if (full_pipe(p)) return 3;
        lseek(fd, 200, SEEK_SET);
        c = arm(p, restart);
        report_as("splice_cursor", tag, "", splice(fd, NULL, p[1], NULL, 32, 0));
        report_as("splice_cursor", tag, "_lseek", lseek(fd, 0, SEEK_CUR));
        report_as("splice_cursor", tag, "_caught", caught);
        disarm(p, c);
        /* splice with a second thread in the process (the timer's signal is the
         * process's: the kernel picks the thread) */
        if (full_pipe(p)) return 3;
        pthread_t th;
        stop_idle = 0;
        if (pthread_create(&th, NULL, idle, NULL)) return 3;
        o = 100;
        c = arm(p, restart);
        report_as("splice_threaded", tag, "", splice(fd, &o, p[1], NULL, 16, 0));
        report_as("splice_threaded", tag, "_caught", caught);
        stop_idle = 1;
        pthread_join(th, NULL);
        disarm(p, c);
        /* sendfile with an offset */
        if (full_pipe(p)) return 3;
        off_t so = 300;
        c = arm(p, restart);
        report_as("sendfile", tag, "", sendfile(p[1], fd, &so, 64));
        report_as("sendfile", tag, "_offset", (long)so);
        report_as("sendfile", tag, "_caught", caught);
        disarm(p, c);
        /* write into a full pipe: nothing fits */
        if (full_pipe(p)) return 3;
        c = arm(p, restart);
        report_as("write_full", tag, "", write(p[1], (char[100]){0}, 100));
        report_as("write_full", tag, "_caught", caught);
        disarm(p, c);
        /* a write larger than the room: part of it fits before it waits */
        if (pipe(p)) return 3;
        fcntl(p[1], F_SETPIPE_SZ, 4096);
        static char big[3 * 4096];
        c = arm(p, restart);
        report_as("write_partial", tag, "", write(p[1], big, sizeof big));
        report_as("write_partial", tag, "_caught", caught);
        disarm(p, c);
        /* writes into a pipe that holds spliced bytes (tracked: the supervisor writes
         * them), full, then with room for part of the write */
        for (int room = 0; room < 2; room++) {
            if (pipe(p)) return 3;
            fcntl(p[1], F_SETPIPE_SZ, room ? 8192 : 4096);
            loff_t so2 = 0;
            if (splice(fd, &so2, p[1], NULL, 4096, 0) != 4096) return 3;
            const char *what = room ? "write_tracked_partial" : "write_tracked_full";
            c = arm(p, restart);
            report_as(what, tag, "", write(p[1], big, room ? sizeof big : 100));
            report_as(what, tag, "_caught", caught);
            disarm(p, c);
        }
        /* pwrite into the file while the signal is pending: it runs as usual */
        caught = 0;
        alarm_in(1, restart);
        usleep(20000);
        report_as("pwrite_after", tag, "", pwrite(fd, "abcdefgh", 8, 60000));
        report_as("pwrite_after", tag, "_caught", caught);
    }
    return 0;
}

static int storm(const char *file) {
    int fd = open(file, O_RDWR);
    int p[2];
    if (fd < 0 || pipe(p)) return 2;
    static char want[65536], got[8192];
    if (pread(fd, want, sizeof want, 0) != sizeof want) return 3;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval t = {{0, 37}, {0, 37}};
    caught = 0;
    setitimer(ITIMER_REAL, &t, NULL);
    long bad_splice = 0, bad_offset = 0, bad_data = 0, left = 0, bad_pwrite = 0;
    for (int i = 0; i < 3000; i++) {
        loff_t at = (i * 4096) % 61440, off = at;
        ssize_t n = splice(fd, &off, p[1], NULL, 4096, 0);
        bad_splice += n != 4096;
        bad_offset += off != at + 4096;
        ssize_t r = read(p[0], got, 4096);
        bad_data += r != 4096 || memcmp(got, want + at, 4096);
        int queued = 0;
        ioctl(p[0], FIONREAD, &queued);
        if (queued > 0) {
            left++;
            while (queued > 0 && (r = read(p[0], got, sizeof got)) > 0) queued -= r;
        }
        bad_pwrite += pwrite(fd, want + 61440, 64, 61440) != 64;
    }
    struct itimerval z = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &z, NULL);
    report("storm_splice_failed", bad_splice);
    report("storm_offset_wrong", bad_offset);
    report("storm_data_wrong", bad_data);
    report("storm_bytes_twice", left);
    report("storm_pwrite_failed", bad_pwrite);
    report("storm_signals", caught > 0);
    return 0;
}

/* Splices all of FILE (len bytes) into stdout, with room for extra more bytes later. */
static int splice_all(int fd, size_t len, size_t extra) {
    fcntl(1, F_SETPIPE_SZ, (int)(len + extra + 65536));
    loff_t off = 0;
    while (off < (loff_t)len) {
        ssize_t n = splice(fd, &off, 1, NULL, len - off, 0);
        if (n <= 0) return -1;
    }
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

static int write_all(int out, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(out, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= w;
    }
    return 0;
}

static int forks(const char *file, int n) {
    int fd = open(file, O_RDWR);
    if (fd < 0) return 2;
    off_t len = lseek(fd, 0, SEEK_END);
    if (n * 640 > len || splice_all(fd, len, n * 640)) return 3;
    int (*p)[2] = calloc(n, sizeof *p);
    pid_t *kids = calloc(n, sizeof *kids);
    for (int i = 0; i < n; i++)
        if (pipe(p[i])) return 4;
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] < 0) return 5;
        if (kids[i] == 0) {
            loff_t off = 640 * i;
            ssize_t got = 0;
            while (got < 640) {
                ssize_t r = splice(fd, &off, p[i][1], NULL, 640 - got, 0);
                if (r <= 0) _exit(6);
                got += r;
            }
            char x[16];
            memset(x, 'X', sizeof x);
            _exit(pwrite(fd, x, 16, 640 * i + 100) == 16 ? 0 : 7);
        }
    }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        failed |= !WIFEXITED(st) || WEXITSTATUS(st);
    }
    if (failed) return 8;
    for (int i = 0; i < n; i++) {
        char buf[640];
        ssize_t got = 0;
        while (got < 640) {
            ssize_t r = read(p[i][0], buf + got, 640 - got);
            if (r <= 0) return 9;
            got += r;
        }
        if (write_all(1, buf, 640)) return 10;
    }
    return 0;
}

struct mutator {
    const char *file;
    int fd;
    int t;
    off_t part;
};

static void *mutate_part(void *arg) {
    struct mutator *m = arg;
    char x[16];
    memset(x, 'X', sizeof x);
    off_t base = m->t * m->part;
    int own = open(m->file, O_RDWR); /* a cursor of its own, for write */
    if (own < 0) return (void *)1;
    for (off_t at = 0; at + 16 <= m->part; at += 256) {
        switch ((at / 256) % 3) {
        case 0:
            if (pwrite(m->fd, x, 16, base + at) != 16) return (void *)2;
            break;
        case 1:
            if (lseek(own, base + at, SEEK_SET) < 0 || write(own, x, 16) != 16) return (void *)3;
            break;
        default:
            if (fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, base + at, 16))
                return (void *)4;
        }
    }
    close(own);
    return NULL;
}

static int threads(const char *file) {
    int fd = open(file, O_RDWR);
    if (fd < 0) return 2;
    off_t len = lseek(fd, 0, SEEK_END);
    if (splice_all(fd, len, 0)) return 3;
    pthread_t th[8];
    struct mutator m[8];
    for (int t = 0; t < 8; t++) {
        m[t] = (struct mutator){file, fd, t, len / 8};
        if (pthread_create(&th[t], NULL, mutate_part, &m[t])) return 4;
    }
    int failed = 0;
    for (int t = 0; t < 8; t++) {
        void *r;
        pthread_join(th[t], &r);
        failed |= r != NULL;
    }
    return failed ? 5 : 0;
}

static int write_loop(const char *file, long n) {
    int fd = open(file, O_RDWR);
    if (fd < 0) return 2;
    static char buf[1 << 20];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        if (pwrite(fd, buf, sizeof buf, 0) != sizeof buf) return 3;
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    printf("%ld\n", ns / n);
    return 0;
}

static int splice_loop(const char *file, long n) {
    int fd = open(file, O_RDONLY);
    int p[2];
    if (fd < 0 || pipe(p)) return 2;
    const size_t chunk = 1 << 20;
    if (fcntl(p[1], F_SETPIPE_SZ, (int)chunk) < (int)chunk) return 3;
    off_t len = lseek(fd, 0, SEEK_END);
    static char buf[1 << 20];
    struct timespec a, b;
    long moved = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        loff_t off = 0;
        while (off < len) {
            ssize_t s = splice(fd, &off, p[1], NULL, chunk, 0);
            if (s <= 0) return 4;
            for (ssize_t got = 0; got < s;) {
                ssize_t r = read(p[0], buf, s - got);
                if (r <= 0) return 5;
                got += r;
            }
            moved += s;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    printf("%ld\n", (long)((double)ns * (1 << 20) / moved));
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
    if (!strcmp(argv[1], "write-loop") && argc > 3) return write_loop(argv[2], atol(argv[3]));
    if (!strcmp(argv[1], "splice-loop") && argc > 3) return splice_loop(argv[2], atol(argv[3]));
    if (!strcmp(argv[1], "fidelity")) return fidelity(argv[2]);
    if (!strcmp(argv[1], "signals")) return signals(argv[2]);
    if (!strcmp(argv[1], "storm")) return storm(argv[2]);
    if (!strcmp(argv[1], "forks") && argc > 3) return forks(argv[2], atoi(argv[3]));
    if (!strcmp(argv[1], "threads")) return threads(argv[2]);
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
