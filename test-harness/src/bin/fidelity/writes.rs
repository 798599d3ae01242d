//! Writes and size changes: `write`, `pwrite` and their vector forms, `fallocate`,
//! `ftruncate`, `truncate`.

use super::*;

/// `write` and `writev`, into files and into tracked pipes.
pub(crate) fn battery_write(b: &mut Battery) -> Res<()> {
    let (f, fro) = (b.f, b.f_rdonly);
    let data = [b'W'; 65536];
    let buf = data.as_ptr().cast::<c_void>();
    let iov = |base: *const c_void, len: usize| libc::iovec {
        iov_base: base as *mut c_void,
        iov_len: len,
    };
    let two = [iov(buf, 8), iov(buf, 8)];
    let bad_base = [iov(bad(), 16)];
    let overflow = [iov(buf, isize::MAX as usize), iov(buf, isize::MAX as usize)];
    let many: Vec<libc::iovec> = (0..65).map(|_| iov(buf, 1)).collect();
    let too_many: Vec<libc::iovec> = (0..1025).map(|_| iov(buf, 1)).collect();
    let ew = b.pipe_without_readers()?;
    let (tr, tw) = b.loaded_pipe(libc::O_NONBLOCK)?;
    // SAFETY: (all calls below) buffers and iovecs are live locals, or pointers are
    // deliberately invalid (EFAULT); fds are open or deliberately invalid.
    unsafe {
        b.seek(200);
        b.case("write.bad_fd", || libc::write(-1, buf, 16) as i64)?;
        b.case("write.closed_fd", || libc::write(CLOSED, buf, 16) as i64)?;
        b.case("write.efault", || libc::write(f, bad(), 16) as i64)?;
        b.case("write.efault_huge_len", || {
            libc::write(f, bad(), usize::MAX) as i64
        })?;
        b.case("write.rdonly", || libc::write(fro, buf, 16) as i64)?;
        b.case("write.zero_len", || libc::write(f, bad(), 0) as i64)?;
        b.case("write.ok", || libc::write(f, buf, 16) as i64)?;
        b.case("write.epipe", || libc::write(ew, buf, 16) as i64)?;
        b.case("write.tracked_pipe_efault", || {
            libc::write(tw, bad(), 16) as i64
        })?;
        b.case("write.tracked_pipe_ok", || libc::write(tw, buf, 16) as i64)?;
        b.case("write.tracked_pipe_partial", || {
            libc::write(tw, buf, 65536) as i64
        })?;
        b.case("write.tracked_pipe_full", || {
            libc::write(tw, buf, 16) as i64
        })?;
        b.state("write.tracked_pipe_full", "queued", queued(tr))?;

        let (tr, tw) = b.loaded_pipe(libc::O_NONBLOCK)?;
        b.seek(300);
        b.case("writev.bad_fd", || libc::writev(-1, two.as_ptr(), 2) as i64)?;
        b.case("writev.efault_iov", || libc::writev(f, bad(), 1) as i64)?;
        b.case("writev.efault_base", || {
            libc::writev(f, bad_base.as_ptr(), 1) as i64
        })?;
        b.case("writev.negative_count", || {
            libc::writev(f, two.as_ptr(), -1) as i64
        })?;
        b.case("writev.too_many", || {
            libc::writev(f, too_many.as_ptr(), 1025) as i64
        })?;
        b.case("writev.zero_count", || libc::writev(f, bad(), 0) as i64)?;
        b.case("writev.overflow", || {
            libc::writev(f, overflow.as_ptr(), 2) as i64
        })?;
        b.case("writev.rdonly", || {
            libc::writev(fro, two.as_ptr(), 2) as i64
        })?;
        b.case("writev.ok", || libc::writev(f, two.as_ptr(), 2) as i64)?;
        b.case("writev.epipe", || libc::writev(ew, two.as_ptr(), 2) as i64)?;
        b.case("writev.tracked_pipe_efault_iov", || {
            libc::writev(tw, bad(), 1) as i64
        })?;
        b.case("writev.tracked_pipe_efault_base", || {
            libc::writev(tw, bad_base.as_ptr(), 1) as i64
        })?;
        b.case("writev.tracked_pipe_negative_count", || {
            libc::writev(tw, two.as_ptr(), -1) as i64
        })?;
        b.case("writev.tracked_pipe_65_iovs", || {
            libc::writev(tw, many.as_ptr(), 65) as i64
        })?;
        b.case("writev.tracked_pipe_ok", || {
            libc::writev(tw, two.as_ptr(), 2) as i64
        })?;
        let big = [iov(buf, 40000), iov(buf, 40000)];
        b.case("writev.tracked_pipe_partial", || {
            libc::writev(tw, big.as_ptr(), 2) as i64
        })?;
        b.case("writev.tracked_pipe_full", || {
            libc::writev(tw, two.as_ptr(), 2) as i64
        })?;
        b.state("writev.tracked_pipe_full", "queued", queued(tr))?;
    }
    Ok(())
}

