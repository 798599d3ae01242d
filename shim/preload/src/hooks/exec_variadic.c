/* Bodies of the variadic exec functions, which stable Rust cannot define: the exported
 * execl/execle/execlp (exec.rs) jump here with every register intact. Each collects its
 * argument list and calls execv/execve/execvp, whose hooks give the new program the
 * domain's environment back (glibc's own versions call an internal execve no hook sees). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#define MAX_ARGS 4096

/* Collects arg and the following char* arguments up to the NULL into argv. */
#define COLLECT(argv, arg, ap, n)                                   \
    do {                                                            \
        (argv)[0] = (char *)(arg);                                  \
        (n) = 1;                                                    \
        while ((argv)[(n) - 1] != NULL) {                           \
            if ((n) == MAX_ARGS) { errno = E2BIG; va_end(ap); return -1; } \
            (argv)[(n)] = va_arg((ap), char *);                     \
            (n)++;                                                  \
        }                                                           \
    } while (0)

int splicecow_execl(const char *path, const char *arg, ...) {
    char *argv[MAX_ARGS];
    size_t n;
    va_list ap;
    va_start(ap, arg);
    COLLECT(argv, arg, ap, n);
    va_end(ap);
    return execv(path, argv);
}

int splicecow_execlp(const char *file, const char *arg, ...) {
    char *argv[MAX_ARGS];
    size_t n;
    va_list ap;
    va_start(ap, arg);
    COLLECT(argv, arg, ap, n);
    va_end(ap);
    return execvp(file, argv);
}

int splicecow_execle(const char *path, const char *arg, ...) {
    char *argv[MAX_ARGS];
    size_t n;
    va_list ap;
    va_start(ap, arg);
    COLLECT(argv, arg, ap, n);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, argv, envp);
}
