/* Bodies of the variadic exec functions, which stable Rust cannot define: the exported
 * execl/execle/execlp (exec.rs) jump here with every register intact. Each collects its
 * argument list and calls execv/execve/execvp, whose hooks see the new program's
 * environment (glibc's own versions call an internal execve no hook sees). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#define MAX_ARGS 4096

/* Collects arg and the following char* arguments up to the NULL into argv; false (errno
 * E2BIG) when there are too many. */
static int collect(char **argv, const char *arg, va_list *ap) {
    size_t n = 1;
    argv[0] = (char *)arg;
    while (argv[n - 1] != NULL) {
        if (n == MAX_ARGS) {
            errno = E2BIG;
            return 0;
        }
        argv[n++] = va_arg(*ap, char *);
    }
    return 1;
}

/* execl and execlp: collect the list, then the given execv-shaped function. */
#define EXEC_LIST(name, execv_fn)                                   \
    int name(const char *path, const char *arg, ...) {              \
        char *argv[MAX_ARGS];                                       \
        va_list ap;                                                 \
        va_start(ap, arg);                                          \
        int ok = collect(argv, arg, &ap);                           \
        va_end(ap);                                                 \
        return ok ? execv_fn(path, argv) : -1;                      \
    }

EXEC_LIST(splicecow_execl, execv)
EXEC_LIST(splicecow_execlp, execvp)

int splicecow_execle(const char *path, const char *arg, ...) {
    char *argv[MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int ok = collect(argv, arg, &ap);
    char *const *envp = ok ? va_arg(ap, char *const *) : NULL;
    va_end(ap);
    return ok ? execve(path, argv, envp) : -1;
}