/// `pwrite*`, `pwritev*`.
pub(crate) fn battery_pwrite(b: &mut Battery) -> Res<()> {
    let (f, fro) = (b.f, b.f_rdonly);
    let data = [b'P'; 64];
    let buf = data.as_ptr().cast::<c_void>();
    let two = [
        libc::iovec {
            iov_base: buf as *mut c_void,
            iov_len: 8,
        },
        libc::iovec {
            iov_base: buf as *mut c_void,
            iov_len: 8,
        },
    ];
    let iv = two.as_ptr();
    let (_, pw) = b.loaded_pipe(0)?;
    let huge = i64::MAX - 8;
    let pwrites: [(&str, PwriteFn); 2] = [("pwrite", libc::pwrite), ("pwrite64", libc::pwrite64)];
    let pwritevs: [(&str, PwritevFn); 2] =
        [("pwritev", libc::pwritev), ("pwritev64", libc::pwritev64)];
    let pwritev2s: [(&str, Pwritev2Fn); 2] = [
        ("pwritev2", libc::pwritev2),
        ("pwritev64v2", libc::pwritev64v2),
    ];
    // SAFETY: (all calls below) buffers and iovecs are live locals or deliberately
    // invalid pointers; fds are open or deliberately invalid.
    unsafe {
        for (name, w) in pwrites {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_fd"), || w(-1, buf, 16, 0) as i64)?;
            b.case(&n("negative_offset"), || w(f, buf, 16, -1) as i64)?;
            b.case(&n("pipe"), || w(pw, buf, 16, 0) as i64)?;
            b.case(&n("efault"), || w(f, bad(), 16, 100) as i64)?;
            b.case(&n("efault_huge_len"), || {
                w(f, bad(), usize::MAX, 100) as i64
            })?;
            b.case(&n("rdonly"), || w(fro, buf, 16, 100) as i64)?;
            b.case(&n("huge_offset"), || w(f, buf, 16, huge) as i64)?;
            b.case(&n("zero_len"), || w(f, buf, 0, 100) as i64)?;
            b.case(&n("ok"), || w(f, buf, 16, 100) as i64)?;
        }
        for (name, w) in pwritevs {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_fd"), || w(-1, iv, 2, 0) as i64)?;
            b.case(&n("negative_offset"), || w(f, iv, 2, -1) as i64)?;
            b.case(&n("pipe"), || w(pw, iv, 2, 0) as i64)?;
            b.case(&n("efault_iov"), || w(f, bad(), 1, 100) as i64)?;
            b.case(&n("negative_count"), || w(f, iv, -1, 100) as i64)?;
            b.case(&n("huge_offset"), || w(f, iv, 2, huge) as i64)?;
            b.case(&n("ok"), || w(f, iv, 2, 100) as i64)?;
        }
        for (name, w) in pwritev2s {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_fd"), || w(-1, iv, 2, 0, 0) as i64)?;
            b.case(&n("bad_flags"), || w(f, iv, 2, 100, 0x7fff_0000) as i64)?;
            b.case(&n("offset_minus_2"), || w(f, iv, 2, -2, 0) as i64)?;
            b.case(&n("pipe_offset_0"), || w(pw, iv, 2, 0, 0) as i64)?;
            b.case(&n("efault_iov"), || w(f, bad(), 1, 100, 0) as i64)?;
            b.case(&n("nowait"), || w(f, iv, 2, 100, libc::RWF_NOWAIT) as i64)?;
            b.case(&n("ok"), || w(f, iv, 2, 100, 0) as i64)?;
            b.seek(400);
            b.case(&n("cursor"), || w(f, iv, 2, -1, 0) as i64)?;
            b.case(&n("pipe_cursor"), || w(pw, iv, 2, -1, 0) as i64)?;
        }
    }
    Ok(())
}

