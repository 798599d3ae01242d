//! Detect mode: one JSON line per conflict, appended to `SPLICECOW_REPORT` or stderr.
//! Written after the table lock is released (formatting allocates and reads `/proc`).

use crate::ops::intent::{Mutation, Target};
use crate::ops::peers;
use crate::ops::settle::{self, Conflict};
use crate::ops::stacks::{self, Frame};
use crate::state::{runtime, subject};
use splicecow_registry::{sys, Registry};

/// Reports each of `conflicts`, segments of `segment_domain` found for mutation `m` of
/// bytes `[off, end)` by a process of this domain.
pub fn emit_all(m: Mutation, off: u64, end: u64, segment_domain: &str, conflicts: &[Conflict]) {
    let stack = frames_json(&stacks::own_frames());
    for c in conflicts {
        let splice_stack = frames_json(&splice_frames(segment_domain, c.segment.stack));
        emit(&line(
            m,
            (off, end),
            &c.segment,
            c.pipe_ino,
            segment_domain,
            (&stack, &splice_stack),
        ));
    }
}

/// The frames of splice stack `ticket` of a segment of domain `domain` (none when the
/// segment has no stack, or its record was since given to another stack).
fn splice_frames(domain: &str, ticket: u32) -> Vec<Frame> {
    if ticket == 0 {
        return Vec::new();
    }
    let read = |reg: &Registry| {
        let frames = settle::lock(reg).stack(ticket);
        frames.map_or_else(Vec::new, |f| stacks::interned_frames(reg, &f))
    };
    let rt = runtime::get();
    match rt.registry.as_ref().filter(|r| r.domain() == domain) {
        Some(own) => read(own),
        None => {
            let mut frames = Vec::new();
            if let Some(index) = peers::index() {
                peers::with(domain, index, |peer| frames = read(peer));
            }
            frames
        }
    }
}

/// A stack as a JSON array: `{"module":PATH,"offset":"0x.."}` per frame, or
/// `{"pc":"0x.."}` for an address of an unknown module.
fn frames_json(frames: &[Frame]) -> String {
    let items: Vec<String> = frames
        .iter()
        .map(|f| match f {
            Frame::InModule(path, off) => {
                format!("{{\"module\":{},\"offset\":\"{off:#x}\"}}", json_str(path))
            }
            Frame::Raw(pc) => format!("{{\"pc\":\"{pc:#x}\"}}"),
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn line(
    m: Mutation,
    (off, end): (u64, u64),
    s: &splicecow_registry::Segment,
    pipe_ino: u64,
    segment_domain: &str,
    (stack, splice_stack): (&str, &str),
) -> String {
    let rt = runtime::get();
    let now = sys::realtime_ns();
    let path = match m.target {
        Target::Fd(fd) => read_link(&format!("/proc/self/fd/{fd}")),
        // SAFETY: output functions require a valid stream; fileno only reads its fd.
        Target::Stream(s) => read_link(&format!("/proc/self/fd/{}", unsafe { libc::fileno(s) })),
        Target::Path { path, .. } => {
            // SAFETY: hooks pass the caller's NUL-terminated path, already used by fstatat.
            unsafe { std::ffi::CStr::from_ptr(path) }
                .to_string_lossy()
                .into_owned()
        }
    };
    let len = if end == u64::MAX {
        "null".to_string()
    } else {
        (end - off).to_string()
    };
    format!(
        concat!(
            "{{\"time\":{},\"domain\":{},\"pid\":{},\"exe\":{},\"kind\":{},\"path\":{},",
            "\"offset\":{},\"len\":{},\"stack\":{},\"segment\":{{\"domain\":{},\"offset\":{},\"len\":{},",
            "\"pipe_ino\":{},\"splicer_pid\":{},\"splicer_exe\":{},\"age_ms\":{},\"stack\":{}}}}}\n"
        ),
        json_str(&rfc3339(now)),
        json_str(&rt.domain),
        subject::pid(),
        json_str(&read_link(&subject::exe_link())),
        json_str(m.kind.name()),
        json_str(&path),
        off,
        len,
        stack,
        json_str(segment_domain),
        s.file_off,
        s.len,
        pipe_ino,
        s.splicer_pid,
        json_str(&read_link(&format!("/proc/{}/exe", s.splicer_pid))),
        now.saturating_sub(s.created_ns) / 1_000_000,
        splice_stack,
    )
}

fn emit(line: &str) {
    let rt = runtime::get();
    let fd = match &rt.report_path {
        Some(p) => sys::open(
            p,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )
        .ok(),
        None => None,
    };
    let out = fd.unwrap_or(2);
    // SAFETY: writing our own buffer; one write of an O_APPEND fd keeps lines whole.
    unsafe { libc::syscall(libc::SYS_write, out, line.as_ptr(), line.len()) };
    if let Some(fd) = fd {
        sys::close(fd);
    }
}

fn read_link(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// JSON string literal for `s`.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `CLOCK_REALTIME` nanoseconds as an RFC 3339 UTC timestamp with milliseconds.
fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000 / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_651_200_123_000_000),
            "2026-11-26T00:00:00.123Z"
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(super::json_str("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
