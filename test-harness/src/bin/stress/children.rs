//! Children started the way CPython's subprocess, shells and others start them,
//! splicing from the shared files.

use super::*;

/// How [`spawn_child`] starts a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpawnKind {
    /// `vfork`; the child `dup2`s, `close`s and `execve`s a short program (CPython's
    /// `_posixsubprocess`).
    VforkExec,
    /// `vfork`; the child `dup2`s, `close`s, `write`s a note into the error pipe and
    /// `_exit`s without exec.
    VforkExit,
    /// `vfork`; the child's `execve` of a missing program fails, so it writes the errno
    /// into the error pipe and `_exit`s (how CPython reports a failed exec).
    VforkExecFails,
    /// `vfork`; the child `pwrite`s into a data file (the parent holds the file's lock and
    /// models the change), then `execve`s.
    VforkPwriteExec,
    /// `clone(CLONE_VM | CLONE_VFORK)` with a stack of its own, then as `VforkExec`.
    CloneVforkExec,
    /// `posix_spawn` with `dup2`/`close` file actions.
    PosixSpawn,
}

/// Every kind with its weight (percent) and its name in the report.
pub(crate) const SPAWN_KINDS: [(SpawnKind, usize, &str); 6] = [
    (SpawnKind::VforkExec, 30, "vfork_exec"),
    (SpawnKind::VforkExit, 15, "vfork_exit"),
    (SpawnKind::VforkExecFails, 15, "vfork_exec_fails"),
    (SpawnKind::VforkPwriteExec, 15, "vfork_pwrite_exec"),
    (SpawnKind::CloneVforkExec, 10, "clone_vm_vfork_exec"),
    (SpawnKind::PosixSpawn, 15, "posix_spawn"),
];

/// What a `VforkExit` child writes into the error pipe.
pub(crate) const CHILD_NOTE: &[u8] = b"vfork child done";

extern "C" {
    static environ: *const *mut libc::c_char;
    fn vfork() -> libc::pid_t;
}

/// What a `vfork`-like child does, prepared by the parent: the child runs on the parent's
/// memory and must not allocate, so everything it needs is ready before it starts.
pub(crate) struct ChildPlan {
    /// Becomes the child's stdout.
    pub(crate) stdout: RawFd,
    /// Closed in the child (the parent's end of the error pipe).
    pub(crate) close: RawFd,
    /// The error pipe's write end (close-on-exec).
    pub(crate) err: RawFd,
    /// `execve(path, argv, envp)`; a null `path`: `_exit` without exec.
    pub(crate) path: *const libc::c_char,
    pub(crate) argv: *const *const libc::c_char,
    pub(crate) envp: *const *const libc::c_char,
    /// First a `pwrite` of `change_len` bytes at `change` to `change_at` of `change_fd`
    /// (-1: none).
    pub(crate) change_fd: RawFd,
    pub(crate) change: *const u8,
    pub(crate) change_len: usize,
    pub(crate) change_at: libc::off_t,
}

