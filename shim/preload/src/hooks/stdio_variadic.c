/* The bodies of the variadic stdio hooks, which stable Rust cannot define: the exported
 * fprintf/printf/dprintf (stdio.rs) jump here with every register intact. Each settles its stream
 * (see stdio.rs) and formats with the v-variant, as glibc's own definitions do. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>

void splicecow_before_stream(FILE *s);
void splicecow_before_fd(int fd);

int splicecow_fprintf(FILE *s, const char *format, ...) {
    va_list ap;
    splicecow_before_stream(s);
    va_start(ap, format);
    int r = vfprintf(s, format, ap);
    va_end(ap);
    return r;
}

int splicecow_printf(const char *format, ...) {
    va_list ap;
    splicecow_before_stream(stdout);
    va_start(ap, format);
    int r = vfprintf(stdout, format, ap);
    va_end(ap);
    return r;
}

int splicecow_dprintf(int fd, const char *format, ...) {
    va_list ap;
    splicecow_before_fd(fd);
    va_start(ap, format);
    int r = vdprintf(fd, format, ap);
    va_end(ap);
    return r;
}
