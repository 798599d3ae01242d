//! The seccomp filter of strict mode: a classic BPF program, built here, that sends the
//! calls splicecow must see to the supervisor (`SECCOMP_RET_USER_NOTIF`) and lets every
//! other call run.

use std::collections::HashMap;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Set in the number of an x32 system call.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Filter results (`linux/seccomp.h`).
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// `FICLONE`, `FICLONERANGE`, `FIDEDUPERANGE` (`_IOW(0x94, 9, int)`,
/// `_IOW(0x94, 13, struct file_clone_range)`, `_IOWR(0x94, 54, struct file_dedupe_range)`).
const FICLONE: u32 = 0x4004_9409;
const FICLONERANGE: u32 = 0x4020_940d;
const FIDEDUPERANGE: u32 = 0xc018_9436;

/// Offsets in `struct seccomp_data`: the number, the architecture, the arguments (the low
/// 32 bits of argument i are at 16 + 8i on a little-endian machine).
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg(i: u32) -> u32 {
    16 + 8 * i
}

/// System calls always sent to the supervisor.
/// (Not trapped: `vmsplice`, which puts the process's own pages into a pipe.)
pub const TRAPPED: [libc::c_long; 16] = [
    libc::SYS_write,
    libc::SYS_pwrite64,
    libc::SYS_writev,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_ftruncate,
    libc::SYS_truncate,
    libc::SYS_fallocate,
    libc::SYS_creat,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_tee,
    // Its flags are in memory, which a filter cannot read.
    libc::SYS_openat2,
    // The supervisor forgets what it knew of the process (the preload may come or go).
    libc::SYS_execve,
    libc::SYS_execveat,
];

/// Where a jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Label(&'static str),
}

