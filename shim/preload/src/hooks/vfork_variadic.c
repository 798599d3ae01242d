/* The body of the variadic clone hook (vfork.rs), which stable Rust cannot define: the
 * exported clone jumps here with every register intact. A CLONE_VM | CLONE_VFORK child
 * runs on the parent thread's memory until it exec's or exits: the thread's shim state
 * is saved before and restored once the real clone returns in the parent. Any other
 * child is told what it is first thing: another process on the same memory (CLONE_VM)
 * or a copy of this one (no CLONE_VM), whose cached ids are then forgotten. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>

uint64_t splicecow_vfork_save(void);
void splicecow_vfork_child_starts(void);
void splicecow_vfork_restore(uint64_t saved);
void splicecow_clone_child_starts(int shares_memory);

/* What the child runs: marks itself as a vfork child, then the caller's function. The
 * parent waits inside clone, so this lives on its stack for the child's whole run. */
struct child_call {
    int (*fn)(void *);
    void *arg;
};

static int child_entry(void *p) {
    struct child_call *call = p;
    splicecow_vfork_child_starts();
    return call->fn(call->arg);
}

/* The same for a child the parent does not wait for; the call lives in the parent's
 * frame only until the child has read it, so it is copied into the child first. */
struct other_child_call {
    int (*fn)(void *);
    void *arg;
    int shares_memory;
    volatile int taken;
};

static int other_child_entry(void *p) {
    struct other_child_call *call = p;
    int (*fn)(void *) = call->fn;
    void *arg = call->arg;
    int shares_memory = call->shares_memory;
    if (shares_memory)
        __atomic_store_n(&call->taken, 1, __ATOMIC_RELEASE);
    splicecow_clone_child_starts(shares_memory);
    return fn(arg);
}

typedef int (*clone_fn)(int (*)(void *), void *, int, void *, ...);

int splicecow_clone(int (*fn)(void *), void *stack, int flags, void *arg, ...) {
    static clone_fn real;
    if (!real)
        real = (clone_fn)dlsym(RTLD_NEXT, "clone");
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    /* Like glibc's clone, take the optional arguments whether or not flags use them. */
    va_list ap;
    va_start(ap, arg);
    pid_t *parent_tid = va_arg(ap, pid_t *);
    void *tls = va_arg(ap, void *);
    pid_t *child_tid = va_arg(ap, pid_t *);
    va_end(ap);
    if (flags & CLONE_THREAD)
        return real(fn, stack, flags, arg, parent_tid, tls, child_tid);
    if ((flags & (CLONE_VM | CLONE_VFORK)) != (CLONE_VM | CLONE_VFORK)) {
        struct other_child_call call = {fn, arg, (flags & CLONE_VM) != 0, 0};
        int r = real(other_child_entry, stack, flags, &call, parent_tid, tls, child_tid);
        /* A child on this memory reads the call from this frame: wait until it has. */
        if (r > 0 && call.shares_memory)
            while (!__atomic_load_n(&call.taken, __ATOMIC_ACQUIRE))
                sched_yield();
        return r;
    }
    uint64_t saved = splicecow_vfork_save();
    struct child_call call = {fn, arg};
    int r = real(child_entry, stack, flags, &call, parent_tid, tls, child_tid);
    int e = errno;
    splicecow_vfork_restore(saved);
    errno = e;
    return r;
}
