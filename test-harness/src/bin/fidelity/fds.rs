//! The ends of tracked pipes closed, duplicated and `fcntl`ed.

use super::*;

pub(crate) type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

extern "C" {
    /// glibc's `closefrom(3)` (not in the libc crate).
    fn closefrom(lowfd: c_int);
    /// glibc's `fcntl64`, the same call as `fcntl` on 64-bit targets (not in the libc
    /// crate).
    fn fcntl64(fd: c_int, cmd: c_int, ...) -> c_int;
}

/// Puts duplicates of `fds` at [`HIGH_FD`], [`HIGH_FD`] + 1, ... (setup, not a case),
/// which must be free.
pub(crate) fn dup_high(fds: &[RawFd]) -> Res<()> {
    for (fd, to) in fds.iter().zip(HIGH_FD..) {
        // SAFETY: plain fd calls.
        unsafe {
            if libc::fcntl(to, libc::F_GETFD) != -1 {
                return Err(format!("fd {to} is open").into());
            }
            if libc::dup2(*fd, to) != to {
                return Err(os_err("dup2"));
            }
        }
    }
    Ok(())
}

/// `F_GETFD` of each of `fds`, comma-separated (-1: closed).
pub(crate) fn fd_flags(fds: &[RawFd]) -> String {
    let flags: Vec<String> = fds
        .iter()
        // SAFETY: plain fd call.
        .map(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) }.to_string())
        .collect();
    flags.join(",")
}

