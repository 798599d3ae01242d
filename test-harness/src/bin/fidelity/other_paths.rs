//! Other paths into a file: mappings, `copy_file_range`, `ioctl`, stdio output.

use super::*;

/// Other paths into the file (the mapping, copy, ioctl and stdio hooks): mappings,
/// `copy_file_range`, `ioctl`, stdio output.
pub(crate) fn battery_other_paths(b: &mut Battery) -> Res<()> {
    let (f, g, fro) = (b.f, b.g, b.f_rdonly);
    let (pr, pw) = b.loaded_pipe(0)?;
    let (fp, r, rp) = (b.f_path.as_ptr(), c"r".as_ptr(), c"r+".as_ptr());
    let (rw, sh, pv) = (
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        libc::MAP_PRIVATE,
    );
    let null = std::ptr::null_mut::<c_void>();
    let mmap_unmap = |len: usize, prot, flags, fd, off| {
        // SAFETY: a fresh mapping (or MAP_FAILED) of our own, unmapped right away.
        unsafe {
            let p = libc::mmap(null, len, prot, flags, fd, off);
            if p != libc::MAP_FAILED {
                libc::munmap(p, len);
            }
            map_ret(p)
        }
    };
    let data = [b'S'; 16];
    // SAFETY: (all calls below) fds are open or deliberately invalid; addresses are our
    // own mappings or deliberately unmapped/unaligned; buffers are live locals; streams
    // are opened by the case and closed once.
    unsafe {
        b.case("mmap.bad_fd", || {
            mmap_unmap(4096, libc::PROT_READ, pv, -1, 0)
        })?;
        b.case("mmap.closed_fd", || {
            mmap_unmap(4096, libc::PROT_READ, sh, CLOSED, 0)
        })?;
        b.case("mmap.zero_len", || mmap_unmap(0, libc::PROT_READ, sh, f, 0))?;
        b.case("mmap.no_type", || {
            mmap_unmap(4096, libc::PROT_READ, 0, f, 0)
        })?;
        b.case("mmap.unaligned_offset", || {
            mmap_unmap(4096, libc::PROT_READ, sh, f, 100)
        })?;
        b.case("mmap.shared_write_rdonly_fd", || {
            mmap_unmap(4096, rw, sh, fro, 0)
        })?;
        b.case("mmap.pipe", || mmap_unmap(4096, libc::PROT_READ, sh, pr, 0))?;
        b.case("mmap.huge_len", || {
            mmap_unmap(usize::MAX - 4095, libc::PROT_READ, pv, f, 0)
        })?;
        b.case("mmap.shared_write_ok", || mmap_unmap(FLEN, rw, sh, f, 0))?;
        b.case("mmap.private_ok", || mmap_unmap(FLEN, rw, pv, f, 0))?;
        b.case("munmap.unaligned", || libc::munmap(bad(), 4096).into())?;
        b.case("munmap.zero_len", || {
            libc::munmap(0x10000 as *mut c_void, 0).into()
        })?;
        b.case("munmap.unmapped", || {
            libc::munmap(0x10000 as *mut c_void, 4096).into()
        })?;
        b.case("mprotect.unaligned", || {
            libc::mprotect(bad(), 4096, libc::PROT_READ).into()
        })?;
        b.case("mprotect.unmapped", || {
            libc::mprotect(0x10000 as *mut c_void, 4096, libc::PROT_READ).into()
        })?;
        let ro = libc::mmap(null, FLEN, libc::PROT_READ, sh, fro, 0);
        let rdw = libc::mmap(null, FLEN, libc::PROT_READ, sh, f, 0);
        if ro == libc::MAP_FAILED || rdw == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        b.case("mprotect.write_rdonly_shared", || {
            libc::mprotect(ro, FLEN, rw).into()
        })?;
        b.case("mprotect.bad_prot", || {
            libc::mprotect(rdw, FLEN, 0x0100_0000).into()
        })?;
        b.case("mprotect.write_ok", || libc::mprotect(rdw, FLEN, rw).into())?;
        b.case("mremap.unmapped", || {
            map_ret(libc::mremap(0x10000 as *mut c_void, 4096, 8192, 0))
        })?;
        b.case("mremap.bad_flags", || {
            map_ret(libc::mremap(rdw, FLEN, FLEN, 0x7000_0000))
        })?;
        b.case("mremap.shrink_ok", || {
            map_ret(libc::mremap(rdw, FLEN, 8192, 0))
        })?;
        b.case("munmap.ok", || libc::munmap(rdw, 8192).into())?;
        b.case("munmap.ok_rdonly", || libc::munmap(ro, FLEN).into())?;

        let cfr = |fin, oin: *mut loff_t, fout, oout: *mut loff_t, len, fl| {
            libc::copy_file_range(fin, oin, fout, oout, len, fl) as i64
        };
        let (mut a, mut c): (loff_t, loff_t) = (0, 100);
        b.case("copy_file_range.bad_fd", || {
            cfr(-1, &mut a, f, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.closed_fd_out", || {
            cfr(g, &mut a, CLOSED, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.bad_flags", || {
            cfr(g, &mut a, f, &mut c, 16, 1)
        })?;
        b.case("copy_file_range.pipe_in", || {
            cfr(pr, NULL_OFF, f, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.pipe_out", || {
            cfr(g, &mut a, pw, NULL_OFF, 16, 0)
        })?;
        b.case("copy_file_range.negative_off", || {
            let mut n: loff_t = -1;
            cfr(g, &mut a, f, &mut n, 16, 0)
        })?;
        b.case("copy_file_range.efault_off_in", || {
            cfr(g, bad(), f, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.rdonly_out", || {
            cfr(g, &mut a, fro, &mut c, 16, 0)
        })?;
        b.case("copy_file_range.same_file_overlap", || {
            let (mut x, mut y): (loff_t, loff_t) = (0, 100);
            cfr(f, &mut x, f, &mut y, 4096, 0)
        })?;
        b.case("copy_file_range.zero_len", || {
            cfr(g, &mut a, f, &mut c, 0, 0)
        })?;
        b.case("copy_file_range.ok", || cfr(g, &mut a, f, &mut c, 16, 0))?;
        b.state("copy_file_range.ok", "offsets", format!("{a},{c}"))?;
        b.case("copy_file_range.huge_len", || {
            let (mut x, mut y): (loff_t, loff_t) = (FLEN as loff_t - 100, 0);
            cfr(g, &mut x, f, &mut y, usize::MAX, 0)
        })?;

        let mut n: c_int = -1;
        b.case("ioctl.ficlone_pipe_dest", || {
            libc::ioctl(pw, libc::FICLONE, g).into()
        })?;
        b.case("ioctl.ficlone_pipe_src", || {
            libc::ioctl(f, libc::FICLONE, pr).into()
        })?;
        b.case("ioctl.ficlone_bad_src", || {
            libc::ioctl(f, libc::FICLONE, -1).into()
        })?;
        b.case("ioctl.fionread_pipe", || {
            libc::ioctl(pr, libc::FIONREAD, &mut n).into()
        })?;
        b.state("ioctl.fionread_pipe", "value", n)?;
        b.case("ioctl.fionread_efault", || {
            libc::ioctl(pr, libc::FIONREAD, bad::<c_int>()).into()
        })?;
        b.case("ioctl.bad_fd", || {
            libc::ioctl(-1, libc::FIONREAD, &mut n).into()
        })?;
        b.case("ioctl.unknown_request", || {
            libc::ioctl(f, 0x7fff_1234, &mut n).into()
        })?;
        b.case("ioctl.fideduperange_efault", || {
            libc::ioctl(f, FIDEDUPERANGE, bad::<c_void>()).into()
        })?;

        let at = |mode| {
            let s = libc::fopen(fp, mode);
            if !s.is_null() {
                libc::fseek(s, 100, libc::SEEK_SET);
            }
            s
        };
        let buf = data.as_ptr().cast::<c_void>();
        let s = at(rp);
        b.case("fwrite.ok", || libc::fwrite(buf, 1, 16, s) as i64)?;
        b.case("fputs.ok", || libc::fputs(c"SSSS".as_ptr(), s).into())?;
        b.case("fwrite.zero", || libc::fwrite(buf, 1, 0, s) as i64)?;
        b.case("fflush.ok", || libc::fflush(s).into())?;
        b.case("fclose.ok", || libc::fclose(s).into())?;
        let s = at(r);
        b.case("fwrite.rdonly_stream", || {
            libc::fwrite(buf, 1, 16, s) as i64
        })?;
        b.case("fputs.rdonly_stream", || {
            libc::fputs(c"SSSS".as_ptr(), s).into()
        })?;
        b.case("fflush.rdonly_stream", || libc::fflush(s).into())?;
        b.case("fclose.rdonly_stream", || libc::fclose(s).into())?;
        b.case("fflush.null", || libc::fflush(std::ptr::null_mut()).into())?;
    }
    Ok(())
}