/// One instruction before its jumps are resolved.
struct Ins {
    label: Option<&'static str>,
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

fn ld(off: u32) -> Ins {
    Ins {
        label: None,
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        k: off,
        jt: To::Next,
        jf: To::Next,
    }
}

fn jump(op: u32, k: u32, jt: To, jf: To) -> Ins {
    Ins {
        label: None,
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        k,
        jt,
        jf,
    }
}

fn ret(k: u32) -> Ins {
    Ins {
        label: None,
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        k,
        jt: To::Next,
        jf: To::Next,
    }
}

fn labelled(label: &'static str, mut i: Ins) -> Ins {
    i.label = Some(label);
    i
}

/// The filter:
/// - another architecture (i386 through `int 0x80`) or an x32 call: `ENOSYS`, since the
///   supervisor only knows x86-64 numbers and arguments;
/// - `io_uring_setup`: `ENOSYS` (programs fall back to system calls, which are seen);
/// - [`TRAPPED`]: to the supervisor;
/// - `open` and `openat` with `O_TRUNC` in their flags argument, `mmap` with `MAP_SHARED`
///   and `PROT_WRITE`, `mprotect`/`pkey_mprotect` with `PROT_WRITE`, `ioctl` `FICLONE`/`FICLONERANGE`/`FIDEDUPERANGE`: to the
///   supervisor;
/// - everything else runs.
pub fn program() -> Vec<libc::sock_filter> {
    let jeq = libc::BPF_JEQ;
    let jge = libc::BPF_JGE;
    let jset = libc::BPF_JSET;
    let notify = To::Label("notify");
    let allow = To::Label("allow");
    let enosys = To::Label("enosys");
    let mut p = vec![
        ld(ARCH),
        jump(jeq, AUDIT_ARCH_X86_64, To::Next, enosys),
        ld(NR),
        jump(jge, X32_SYSCALL_BIT, enosys, To::Next),
        jump(jeq, libc::SYS_io_uring_setup as u32, enosys, To::Next),
    ];
    for nr in TRAPPED {
        p.push(jump(jeq, nr as u32, notify, To::Next));
    }
    p.extend([
        jump(jeq, libc::SYS_open as u32, To::Label("open"), To::Next),
        jump(jeq, libc::SYS_openat as u32, To::Label("openat"), To::Next),
        jump(jeq, libc::SYS_mmap as u32, To::Label("mmap"), To::Next),
        jump(
            jeq,
            libc::SYS_mprotect as u32,
            To::Label("mprotect"),
            To::Next,
        ),
        jump(
            jeq,
            libc::SYS_pkey_mprotect as u32,
            To::Label("mprotect"),
            To::Next,
        ),
        jump(jeq, libc::SYS_ioctl as u32, To::Label("ioctl"), To::Next),
        ret(RET_ALLOW),
        labelled("open", ld(arg(1))),
        jump(jset, libc::O_TRUNC as u32, notify, allow),
        labelled("openat", ld(arg(2))),
        jump(jset, libc::O_TRUNC as u32, notify, allow),
        labelled("mmap", ld(arg(3))),
        jump(jset, libc::MAP_SHARED as u32, To::Next, allow),
        ld(arg(2)),
        jump(jset, libc::PROT_WRITE as u32, notify, allow),
        labelled("mprotect", ld(arg(2))),
        jump(jset, libc::PROT_WRITE as u32, notify, allow),
        labelled("ioctl", ld(arg(1))),
        jump(jeq, FICLONE, notify, To::Next),
        jump(jeq, FICLONERANGE, notify, To::Next),
        jump(jeq, FIDEDUPERANGE, notify, allow),
        labelled("notify", ret(RET_USER_NOTIF)),
        labelled("allow", ret(RET_ALLOW)),
        labelled("enosys", ret(RET_ERRNO | libc::ENOSYS as u32)),
    ]);
    assemble(&p)
}

/// Resolves the labels into relative jumps.
fn assemble(p: &[Ins]) -> Vec<libc::sock_filter> {
    let at: HashMap<&str, usize> = p
        .iter()
        .enumerate()
        .filter_map(|(i, ins)| ins.label.map(|l| (l, i)))
        .collect();
    let rel = |i: usize, to: To| -> u8 {
        match to {
            To::Next => 0,
            To::Label(l) => {
                let target = at[l];
                u8::try_from(target - i - 1).expect("a filter jump within 255 instructions")
            }
        }
    };
    p.iter()
        .enumerate()
        .map(|(i, ins)| libc::sock_filter {
            code: ins.code,
            jt: rel(i, ins.jt),
            jf: rel(i, ins.jf),
            k: ins.k,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter of the instructions the filter uses, to check its decisions.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = p[pc];
            let k = ins.k;
            let op = u32::from(ins.code);
            if op == (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) {
                let o = k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                pc += 1;
            } else if op == (libc::BPF_RET | libc::BPF_K) {
                return k;
            } else {
                let taken = match op & 0xf0 {
                    x if x == libc::BPF_JEQ => acc == k,
                    x if x == libc::BPF_JGE => acc >= k,
                    x if x == libc::BPF_JSET => acc & k != 0,
                    _ => panic!("unexpected op {op:#x}"),
                };
                pc += 1 + usize::from(if taken { ins.jt } else { ins.jf });
            }
        }
    }

    #[test]
    fn decisions() {
        let p = program();
        let x86 = AUDIT_ARCH_X86_64;
        let nr = |n: libc::c_long| n as u32;
        let go = |n, args| run(&p, x86, nr(n), args);
        assert_eq!(go(libc::SYS_read, [0; 6]), RET_ALLOW);
        assert_eq!(go(libc::SYS_write, [0; 6]), RET_USER_NOTIF);
        assert_eq!(go(libc::SYS_splice, [0; 6]), RET_USER_NOTIF);
        assert_eq!(go(libc::SYS_io_uring_setup, [0; 6]), RET_ERRNO | 38);
        let trunc = libc::O_TRUNC as u64 | libc::O_WRONLY as u64;
        assert_eq!(go(libc::SYS_open, [0, trunc, 0, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(go(libc::SYS_open, [0, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(go(libc::SYS_openat, [0, 0, trunc, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(go(libc::SYS_openat, [0, trunc, 0, 0, 0, 0]), RET_ALLOW);
        let (rw, shared) = (3, libc::MAP_SHARED as u64);
        assert_eq!(
            go(libc::SYS_mmap, [0, 4096, rw, shared, 3, 0]),
            RET_USER_NOTIF
        );
        assert_eq!(go(libc::SYS_mmap, [0, 4096, 1, shared, 3, 0]), RET_ALLOW);
        assert_eq!(go(libc::SYS_mmap, [0, 4096, rw, 2, 3, 0]), RET_ALLOW);
        let rwx = 7;
        assert_eq!(
            go(libc::SYS_mprotect, [4096, 4096, rwx, 0, 0, 0]),
            RET_USER_NOTIF
        );
        assert_eq!(go(libc::SYS_mprotect, [4096, 4096, 1, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            go(libc::SYS_pkey_mprotect, [0, 1, 3, 0, 0, 0]),
            RET_USER_NOTIF
        );
        let clone = u64::from(FICLONE);
        assert_eq!(go(libc::SYS_ioctl, [3, clone, 4, 0, 0, 0]), RET_USER_NOTIF);
        let dedupe = u64::from(FIDEDUPERANGE);
        assert_eq!(go(libc::SYS_ioctl, [3, dedupe, 4, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(go(libc::SYS_ioctl, [3, 0x5401, 4, 0, 0, 0]), RET_ALLOW);
        // x32 and i386 calls are refused.
        assert_eq!(run(&p, x86, X32_SYSCALL_BIT | 1, [0; 6]), RET_ERRNO | 38);
        assert_eq!(run(&p, 0x4000_0003, 4, [0; 6]), RET_ERRNO | 38);
    }
}