/// The body of a `vfork` or `clone(CLONE_VM)` child; never returns.
///
/// # Safety
/// `plan` points to a plan whose pointers are valid until the child exec'd or exited
/// (the parent is suspended until then).
unsafe extern "C" fn child_main(plan: *const ChildPlan) -> ! {
    // SAFETY: see the function's contract.
    let p = unsafe { &*plan };
    // SAFETY: plain system calls on the plan's descriptors and buffers; nothing here
    // allocates or touches a lock the parent might hold.
    unsafe {
        libc::dup2(p.stdout, 1);
        libc::close(p.close);
        if p.change_fd >= 0
            && libc::pwrite(p.change_fd, p.change.cast(), p.change_len, p.change_at)
                != p.change_len as isize
        {
            libc::_exit(3);
        }
        if p.path.is_null() {
            libc::write(p.err, CHILD_NOTE.as_ptr().cast(), CHILD_NOTE.len());
            libc::_exit(0);
        }
        libc::execve(p.path, p.argv, p.envp);
        let e = (*libc::__errno_location()).to_le_bytes();
        let report = [b'E', e[0], e[1], e[2], e[3]];
        libc::write(p.err, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// `vfork()`, then [`child_main`]`(plan)` in the child; in the parent, once the child
/// exec'd or exited, the child's pid (or -1).
///
/// Assembly, because `vfork` returns twice on one stack: the child must write nothing at
/// or above the caller's stack pointer, which compiled code might (it cannot know that
/// the call returns twice). Here the plan waits in `rbx`, which the system call keeps,
/// and the child only calls `child_main`, whose frame lies below.
///
/// # Safety
/// As for [`child_main`].
#[unsafe(naked)]
unsafe extern "C" fn vfork_then_child(plan: *const ChildPlan) -> libc::pid_t {
    core::arch::naked_asm!(
        // Entry: rsp = 8 (mod 16); the push aligns it for the calls below.
        "push rbx",
        "mov rbx, rdi",
        "call {vfork}",
        "test eax, eax",
        "jnz 2f",
        "mov rdi, rbx",
        "call {child}",
        "ud2",
        "2:",
        "pop rbx",
        "ret",
        vfork = sym vfork,
        child = sym child_main,
    )
}

/// `clone`'s entry for a `CloneVforkExec` child.
pub(crate) extern "C" fn clone_child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn_child` passes a plan that outlives the child's use of it.
    unsafe { child_main(plan.cast()) }
}

/// A thread's means to start children (made once per thread).
pub(crate) struct Spawner {
    pub(crate) devnull: OwnedFd,
    /// The short program the children exec.
    pub(crate) program: CString,
    /// A program that does not exist.
    pub(crate) missing: CString,
    /// The stack of `clone(CLONE_VM)` children (zero pages until used).
    pub(crate) clone_stack: Vec<u8>,
}

impl Spawner {
    /// `None` when there is no `true` program to exec.
    pub(crate) fn new() -> Option<Spawner> {
        let program = ["/bin/true", "/usr/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        Some(Spawner {
            devnull: open_raw(Path::new("/dev/null"), libc::O_WRONLY).ok()?,
            program: CString::new(program).ok()?,
            missing: CString::new("/nonexistent/splicecow-stress-child").ok()?,
            clone_stack: vec![0u8; 1 << 20],
        })
    }

    /// Starts a child of `kind` as `plan` says; its pid, or -1 (errno set).
    pub(crate) fn start(&mut self, kind: SpawnKind, plan: &ChildPlan) -> libc::pid_t {
        match kind {
            SpawnKind::CloneVforkExec => {
                let top = self.clone_stack.as_mut_ptr_range().end as usize & !15;
                // SAFETY: the child runs on its own stack (ours, 1 MiB, 16-aligned top)
                // and this thread waits until it exec'd; the plan outlives that.
                unsafe {
                    libc::clone(
                        clone_child,
                        top as *mut libc::c_void,
                        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                        plan as *const ChildPlan as *mut libc::c_void,
                    )
                }
            }
            SpawnKind::PosixSpawn => {
                let mut pid = 0;
                // SAFETY: file actions built and destroyed here; argv and envp are the
                // plan's NUL-terminated arrays.
                let r = unsafe {
                    let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
                    libc::posix_spawn_file_actions_init(&mut fa);
                    libc::posix_spawn_file_actions_adddup2(&mut fa, plan.stdout, 1);
                    libc::posix_spawn_file_actions_addclose(&mut fa, plan.close);
                    let r = libc::posix_spawn(
                        &mut pid,
                        plan.path,
                        &fa,
                        std::ptr::null(),
                        plan.argv as *const *mut libc::c_char,
                        plan.envp as *const *mut libc::c_char,
                    );
                    libc::posix_spawn_file_actions_destroy(&mut fa);
                    r
                };
                if r != 0 {
                    // SAFETY: errno of this thread.
                    unsafe { *libc::__errno_location() = r };
                    return -1;
                }
                pid
            }
            // SAFETY: the plan stays valid until the child exec'd or exited, which is
            // when vfork returns here.
            _ => unsafe { vfork_then_child(plan) },
        }
    }
}

/// Waits for child `pid`; its exit code, or 128 + the signal that killed it.
pub(crate) fn reap_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child; EINTR retried.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if errno() != libc::EINTR {
            return -1;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Starts one child of a random kind (the thread's own splices and mutations go on
/// around it) and checks how it ended: exit status and what it wrote into its error
/// pipe. A thread whose shim state the child left wrong stops being protected, which the
/// model notices at its next transfers and mutations.
pub(crate) fn spawn_child(ctx: &mut Ctx, sp: &mut Spawner) {
    let mut pick = ctx.rng.below(100);
    let (idx, &(kind, _, name)) = SPAWN_KINDS
        .iter()
        .enumerate()
        .find(|(_, &(_, weight, _))| {
            let hit = pick < weight;
            pick = pick.saturating_sub(weight);
            hit
        })
        .unwrap_or((0, &SPAWN_KINDS[0]));
    let Ok((err_r, err_w)) = splicecow_test_harness::pipe() else {
        ctx.fail(C_ERRORS, || "pipe for a child's errors".to_string());
        return;
    };
    let path = match kind {
        SpawnKind::VforkExit => std::ptr::null(),
        SpawnKind::VforkExecFails => sp.missing.as_ptr(),
        _ => sp.program.as_ptr(),
    };
    let argv = [sp.program.as_ptr(), std::ptr::null()];
    let mut plan = ChildPlan {
        stdout: sp.devnull.as_raw_fd(),
        close: err_r.as_raw_fd(),
        err: err_w.as_raw_fd(),
        path,
        argv: argv.as_ptr(),
        // SAFETY: reading the process's environment pointer.
        envp: unsafe { environ } as *const *const libc::c_char,
        change_fd: -1,
        change: std::ptr::null(),
        change_len: 0,
        change_at: 0,
    };
    // Starts the child and waits for it: its exit code (-1: it could not be started).
    let mut start = |c: &mut Ctx, plan: &ChildPlan| {
        c.slot.begin(Op::Spawn);
        let pid = sp.start(kind, plan);
        let exit = if pid < 0 {
            let e = io::Error::last_os_error();
            c.fail(C_ERRORS, || format!("{name}: {e}"));
            -1
        } else {
            reap_child(pid)
        };
        c.slot.end();
        exit
    };
    let mut exit = -1;
    if kind == SpawnKind::VforkPwriteExec {
        let k = ctx.pick_file();
        ctx.mutation(k, |c, fd, size| {
            let off = c.rng.below(size + 1);
            let len = c
                .rng
                .range(1, 16384)
                .min(c.max_size.saturating_sub(off))
                .max(1);
            let mut buf = vec![0u8; len];
            c.rng.fill(&mut buf);
            (plan.change_fd, plan.change, plan.change_len) = (fd, buf.as_ptr(), len);
            plan.change_at = off as libc::off_t;
            exit = start(c, &plan);
            if exit == 0 {
                c.model_write(k, off, &buf);
                if off > size {
                    c.model_zero(k, size, off - size);
                }
            }
        });
    } else {
        exit = start(ctx, &plan);
    }
    drop(err_w);
    // The child is gone: what it wrote is in the pipe (any other thread's child that
    // inherited our write end exits or execs soon; EOF is not needed).
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(err_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let note = read_up_to(err_r.as_raw_fd(), 64);
    let mut failed = [b'E', 0, 0, 0, 0];
    failed[1..].copy_from_slice(&libc::ENOENT.to_le_bytes());
    let (want_exit, want_note): (i32, &[u8]) = match kind {
        SpawnKind::VforkExit => (0, CHILD_NOTE),
        SpawnKind::VforkExecFails => (127, &failed),
        _ => (0, &[]),
    };
    if exit != want_exit || note != want_note {
        let note = String::from_utf8_lossy(&note).into_owned();
        ctx.fail(C_ERRORS, || {
            format!("{name} child ended with {exit} (expected {want_exit}), wrote {note:?}")
        });
    }
    ctx.st.add(C_SPAWNS + idx, 1);
}
