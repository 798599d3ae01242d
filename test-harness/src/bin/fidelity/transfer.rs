//! File→pipe and pipe→pipe transfers: `splice`, `tee`, `sendfile`, `sendfile64`.

use super::*;

/// `splice` and `tee`.
pub(crate) fn battery_splice(b: &mut Battery) -> Res<()> {
    battery_splice_errors(b)?;
    battery_splice_flags(b)?;
    battery_file_to_pipe(b, "splice", FileToPipeFn::Splice(0))?;
    battery_tee(b)
}

/// `splice` with bad fds, flags, offsets and lengths, and pipe→pipe / pipe→file.
pub(crate) fn battery_splice_errors(b: &mut Battery) -> Res<()> {
    let (f, g) = (b.f, b.g);
    let sp: SpliceFn = libc::splice;
    let (pr, pw) = b.pipe(0)?;
    let (lr, lw) = b.loaded_pipe(0)?;
    let (_, fw) = b.full_pipe(0)?;
    let (_, nfw) = b.full_pipe(libc::O_NONBLOCK)?;
    let f_wronly = open_with(Path::new(b.f_path.to_str().unwrap_or("")), true, false)?;
    let fwo = f_wronly.as_raw_fd();
    b.fds.push(f_wronly);
    let flen = FLEN as loff_t;
    // SAFETY: (all calls below) fds are open or deliberately invalid; offset pointers
    // point at live locals or are deliberately invalid (the kernel answers EFAULT).
    unsafe {
        let mut o: loff_t = 0;
        b.case("splice.bad_fd_in", || {
            sp(-1, NULL_OFF, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.closed_fd_in", || {
            sp(CLOSED, NULL_OFF, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.bad_fd_out", || {
            sp(f, &mut o, -1, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.closed_fd_out", || {
            sp(f, &mut o, CLOSED, NULL_OFF, 4096, 0) as i64
        })?;
        b.seek(0);
        b.case("splice.bad_flags", || {
            sp(f, NULL_OFF, pw, NULL_OFF, 4096, 0xffff_0000) as i64
        })?;
        b.state("splice.bad_flags", "queued", queued(pr))?;
        let mut eof = flen;
        b.case("splice.eof_off_in", || {
            sp(f, &mut eof, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.state("splice.eof_off_in", "off_in", eof)?;
        b.seek(FLEN);
        b.case("splice.eof_cursor", || {
            sp(f, NULL_OFF, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.seek(0);
        b.case("splice.efault_off_in", || {
            sp(f, bad(), pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.off_out_on_pipe", || {
            let mut oo: loff_t = 0;
            sp(f, &mut o, pw, &mut oo, 4096, 0) as i64
        })?;
        b.case("splice.efault_off_out_on_pipe", || {
            sp(f, &mut o, pw, bad(), 4096, 0) as i64
        })?;
        let mut neg: loff_t = -1;
        b.case("splice.negative_off_in", || {
            sp(f, &mut neg, pw, NULL_OFF, 4096, 0) as i64
        })?;
        b.case("splice.zero_len", || {
            sp(f, &mut o, pw, NULL_OFF, 0, 0) as i64
        })?;
        b.state("splice.zero_len", "queued", queued(pr))?;
        let (hr, hw) = b.pipe(0)?;
        let mut h: loff_t = 1000;
        b.case("splice.huge_len", || {
            sp(f, &mut h, hw, NULL_OFF, usize::MAX, 0) as i64
        })?;
        b.state("splice.huge_len", "queued", queued(hr))?;
        b.state("splice.huge_len", "off_in", h)?;
        let (gr, gw) = b.pipe(0)?;
        b.case("splice.large_len", || {
            sp(f, &mut h, gw, NULL_OFF, 1 << 30, 0) as i64
        })?;
        b.state("splice.large_len", "queued", queued(gr))?;
        let (cr, cw) = b.pipe(0)?;
        b.seek(100);
        b.case("splice.cursor", || {
            sp(f, NULL_OFF, cw, NULL_OFF, 1000, 0) as i64
        })?;
        b.state("splice.cursor", "queued", queued(cr))?;
        b.case("splice.file_to_file", || {
            let mut o2: loff_t = 0;
            sp(f, &mut o, g, &mut o2, 16, 0) as i64
        })?;
        b.case("splice.same_pipe", || {
            sp(lr, NULL_OFF, lw, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.into_read_end", || {
            sp(f, &mut o, pr, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.from_wronly", || {
            sp(fwo, &mut o, pw, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.full_nonblock_flag", || {
            sp(f, &mut o, fw, NULL_OFF, 4096, NB) as i64
        })?;
        b.case("splice.full_onb_pipe", || {
            sp(f, &mut o, nfw, NULL_OFF, 4096, 0) as i64
        })?;
        b.state("splice.full_onb_pipe", "off_in", o)?;
        b.case("splice.pipe_to_file_negative_off", || {
            let mut n: loff_t = -1;
            sp(lr, NULL_OFF, g, &mut n, 16, 0) as i64
        })?;
        b.case("splice.pipe_to_file_efault_off", || {
            sp(lr, NULL_OFF, g, bad(), 16, 0) as i64
        })?;
        b.state("splice.pipe_to_file_efault_off", "queued", queued(lr))?;
        b.case("splice.empty_pipe_to_file_nonblock", || {
            let mut x: loff_t = 0;
            sp(pr, NULL_OFF, g, &mut x, 16, NB) as i64
        })?;
        let (_, p2w) = b.pipe(0)?;
        b.case("splice.pipe_to_pipe_bad_flags", || {
            sp(lr, NULL_OFF, p2w, NULL_OFF, 16, 0xffff_0000) as i64
        })?;
        b.case("splice.pipe_to_pipe_empty_nonblock", || {
            sp(pr, NULL_OFF, p2w, NULL_OFF, 16, NB) as i64
        })?;
        b.case("splice.pipe_to_pipe_full_nonblock", || {
            sp(lr, NULL_OFF, fw, NULL_OFF, 16, NB) as i64
        })?;
        b.case("splice.pipe_to_pipe_efault_off_in", || {
            sp(lr, bad(), p2w, NULL_OFF, 16, 0) as i64
        })?;
        b.case("splice.pipe_to_pipe_ok", || {
            sp(lr, NULL_OFF, p2w, NULL_OFF, 1000, 0) as i64
        })?;
        b.state("splice.pipe_to_pipe_ok", "queued", queued(lr))?;
        b.case("splice.pipe_to_file_ok", || {
            let mut x: loff_t = 100;
            sp(lr, NULL_OFF, f, &mut x, 16, 0) as i64
        })?;
    }
    Ok(())
}

/// file→pipe `splice` with valid and invalid flags.
pub(crate) fn battery_splice_flags(b: &mut Battery) -> Res<()> {
    let (f, flen) = (b.f, FLEN as loff_t);
    let (pr, _) = b.pipe(0)?;
    let (_, fw) = b.full_pipe(0)?;
    let valid = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE | libc::SPLICE_F_GIFT | NB;
    let splice = FileToPipeFn::Splice;
    b.transfers(
        "splice",
        splice(valid),
        &[
            ("valid_flags", f, Some(0), None, 4096),
            ("valid_flags_cursor", f, None, None, 4096),
        ],
    )?;
    b.transfers(
        "splice",
        splice(0xffff_0000),
        &[
            ("bad_flags_off_in", f, Some(0), None, 16),
            ("bad_flags_zero_len", f, Some(0), None, 0),
            ("bad_flags_into_read_end", f, Some(0), Some(pr), 16),
        ],
    )?;
    b.transfers(
        "splice",
        splice(NB),
        &[("eof_full_nonblock_flag", f, Some(flen), Some(fw), 4096)],
    )
}

/// The file→pipe cases of every call of the family (`splice`, `sendfile`, `sendfile64`,
/// as `name` through `via`): odd sources (empty, `O_PATH`, `O_DIRECT`, `/proc`), odd
/// offsets and lengths, pipes full, partly full, grown, in packet mode or without
/// readers, offsets the kernel cannot write back. What the copy path must answer like
/// the kernel: `tests/fidelity.rs` also runs the battery in copy mode and with the
/// registry's pipe table full.
pub(crate) fn battery_file_to_pipe(b: &mut Battery, name: &str, via: FileToPipeFn) -> Res<()> {
    let (f, big, empty, opath, maps, direct) =
        (b.f, b.big, b.empty, b.f_opath, b.maps, b.big_direct);
    let (flen, blen, beyond) = (FLEN as loff_t, BIG_LEN as loff_t, BEYOND_MAX_FILE_SIZE);
    let (pr, pw) = b.pipe(0)?;
    let (_, nfw) = b.full_pipe(libc::O_NONBLOCK)?;
    let nrw = b.pipe_without_readers()?;
    let pw_opath = open_raw(Path::new(&format!("/proc/self/fd/{pw}")), libc::O_PATH)?;
    let pwo = pw_opath.as_raw_fd();
    b.fds.push(pw_opath);
    let version = open_with(Path::new("/proc/version"), false, true)?;
    let ver = version.as_raw_fd();
    b.fds.push(version);
    let (ar, aw) = b.written_pipe(16)?;
    let (ur, uw) = b.written_pipe(16)?;
    let (gr, gw) = b.pipe(0)?;
    // Half the file: the pipe fills before the file ends.
    ensure_pipe_capacity(&gw, BIG_LEN / 2).map_err(|e| Error::from(e.to_string()))?;
    // One row a line (rustfmt would spread the longer ones over seven).
    #[rustfmt::skip]
    let rows: [TransferRow; 33] = [
        ("empty_file", empty, Some(0), None, 4096),
        ("empty_file_cursor", empty, None, None, 4096),
        ("empty_file_into_read_end", empty, None, Some(pr), 4096),
        ("empty_file_into_o_path_pipe", empty, None, Some(pwo), 4096),
        ("into_o_path_pipe", f, Some(0), Some(pwo), 4096),
        ("o_path", opath, Some(0), None, 4096),
        ("o_path_cursor", opath, None, None, 4096),
        ("proc_maps", maps, Some(0), None, 16),
        ("proc_maps_cursor", maps, None, None, 16),
        ("proc_maps_into_read_end", maps, None, Some(pr), 16),
        ("proc_maps_no_readers", maps, None, Some(nrw), 16),
        ("proc_version", ver, Some(0), None, 16),
        ("o_direct_aligned", direct, Some(0), None, 4096),
        ("o_direct_unaligned_len", direct, Some(0), None, 100),
        ("o_direct_unaligned_offset", direct, Some(100), None, 4096),
        ("unaligned_offset", big, Some(100), None, 1 << 20),
        ("len_over_max_rw_count", big, Some(0), None, 1 << 40),
        ("across_eof", big, Some(blen - 100), None, 4096),
        ("aligned_into_partly_full_pipe", big, Some(0), Some(aw), 1 << 20),
        ("unaligned_into_partly_full_pipe", big, Some(100), Some(uw), 1 << 20),
        ("unaligned_into_grown_pipe", big, Some(100), Some(gw), 1 << 20),
        ("zero_len_into_read_end", f, Some(0), Some(pr), 0),
        ("zero_len_into_full_onb_pipe", f, Some(0), Some(nfw), 0),
        ("zero_len_no_readers", f, Some(0), Some(nrw), 0),
        ("eof_into_full_onb_pipe", f, Some(flen), Some(nfw), 4096),
        ("huge_len_into_full_onb_pipe", f, Some(0), Some(nfw), usize::MAX),
        ("huge_len_into_read_end", f, Some(0), Some(pr), usize::MAX),
        ("negative_offset_into_full_onb_pipe", f, Some(-1), Some(nfw), 16),
        ("negative_offset_into_read_end", f, Some(-1), Some(pr), 16),
        ("no_readers", f, Some(0), Some(nrw), 4096),
        ("eof_no_readers", f, Some(flen), Some(nrw), 4096),
        ("offset_near_max", big, Some(i64::MAX - 10), None, 4096),
        ("offset_beyond_max_file_size", big, Some(beyond), None, 16),
    ];
    b.transfers(name, via, &rows)?;
    let n = |case: &str| format!("{name}.{case}");
    for (case, r) in [
        ("aligned_into_partly_full_pipe", ar),
        ("unaligned_into_partly_full_pipe", ur),
        ("unaligned_into_grown_pipe", gr),
    ] {
        b.state(&n(case), "queued", queued(r))?;
    }
    seek(big, 100);
    b.transfer_fresh(&n("unaligned_cursor"), via, big, None, 1 << 20)?;
    b.state(&n("unaligned_cursor"), "cursor", cursor(big))?;
    // Packet mode: what one read (larger than the pipe) returns at a time.
    let (kr, kw) = b.pipe(libc::O_DIRECT)?;
    b.transfer(&n("into_packet_pipe"), via, big, Some(100), kw, 10000)?;
    write_all_fd(kw, b"packet")?;
    b.transfer(&n("into_packet_pipe_again"), via, big, Some(0), kw, 4096)?;
    b.state(&n("into_packet_pipe"), "reads", read_sizes(kr)?)?;
    // Offset pointers the kernel cannot read, or reads and cannot write back (EFAULT
    // after the bytes moved).
    let (rr, rw) = b.pipe(0)?;
    let ro_off = b.ro_off;
    let pointer_cases: [(&str, *mut loff_t, RawFd, usize); 4] = [
        ("zero_len_efault_offset", bad(), rw, 0),
        ("read_only_offset_into_read_end", ro_off, pr, 16),
        ("read_only_offset_zero_len", ro_off, rw, 0),
        ("read_only_offset", ro_off, rw, 4096),
    ];
    for (case, off, to, len) in pointer_cases {
        // SAFETY: off is deliberately unreadable, or points into a read-only page of
        // ours: nothing of this process can be written through it.
        b.case(&n(case), || unsafe { via.call(big, off, to, len) } as i64)?;
    }
    b.state(&n("read_only_offset"), "queued", queued(rr))?;
    Ok(())
}

/// `tee`.
pub(crate) fn battery_tee(b: &mut Battery) -> Res<()> {
    let f = b.f;
    let (_, fw) = b.full_pipe(0)?;
    // SAFETY: (all calls below) fds are open or deliberately invalid.
    unsafe {
        let (er, ew) = b.pipe(0)?;
        let (tr, tw) = b.loaded_pipe(0)?;
        let (dr, dw) = b.pipe(0)?;
        let (nr, nw) = b.pipe(0)?;
        b.close(nw); // a pipe without writers
        b.case("tee.bad_fd_in", || libc::tee(-1, dw, 4096, 0) as i64)?;
        b.case("tee.closed_fd_out", || {
            libc::tee(tr, CLOSED, 4096, 0) as i64
        })?;
        b.case("tee.bad_flags", || {
            libc::tee(tr, dw, 4096, 0xffff_0000) as i64
        })?;
        b.case("tee.empty_nonblock", || libc::tee(er, dw, 4096, NB) as i64)?;
        b.case("tee.no_writers", || libc::tee(nr, dw, 4096, NB) as i64)?;
        b.case("tee.from_file", || libc::tee(f, dw, 4096, 0) as i64)?;
        b.case("tee.same_pipe", || libc::tee(tr, tw, 4096, 0) as i64)?;
        b.case("tee.full_nonblock", || libc::tee(tr, fw, 4096, NB) as i64)?;
        b.case("tee.zero_len", || libc::tee(tr, dw, 0, 0) as i64)?;
        b.case("tee.huge_len", || libc::tee(tr, dw, usize::MAX, 0) as i64)?;
        b.state("tee.huge_len", "queued_src", queued(tr))?;
        b.state("tee.huge_len", "queued_dst", queued(dr))?;
        let _ = ew;
    }
    Ok(())
}

/// `sendfile` and `sendfile64`.
pub(crate) fn battery_sendfile(b: &mut Battery) -> Res<()> {
    let (f, g) = (b.f, b.g);
    let fns: [(&str, SendfileFn); 2] = [
        ("sendfile", libc::sendfile),
        ("sendfile64", libc::sendfile64),
    ];
    for (name, sf) in fns {
        let (pr, pw) = b.pipe(0)?;
        let (_, nfw) = b.full_pipe(libc::O_NONBLOCK)?;
        let (lr, _) = b.loaded_pipe(0)?;
        let n = |case: &str| format!("{name}.{case}");
        // SAFETY: (all calls below) fds are open or deliberately invalid; offset
        // pointers point at live locals or are deliberately invalid.
        unsafe {
            let mut o: off_t = 0;
            b.case(&n("bad_fd_in"), || sf(pw, -1, &mut o, 4096) as i64)?;
            b.case(&n("closed_fd_out"), || sf(CLOSED, f, &mut o, 4096) as i64)?;
            b.case(&n("efault_offset"), || sf(pw, f, bad(), 4096) as i64)?;
            b.case(&n("negative_offset"), || {
                let mut x: off_t = -1;
                sf(pw, f, &mut x, 4096) as i64
            })?;
            b.case(&n("eof"), || {
                let mut x = FLEN as off_t;
                sf(pw, f, &mut x, 4096) as i64
            })?;
            b.case(&n("zero_count"), || sf(pw, f, &mut o, 0) as i64)?;
            b.case(&n("full_onb_pipe"), || sf(nfw, f, &mut o, 4096) as i64)?;
            b.case(&n("into_read_end"), || sf(pr, f, &mut o, 4096) as i64)?;
            b.case(&n("from_pipe"), || {
                sf(pw, lr, std::ptr::null_mut(), 16) as i64
            })?;
            b.state(&n("from_pipe"), "queued", queued(lr))?;
            let mut x: off_t = 500;
            b.case(&n("ok_offset"), || sf(pw, f, &mut x, 3000) as i64)?;
            b.state(&n("ok_offset"), "offset", x)?;
            b.state(&n("ok_offset"), "queued", queued(pr))?;
            b.seek(700);
            b.case(&n("ok_cursor"), || {
                sf(pw, f, std::ptr::null_mut(), 1000) as i64
            })?;
            let (hr, hw) = b.pipe(0)?;
            b.case(&n("huge_count"), || sf(hw, f, &mut o, usize::MAX) as i64)?;
            b.state(&n("huge_count"), "queued", queued(hr))?;
            let (gr, gw) = b.pipe(0)?;
            b.case(&n("large_count"), || sf(gw, f, &mut o, 1 << 30) as i64)?;
            b.state(&n("large_count"), "queued", queued(gr))?;
            b.case(&n("file_to_file"), || {
                let mut x: off_t = 0;
                libc::lseek(f, 200, libc::SEEK_SET);
                sf(f, g, &mut x, 16) as i64
            })?;
        }
        battery_file_to_pipe(b, name, FileToPipeFn::Sendfile(sf))?;
    }
    Ok(())
}
