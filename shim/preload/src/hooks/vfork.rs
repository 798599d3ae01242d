//! `vfork` and `clone(CLONE_VM | CLONE_VFORK)`: the child runs on the parent's memory,
//! thread-local storage included, until it calls `execve` or `_exit`. Whatever a hook
//! changes in the child (the "inside the shim" flag an `execve` hook sets and, when the
//! exec succeeds, never clears) would land in the parent. So both calls save the calling
//! thread's shim state before the child starts and put it back in the parent when the
//! call returns there, with the child gone from its memory.
//!
//! `vfork` itself cannot be wrapped by an ordinary function: the child returns from the
//! wrapper and then reuses its stack frame, so the parent would return through a
//! clobbered frame. It is a naked trampoline like glibc's own: the return address and the
//! saved state live in registers that the system call preserves (`rdi`, `rsi`), never on
//! the stack. `clone` runs its child on another stack, so its C body (`vfork_variadic.c`)
//! only calls the save and restore below around the real call.

use crate::hooks::variadic_hook;

/// The calling thread's shim state, before a `vfork`-like child starts.
extern "C" fn save() -> u64 {
    crate::state::guard::save_thread_state()
}

/// The child's half, right after the `vfork` system call returned 0 in it.
extern "C" fn child_starts() {
    crate::state::guard::vfork_child_starts();
}

/// The parent's half after the `vfork` system call returned `raw` (a pid or `-errno`):
/// restores the state and turns `raw` into libc's return value and `errno`.
extern "C" fn parent_returns(saved: u64, raw: i64) -> libc::pid_t {
    crate::state::guard::restore_thread_state(saved);
    if (-4095..0).contains(&raw) {
        splicecow_registry::sys::set_errno(-raw as i32);
        return -1;
    }
    raw as libc::pid_t
}

/// `clone`'s C body: the state before a `CLONE_VM | CLONE_VFORK` child starts.
#[no_mangle]
extern "C" fn splicecow_vfork_save() -> u64 {
    save()
}

/// `clone`'s C body: first thing in a `CLONE_VM | CLONE_VFORK` child.
#[no_mangle]
extern "C" fn splicecow_vfork_child_starts() {
    child_starts();
}

/// `clone`'s C body: first thing in any other non-thread child: one on this process's
/// memory (`CLONE_VM`) must not use what this process cached, a copy (no `CLONE_VM`) must
/// forget the ids it cached.
#[no_mangle]
extern "C" fn splicecow_clone_child_starts(shares_memory: libc::c_int) {
    if shares_memory != 0 {
        child_starts();
    } else {
        splicecow_registry::sys::forget_ids();
    }
}

/// `clone`'s C body: the state back in the parent once that child exec'd or exited.
#[no_mangle]
extern "C" fn splicecow_vfork_restore(saved: u64) {
    crate::state::guard::restore_thread_state(saved);
}

/// `vfork(2)`.
///
/// # Safety
/// As for libc's `vfork`: the child may only call `execve`-family functions or `_exit`
/// (POSIX), or whatever its program knows to be safe on the parent's memory.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    core::arch::naked_asm!(
        // Entry: rsp = 8 (mod 16). Save the thread's state; it waits in rsi.
        "sub rsp, 8",
        "call {save}",
        "add rsp, 8",
        "mov rsi, rax",
        // The return address goes into rdi: the child will overwrite its stack slot.
        "pop rdi",
        "mov eax, {nr}",
        "syscall",
        "push rdi",
        "test rax, rax",
        "jnz 2f",
        // The child: marks the borrowed memory as a child's, returns 0.
        "sub rsp, 8",
        "call {child}",
        "add rsp, 8",
        "xor eax, eax",
        "ret",
        "2:",
        // The parent, after the child exec'd or exited: restore, then return.
        "mov rdi, rsi",
        "mov rsi, rax",
        "sub rsp, 8",
        "call {parent}",
        "add rsp, 8",
        "ret",
        save = sym save,
        child = sym child_starts,
        parent = sym parent_returns,
        nr = const libc::SYS_vfork,
    )
}

/// `__vfork`, glibc's other name for the same call.
///
/// # Safety
/// As for [`vfork`].
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn __vfork() -> libc::pid_t {
    core::arch::naked_asm!("jmp {}", sym vfork)
}

variadic_hook! {
    /// `clone(3)`.
    clone => splicecow_clone;
}
