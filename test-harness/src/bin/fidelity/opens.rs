//! Truncating opens: `open`, `openat`, `creat`, `fopen`, `freopen` and their 64-bit forms.

use super::*;

/// Closes an fd a case opened (not printed).
pub(crate) fn close_ret(fd: c_int) -> i64 {
    if fd >= 0 {
        // SAFETY: the fd was just opened by the case and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
    fd.into()
}

/// Closes a stream a case opened and maps it with [`ptr_ret`].
pub(crate) fn fclose_ret(stream: *mut FILE) -> i64 {
    if !stream.is_null() {
        // SAFETY: the stream was just opened by the case and is used nowhere else.
        unsafe { libc::fclose(stream) };
    }
    ptr_ret(stream)
}

/// `open*`, `openat*`, `creat*`, `fopen*`, `freopen*`.
pub(crate) fn battery_open(b: &mut Battery) -> Res<()> {
    let (fp, dp, lp) = (b.f_path.as_ptr(), b.dir_path.as_ptr(), b.link_path.as_ptr());
    let f = b.f;
    let missing = c"/var/tmp/splicecow-fidelity-missing/none";
    let rel = c"splicecow-fidelity-relative";
    let wt = libc::O_WRONLY | libc::O_TRUNC;
    let opens: [(&str, OpenFn); 2] = [("open", libc::open), ("open64", libc::open64)];
    let openats: [(&str, OpenatFn); 2] = [("openat", libc::openat), ("openat64", libc::openat64)];
    let creats: [(&str, CreatFn); 2] = [("creat", libc::creat), ("creat64", libc::creat64)];
    let fopens: [(&str, FopenFn); 2] = [("fopen", libc::fopen), ("fopen64", libc::fopen64)];
    let freopens: [(&str, FreopenFn); 2] =
        [("freopen", libc::freopen), ("freopen64", libc::freopen64)];
    let (w, r, z) = (c"w".as_ptr(), c"r".as_ptr(), c"z".as_ptr());
    // SAFETY: (all calls below) paths and modes are live NUL-terminated strings or
    // deliberately null/invalid (EFAULT); returned fds and streams are closed once.
    unsafe {
        for (name, o) in opens {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("null_path"), || close_ret(o(std::ptr::null(), wt)))?;
            b.case(&n("bad_path"), || close_ret(o(bad(), wt)))?;
            b.case(&n("missing"), || close_ret(o(missing.as_ptr(), wt)))?;
            b.case(&n("creat_missing_dir"), || {
                close_ret(o(missing.as_ptr(), libc::O_CREAT | wt, 0o600))
            })?;
            b.case(&n("trunc_directory"), || close_ret(o(dp, wt)))?;
            b.case(&n("creat_directory_flag"), || {
                close_ret(o(fp, libc::O_CREAT | libc::O_DIRECTORY, 0o600))
            })?;
            b.case(&n("excl_exists"), || {
                close_ret(o(fp, libc::O_CREAT | libc::O_EXCL | wt, 0o600))
            })?;
            b.case(&n("nofollow_symlink"), || {
                close_ret(o(lp, libc::O_NOFOLLOW | wt))
            })?;
            b.case(&n("read_ok"), || close_ret(o(fp, libc::O_RDONLY)))?;
            b.case(&n("trunc_ok"), || close_ret(o(fp, wt)))?;
            b.restore()?;
        }
        for (name, o) in openats {
            let n = |c: &str| format!("{name}.{c}");
            b.case(&n("null_path"), || {
                close_ret(o(libc::AT_FDCWD, std::ptr::null(), wt))
            })?;
            b.case(&n("bad_dirfd_relative"), || {
                close_ret(o(CLOSED, rel.as_ptr(), wt))
            })?;
            b.case(&n("file_dirfd_relative"), || {
                close_ret(o(f, rel.as_ptr(), wt))
            })?;
            b.case(&n("missing"), || {
                close_ret(o(libc::AT_FDCWD, missing.as_ptr(), wt))
            })?;
            b.case(&n("trunc_directory"), || {
                close_ret(o(libc::AT_FDCWD, dp, wt))
            })?;
            b.case(&n("bad_flags"), || {
                close_ret(o(
                    libc::AT_FDCWD,
                    fp,
                    libc::O_CREAT | libc::O_DIRECTORY,
                    0o600,
                ))
            })?;
            b.case(&n("bad_dirfd_absolute_trunc_ok"), || {
                close_ret(o(CLOSED, fp, wt))
            })?;
            b.restore()?;
            b.case(&n("trunc_rdonly_ok"), || {
                close_ret(o(libc::AT_FDCWD, fp, libc::O_RDONLY | libc::O_TRUNC))
            })?;
            b.restore()?;
        }
        for (name, c) in creats {
            let n = |x: &str| format!("{name}.{x}");
            b.case(&n("null_path"), || close_ret(c(std::ptr::null(), 0o600)))?;
            b.case(&n("missing_dir"), || close_ret(c(missing.as_ptr(), 0o600)))?;
            b.case(&n("directory"), || close_ret(c(dp, 0o600)))?;
            b.case(&n("ok"), || close_ret(c(fp, 0o600)))?;
            b.restore()?;
        }
        for (name, fo) in fopens {
            let n = |x: &str| format!("{name}.{x}");
            b.case(&n("null_path"), || fclose_ret(fo(std::ptr::null(), r)))?;
            b.case(&n("bad_mode"), || fclose_ret(fo(fp, z)))?;
            b.case(&n("missing"), || fclose_ret(fo(missing.as_ptr(), r)))?;
            b.case(&n("directory_w"), || fclose_ret(fo(dp, w)))?;
            b.case(&n("read_ok"), || fclose_ret(fo(fp, r)))?;
            b.case(&n("write_ok"), || fclose_ret(fo(fp, w)))?;
            b.restore()?;
        }
        for (name, fr) in freopens {
            let n = |x: &str| format!("{name}.{x}");
            let stream = || libc::fopen(fp, r);
            b.case(&n("missing"), || {
                fclose_ret(fr(missing.as_ptr(), r, stream()))
            })?;
            b.case(&n("bad_mode"), || fclose_ret(fr(fp, z, stream())))?;
            b.case(&n("directory_w"), || fclose_ret(fr(dp, w, stream())))?;
            b.case(&n("null_path_w"), || {
                fclose_ret(fr(std::ptr::null(), w, stream()))
            })?;
            b.restore()?;
            b.case(&n("write_ok"), || fclose_ret(fr(fp, w, stream())))?;
            b.restore()?;
        }
    }
    Ok(())
}