/// `close`, `close_range`, `closefrom`, `dup`, `dup2`, `dup3`, `fcntl`/`fcntl64`,
/// `pclose`, `fclose`: bad and closed fds, bad flags and commands, and the ends of
/// tracked pipes (under the shim, closing one retires what has left its pipe, and a
/// duplicate inherits its hint). The fds a case closes or replaces are duplicates at
/// [`HIGH_FD`] and up, so no other fd ever takes their numbers.
pub(crate) fn battery_fds(b: &mut Battery) -> Res<()> {
    let (f, fro, opath, fp) = (b.f, b.f_rdonly, b.f_opath, b.f_path.as_ptr());
    let (r, w) = b.loaded_pipe(0)?;
    let (r2, w2) = b.loaded_pipe(0)?;
    let (h0, h1, h2) = (HIGH_FD, HIGH_FD + 1, HIGH_FD + 2);
    let (uh0, uh1, uh2) = (h0 as c_uint, h1 as c_uint, h2 as c_uint);
    let cloexec = libc::CLOSE_RANGE_CLOEXEC as c_int;
    let unshare = libc::CLOSE_RANGE_UNSHARE as c_int;
    let fcntls: [(&str, FcntlFn); 2] = [("fcntl", libc::fcntl), ("fcntl64", fcntl64)];
    // SAFETY: (all calls below) fds are open, deliberately invalid, or duplicates the
    // case owns; pointers are live locals or deliberately invalid (EFAULT); streams are
    // opened by the case and closed once.
    unsafe {
        b.case("close.bad_fd", || libc::close(-1).into())?;
        b.case("close.closed_fd", || libc::close(CLOSED).into())?;
        b.case("close.huge_fd", || libc::close(c_int::MAX).into())?;
        dup_high(&[w])?;
        b.case("close.tracked_write_end", || libc::close(h0).into())?;
        b.case("close.tracked_write_end_again", || libc::close(h0).into())?;
        dup_high(&[r])?;
        b.case("close.tracked_read_end", || libc::close(h0).into())?;
        b.state("close.tracked_read_end", "queued", queued(r))?;
        // A pipe closed end by end: its only writer, then its reader with bytes in it.
        let (lr, lw) = pipe_with(0)?;
        splice_exact(f, 0, lw.as_raw_fd(), 4096)?;
        let (lr, lw) = (lr.into_raw_fd(), lw.into_raw_fd());
        b.case("close.last_write_end", || libc::close(lw).into())?;
        b.state("close.last_write_end", "queued", queued(lr))?;
        b.case("close.last_read_end_with_bytes", || libc::close(lr).into())?;

        b.case("close_range.first_above_last", || {
            libc::close_range(uh1, uh0, 0).into()
        })?;
        b.case("close_range.first_above_last_cloexec", || {
            libc::close_range(uh1, uh0, cloexec).into()
        })?;
        b.case("close_range.bad_flags", || {
            libc::close_range(uh0, uh2, 0x100).into()
        })?;
        dup_high(&[w, r, w2])?;
        b.case("close_range.cloexec_tracked", || {
            libc::close_range(uh0, uh2, cloexec).into()
        })?;
        b.state(
            "close_range.cloexec_tracked",
            "fd_flags",
            fd_flags(&[h0, h1, h2]),
        )?;
        b.case("close_range.unshare_cloexec_tracked", || {
            libc::close_range(uh0, uh2, cloexec | unshare).into()
        })?;
        b.case("close_range.unshare_tracked", || {
            libc::close_range(uh2, uh2, unshare).into()
        })?;
        b.state(
            "close_range.unshare_tracked",
            "fd_flags",
            fd_flags(&[h0, h1, h2]),
        )?;
        b.case("close_range.tracked", || {
            libc::close_range(uh0, uh1, 0).into()
        })?;
        b.state("close_range.tracked", "fd_flags", fd_flags(&[h0, h1, h2]))?;
        b.state("close_range.tracked", "queued", queued(r))?;
        b.case("close_range.nothing_open", || {
            libc::close_range(uh0, uh0 + 100, 0).into()
        })?;
        b.case("close_range.max_fd", || {
            libc::close_range(c_uint::MAX, c_uint::MAX, 0).into()
        })?;

        dup_high(&[w, r])?;
        b.case("closefrom.tracked", || {
            closefrom(h0);
            0
        })?;
        b.state("closefrom.tracked", "fd_flags", fd_flags(&[h0, h1]))?;
        b.case("closefrom.nothing_open", || {
            closefrom(h0);
            0
        })?;

        b.case("dup.bad_fd", || libc::dup(-1).into())?;
        b.case("dup.closed_fd", || libc::dup(CLOSED).into())?;
        b.case("dup.tracked_write_end", || close_ret(libc::dup(w)))?;
        b.case("dup.tracked_read_end", || close_ret(libc::dup(r)))?;
        b.case("dup.o_path", || close_ret(libc::dup(opath)))?;

        dup_high(&[w])?;
        b.case("dup2.closed_onto_tracked", || libc::dup2(CLOSED, h0).into())?;
        b.state("dup2.closed_onto_tracked", "fd_flags", fd_flags(&[h0]))?;
        b.case("dup2.tracked_onto_itself", || libc::dup2(h0, h0).into())?;
        b.case("dup2.closed_onto_itself", || {
            libc::dup2(CLOSED, CLOSED).into()
        })?;
        b.case("dup2.negative_new", || libc::dup2(w, -1).into())?;
        b.case("dup2.new_above_limit", || libc::dup2(w, c_int::MAX).into())?;
        b.case("dup2.tracked_over_tracked", || libc::dup2(w2, h0).into())?;
        b.state("dup2.tracked_over_tracked", "queued", queued(r))?;
        b.state("dup2.tracked_over_tracked", "queued2", queued(r2))?;
        b.case("dup2.tracked_onto_free_fd", || libc::dup2(r, h1).into())?;
        b.case("dup3.bad_flags_onto_tracked", || {
            libc::dup3(w, h0, 0x1234).into()
        })?;
        b.state("dup3.bad_flags_onto_tracked", "fd_flags", fd_flags(&[h0]))?;
        b.case("dup3.onto_itself", || libc::dup3(w, w, 0).into())?;
        b.case("dup3.onto_itself_cloexec", || {
            libc::dup3(w, w, libc::O_CLOEXEC).into()
        })?;
        b.case("dup3.closed_onto_tracked", || {
            libc::dup3(CLOSED, h0, 0).into()
        })?;
        b.case("dup3.negative_new", || libc::dup3(w, -1, 0).into())?;
        b.case("dup3.tracked_over_tracked", || libc::dup3(w, h1, 0).into())?;
        b.state("dup3.tracked_over_tracked", "fd_flags", fd_flags(&[h1]))?;
        b.case("dup3.cloexec_tracked_over_tracked", || {
            libc::dup3(w2, h0, libc::O_CLOEXEC).into()
        })?;
        b.state(
            "dup3.cloexec_tracked_over_tracked",
            "fd_flags",
            fd_flags(&[h0]),
        )?;
        libc::close_range(uh0, uh1, 0);

        // libc's own closes of what the program holds, which the fd identity cache hooks.
        b.case("closedir.open_dir", || {
            let d = libc::opendir(c"/".as_ptr());
            if d.is_null() {
                return -2;
            }
            libc::closedir(d).into()
        })?;
        b.case("endmntent.mount_table", || {
            let m = libc::setmntent(c"/proc/self/mounts".as_ptr(), c"r".as_ptr());
            if m.is_null() {
                return -2;
            }
            libc::endmntent(m).into()
        })?;
        b.case("freopen.missing_path", || {
            let f = libc::fopen(c"/proc/self/stat".as_ptr(), c"r".as_ptr());
            if f.is_null() {
                return -2;
            }
            // A failed freopen closes the stream.
            i64::from(libc::freopen(c"/nonexistent/x".as_ptr(), c"r".as_ptr(), f).is_null())
        })?;
        b.case("freopen.same_file", || {
            let f = libc::fopen(c"/proc/self/stat".as_ptr(), c"r".as_ptr());
            if f.is_null() {
                return -2;
            }
            let g = libc::freopen(std::ptr::null(), c"r".as_ptr(), f);
            let ok = i64::from(g == f);
            if !g.is_null() {
                libc::fclose(g);
            }
            ok
        })?;
        // The fd-creating calls the fd identity cache hooks (results closed again).
        let fd_or = |r: c_int| close_ret(r);
        b.case("socket.ok", || {
            fd_or(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0))
        })?;
        b.case("socket.bad_domain", || {
            libc::socket(-1, libc::SOCK_STREAM, 0).into()
        })?;
        b.case("pipe2.bad_flags", || {
            let mut p = [-1; 2];
            libc::pipe2(p.as_mut_ptr(), -1).into()
        })?;
        b.case("pipe2.bad_pointer", || {
            libc::pipe2(8 as *mut c_int, 0).into()
        })?;
        b.case("socketpair.ok", || {
            let mut p = [-1; 2];
            let r = libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, p.as_mut_ptr());
            libc::close(p[0]);
            libc::close(p[1]);
            r.into()
        })?;
        b.case("eventfd.bad_flags", || libc::eventfd(0, -1).into())?;
        b.case("memfd_create.bad_flags", || {
            libc::memfd_create(c"x".as_ptr(), u32::MAX).into()
        })?;
        b.case("epoll_create1.ok", || fd_or(libc::epoll_create1(0)))?;
        b.case("epoll_create.zero", || libc::epoll_create(0).into())?;
        b.case("mkstemp.bad_template", || {
            let mut t = *b"/tmp/no-x\0";
            libc::mkstemp(t.as_mut_ptr().cast()).into()
        })?;
        b.case("opendir.missing", || {
            i64::from(libc::opendir(c"/nonexistent/d".as_ptr()).is_null())
        })?;
        b.case("tmpfile.ok", || {
            let f = libc::tmpfile();
            let ok = !f.is_null();
            if ok {
                libc::fclose(f);
            }
            i64::from(ok)
        })?;
        b.case("accept.not_a_socket", || {
            libc::accept(f, std::ptr::null_mut(), std::ptr::null_mut()).into()
        })?;
        b.case("recvmsg.bad_fd", || {
            // SAFETY: an all-zero msghdr is a valid empty message.
            let mut m: libc::msghdr = std::mem::zeroed();
            libc::recvmsg(-1, &mut m, 0) as i64
        })?;
        b.case("unshare.bad_flags", || libc::unshare(-1).into())?;
        b.case("unshare.files", || libc::unshare(libc::CLONE_FILES).into())?;
        b.case("fork_without_handlers", || {
            extern "C" {
                fn _Fork() -> libc::pid_t;
            }
            let pid = _Fork();
            if pid == 0 {
                libc::_exit(7);
            }
            let mut st = 0;
            let waited = libc::waitpid(pid, &mut st, 0) == pid;
            i64::from(waited && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7)
        })?;

        for (name, fc) in fcntls {
            let n = |c: &str| format!("{name}.{c}");
            let (pr, pw) = b.loaded_pipe(0)?; // its flags and size change
            let (_, bw) = b.loaded_pipe(0)?;
            write_all_fd(bw, b"two buffers")?;
            let arg = |v: i64| v as libc::c_ulong;
            b.case(&n("bad_fd"), || fc(-1, libc::F_GETFL).into())?;
            b.case(&n("closed_fd"), || fc(CLOSED, libc::F_GETFD).into())?;
            b.case(&n("bad_cmd"), || fc(w, 0x7fff_1234, arg(0)).into())?;
            b.case(&n("dupfd"), || {
                close_ret(fc(w, libc::F_DUPFD, arg(h0.into())))
            })?;
            let mut flags = 0;
            b.case(&n("dupfd_cloexec"), || {
                let fd = fc(w, libc::F_DUPFD_CLOEXEC, arg(h0.into()));
                flags = libc::fcntl(fd, libc::F_GETFD);
                close_ret(fd)
            })?;
            b.state(&n("dupfd_cloexec"), "fd_flags", flags)?;
            b.case(&n("dupfd_negative"), || {
                fc(w, libc::F_DUPFD, arg(-1)).into()
            })?;
            b.case(&n("dupfd_above_limit"), || {
                fc(w, libc::F_DUPFD, arg(1 << 30)).into()
            })?;
            b.case(&n("dupfd_closed"), || {
                fc(CLOSED, libc::F_DUPFD, arg(0)).into()
            })?;
            b.case(&n("getfd_tracked"), || fc(w, libc::F_GETFD).into())?;
            dup_high(&[w])?;
            b.case(&n("setfd_tracked"), || {
                fc(h0, libc::F_SETFD, arg(libc::FD_CLOEXEC.into())).into()
            })?;
            libc::close(h0);
            b.case(&n("getfl_tracked"), || fc(w, libc::F_GETFL).into())?;
            b.case(&n("setfl_nonblock_tracked"), || {
                fc(pw, libc::F_SETFL, arg(libc::O_NONBLOCK.into())).into()
            })?;
            b.case(&n("setfl_packet_mode_tracked"), || {
                fc(
                    pw,
                    libc::F_SETFL,
                    arg((libc::O_NONBLOCK | libc::O_DIRECT).into()),
                )
                .into()
            })?;
            b.state(
                &n("setfl_packet_mode_tracked"),
                "flags",
                fc(pw, libc::F_GETFL),
            )?;
            b.case(&n("getpipe_sz_tracked"), || {
                fc(w, libc::F_GETPIPE_SZ).into()
            })?;
            b.case(&n("getpipe_sz_file"), || fc(f, libc::F_GETPIPE_SZ).into())?;
            b.case(&n("setpipe_sz_below_content"), || {
                fc(bw, libc::F_SETPIPE_SZ, arg(4096)).into()
            })?;
            b.case(&n("setpipe_sz_invalid"), || {
                fc(pw, libc::F_SETPIPE_SZ, arg((1 << 31) + 1)).into()
            })?;
            b.case(&n("setpipe_sz_grow_tracked"), || {
                fc(pw, libc::F_SETPIPE_SZ, arg(1 << 17)).into()
            })?;
            b.case(&n("setpipe_sz_shrink_tracked"), || {
                fc(pw, libc::F_SETPIPE_SZ, arg(4096)).into()
            })?;
            b.state(&n("setpipe_sz_shrink_tracked"), "queued", queued(pr))?;
            b.case(&n("getlk_efault"), || {
                fc(f, libc::F_GETLK, bad::<c_void>()).into()
            })?;
            let mut lk: libc::flock = std::mem::zeroed();
            lk.l_type = libc::F_WRLCK as libc::c_short;
            lk.l_whence = libc::SEEK_SET as libc::c_short;
            b.case(&n("getlk"), || {
                fc(f, libc::F_GETLK, &mut lk as *mut libc::flock).into()
            })?;
            b.state(&n("getlk"), "l_type", lk.l_type)?;
            lk.l_type = libc::F_WRLCK as libc::c_short;
            b.case(&n("setlk_read_only_fd"), || {
                fc(fro, libc::F_SETLK, &lk as *const libc::flock).into()
            })?;
        }

        // `popen` streams: the shell's exit status; a pipe spliced into, then closed.
        let popen_pclose = |cmd: &std::ffi::CStr, mode: &std::ffi::CStr, splice: bool| {
            let s = libc::popen(cmd.as_ptr(), mode.as_ptr());
            if s.is_null() {
                return -2;
            }
            if splice && splice_exact(f, 0, libc::fileno(s), 4096).is_err() {
                return -3;
            }
            i64::from(libc::pclose(s))
        };
        b.case("pclose.exit_0", || popen_pclose(c"exit 0", c"r", false))?;
        b.case("pclose.exit_3", || popen_pclose(c"exit 3", c"r", false))?;
        b.case("pclose.tracked_pipe", || {
            popen_pclose(c"cat >/dev/null", c"w", true)
        })?;
        b.case("pclose.fopen_stream", || {
            let s = libc::fopen(fp, c"r".as_ptr());
            if s.is_null() {
                return -2;
            }
            libc::pclose(s).into()
        })?;

        // Streams on duplicates of tracked write ends.
        let stream = |fd: RawFd| -> Res<*mut FILE> {
            dup_high(&[fd])?;
            let s = libc::fdopen(h0, c"w".as_ptr());
            if s.is_null() {
                return Err(os_err("fdopen"));
            }
            Ok(s)
        };
        let data = [b'S'; 16];
        let s = stream(w)?;
        b.case("fclose.tracked_pipe_stream", || {
            libc::fwrite(data.as_ptr().cast(), 1, 16, s);
            libc::fclose(s).into()
        })?;
        b.state("fclose.tracked_pipe_stream", "queued", queued(r))?;
        let s = stream(w)?;
        b.case("fclose.stream_on_closed_fd", || {
            libc::close(h0);
            libc::fclose(s).into()
        })?;
        let (nr, nw) = b.loaded_pipe(0)?;
        b.close(nr);
        let s = stream(nw)?;
        b.case("fclose.unflushed_no_readers", || {
            libc::fwrite(data.as_ptr().cast(), 1, 16, s);
            libc::fclose(s).into()
        })?;
    }
    Ok(())
}