/// `fallocate*`, `ftruncate*`, `truncate*`.
pub(crate) fn battery_sizes(b: &mut Battery) -> Res<()> {
    let (f, fro) = (b.f, b.f_rdonly);
    let (_, pw) = b.pipe(0)?;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | keep;
    let falls: [(&str, FallocateFn); 2] = [
        ("fallocate", libc::fallocate),
        ("fallocate64", libc::fallocate64),
    ];
    let ftruncs: [(&str, FtruncateFn); 2] = [
        ("ftruncate", libc::ftruncate),
        ("ftruncate64", libc::ftruncate64),
    ];
    let truncs: [(&str, TruncateFn); 2] = [
        ("truncate", libc::truncate),
        ("truncate64", libc::truncate64),
    ];
    let missing = c"/var/tmp/splicecow-fidelity-missing/none";
    let empty = c"";
    let long = CString::new(vec![b'a'; 5000]).map_err(|e| Error::from(e.to_string()))?;
    let (fp, dp) = (b.f_path.as_ptr(), b.dir_path.as_ptr());
    // SAFETY: (all calls below) fds are open or deliberately invalid; paths are live
    // NUL-terminated strings or deliberately null/invalid (EFAULT).
    unsafe {
        for (name, fa) in falls {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("bad_mode"), || fa(f, 0x4000, 0, 4096).into())?;
            b.case(&n("punch_without_keep_size"), || {
                fa(f, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096).into()
            })?;
            b.case(&n("negative_offset"), || fa(f, punch, -1, 4096).into())?;
            b.case(&n("zero_len"), || fa(f, punch, 0, 0).into())?;
            b.case(&n("bad_fd"), || fa(-1, punch, 0, 4096).into())?;
            b.case(&n("closed_fd"), || fa(CLOSED, punch, 0, 4096).into())?;
            b.case(&n("pipe"), || fa(pw, punch, 0, 4096).into())?;
            b.case(&n("rdonly"), || fa(fro, punch, 0, 4096).into())?;
            b.case(&n("overflow"), || {
                fa(f, punch, i64::MAX - 4096, 8192).into()
            })?;
            b.case(&n("huge_len"), || fa(f, punch, 4096, i64::MAX).into())?;
            b.case(&n("collapse_unaligned"), || {
                fa(f, libc::FALLOC_FL_COLLAPSE_RANGE, 100, 4096).into()
            })?;
            b.case(&n("allocate_ok"), || fa(f, 0, 0, 4096).into())?;
            b.case(&n("punch_ok"), || fa(f, punch, 40960, 4096).into())?;
        }
        b.restore()?;
        for (name, ft) in ftruncs {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("negative"), || ft(f, -1).into())?;
            b.case(&n("bad_fd"), || ft(-1, 0).into())?;
            b.case(&n("pipe"), || ft(pw, 0).into())?;
            b.case(&n("rdonly"), || ft(fro, 0).into())?;
            b.case(&n("huge"), || ft(f, i64::MAX).into())?;
            b.case(&n("same_size"), || ft(f, FLEN as off_t).into())?;
            b.case(&n("shrink"), || ft(f, 60000).into())?;
            b.restore()?;
        }
        for (name, t) in truncs {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("null_path"), || t(std::ptr::null(), 0).into())?;
            b.case(&n("bad_path"), || t(bad(), 0).into())?;
            b.case(&n("missing"), || t(missing.as_ptr(), 0).into())?;
            b.case(&n("empty_path"), || t(empty.as_ptr(), 0).into())?;
            b.case(&n("too_long"), || t(long.as_ptr(), 0).into())?;
            b.case(&n("negative"), || t(fp, -1).into())?;
            b.case(&n("directory"), || t(dp, 0).into())?;
            b.case(&n("huge"), || t(fp, i64::MAX).into())?;
            b.case(&n("shrink"), || t(fp, 50000).into())?;
            b.restore()?;
        }
    }
    Ok(())
}
