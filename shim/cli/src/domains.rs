//! `splicecow stats --all`: every domain of this user on the host, with its main counters,
//! the processes that use it now, and whether it is stale; `--remove-stale` removes the
//! stale registries.
//!
//! The registries are the files `/dev/shm/splicecow-<euid>-<domain>`
//! ([`splicecow_registry::registry_path`]). A process uses a domain while it maps that
//! file: the library maps its registry when the process starts, and `splicecow run` keeps
//! it mapped until the last process of its domain is gone. So the users are found in
//! `/proc/*/maps`, by the registry's device and inode number.

use crate::stats::{self, fields};
use crate::StatsArgs;
use splicecow_registry::{valid_domain, OpenError, Registry, Stats, LAYOUT_VERSION, MAGIC};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the registries are.
const SHM: &str = "/dev/shm";

/// What a registry is to its user now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Some process maps it.
    InUse,
    /// Nobody maps it, but it is a named domain (`default`, `--domain NAME`): its registry
    /// is meant to outlive its processes, and another one may join it any time.
    Idle,
    /// Nobody maps it and nobody will: the one-shot domain of a `splicecow run` or
    /// `splicecow demo` that is over, or a registry no splicecow of this layout can use
    /// (corrupt, another layout version); and it has not changed for a minute.
    Stale,
    /// The registry is refused (not a regular 0600 file of ours, or unreadable): left
    /// alone, to be looked at and removed by hand.
    Refused,
}

impl State {
    /// The state as `stats --all` prints it (JSON: with `_` for the space).
    pub fn name(self) -> &'static str {
        match self {
            State::InUse => "in use",
            State::Idle => "idle",
            State::Stale => "stale",
            State::Refused => "refused",
        }
    }
}

/// One registry file and what was found out about it.
pub struct Domain {
    /// The domain's name.
    pub name: String,
    /// The registry file.
    pub path: PathBuf,
    /// Processes that map the registry now.
    pub users: BTreeSet<i32>,
    /// Its counters, or why it could not be opened.
    pub stats: Result<Stats, OpenError>,
    /// In use, idle, stale or refused.
    pub state: State,
    /// Why it is stale (empty otherwise).
    pub why: &'static str,
    /// With `--remove-stale`: whether it was removed, or why not.
    pub removed: Option<Result<(), String>>,
}

/// The effective uid, as the registry names use it.
fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
}

/// `dev_t` as glibc encodes a (major, minor) pair.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// The (device, inode) a line of `/proc/<pid>/maps` maps, if it maps a file.
/// A line is `start-end perms offset major:minor inode [path]`, device numbers in hex.
pub fn maps_line_file(line: &[u8]) -> Option<(u64, u64)> {
    let line = std::str::from_utf8(line.get(..line.len().min(256))?).ok()?;
    let mut words = line.split_ascii_whitespace();
    let dev = words.nth(3)?;
    let ino: u64 = words.next()?.parse().ok()?;
    if ino == 0 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let major = u64::from_str_radix(major, 16).ok()?;
    let minor = u64::from_str_radix(minor, 16).ok()?;
    Some((makedev(major, minor), ino))
}

/// Whether `name` is a domain that only one run of the CLI ever uses: `run-PID-NANOS`
/// (`splicecow run` without `--domain`) or `demo-PID` (`splicecow demo`).
pub fn is_one_shot(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix("run-") {
        return rest
            .split_once('-')
            .is_some_and(|(pid, nanos)| digits(pid) && digits(nanos));
    }
    name.strip_prefix("demo-").is_some_and(digits)
}

/// The registry files of this user: (domain, path, device, inode).
fn registry_files(uid: u32) -> std::io::Result<Vec<(String, PathBuf, u64, u64)>> {
    let prefix = format!("splicecow-{uid}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(SHM)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(domain) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if !valid_domain(domain) {
            continue;
        }
        let path = entry.path();
        // Not followed: a symlink is reported as refused, like the library refuses it.
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        out.push((domain.to_string(), path, meta.dev(), meta.ino()));
    }
    out.sort();
    Ok(out)
}

/// Who maps which of `files`, from `/proc/*/maps`.
struct Users {
    /// Processes per (device, inode).
    by_file: BTreeMap<(u64, u64), BTreeSet<i32>>,
    /// Processes running as this user whose maps could not be read.
    uninspectable: Vec<i32>,
}

/// The effective uid in `/proc/<pid>/status`.
fn process_euid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_ascii_whitespace().nth(2)?.parse().ok()
}

fn scan_users(files: &BTreeSet<(u64, u64)>, uid: u32) -> Users {
    let mut users = Users {
        by_file: BTreeMap::new(),
        uninspectable: Vec::new(),
    };
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return users;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        match std::fs::read(format!("/proc/{pid}/maps")) {
            Ok(maps) => {
                for line in maps.split(|b| *b == b'\n') {
                    if let Some(file) = maps_line_file(line).filter(|f| files.contains(f)) {
                        users.by_file.entry(file).or_default().insert(pid);
                    }
                }
            }
            // Gone meanwhile: it uses nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                if process_euid(pid) == Some(uid) {
                    users.uninspectable.push(pid);
                }
            }
        }
    }
    users
}

/// The layout version a registry file says it has, when it starts with splicecow's magic
/// (a registry of another layout also has another size, which the registry crate reports
/// as foreign before it looks at the version).
fn peek_version(path: &Path) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut head = [0u8; 12];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?
        .read_exact(&mut head)
        .ok()?;
    let (magic, rest) = head.split_at(8);
    let magic = u64::from_le_bytes(magic.try_into().ok()?);
    let version = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    (magic == MAGIC).then_some(version)
}

/// How long an unused registry must have been left unchanged before it can be stale: a
/// registry just created or written (a test planting a corrupt one, a run starting) is not.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `path` was modified within [`STALE_AFTER`].
fn recently_changed(path: &Path) -> bool {
    path.symlink_metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < STALE_AFTER)
}

/// The pid in a one-shot domain's name (`run-PID-NANOS`, `demo-PID`).
fn creator_pid(name: &str) -> Option<i32> {
    let rest = name
        .strip_prefix("run-")
        .or_else(|| name.strip_prefix("demo-"))?;
    rest.split('-').next()?.parse().ok()
}

/// Every registry of this user, with users, counters and state, and the processes of
/// this user whose maps could not be read.
fn survey() -> std::io::Result<(Vec<Domain>, Vec<i32>)> {
    let uid = euid();
    let files = registry_files(uid)?;
    let keys: BTreeSet<(u64, u64)> = files.iter().map(|(_, _, d, i)| (*d, *i)).collect();
    let users = scan_users(&keys, uid);
    let mut out = Vec::new();
    for (name, path, dev, ino) in files {
        let users_of = users.by_file.get(&(dev, ino)).cloned().unwrap_or_default();
        let mut stats = Registry::open_existing(&name).map(|r| r.stats());
        if let Err(OpenError::Foreign) = stats {
            if let Some(v) = peek_version(&path).filter(|v| *v != LAYOUT_VERSION) {
                stats = Err(OpenError::Version(v));
            }
        }
        // A creator whose maps could not be read may still be using its domain.
        let creator_unknown = is_one_shot(&name)
            && creator_pid(&name).is_some_and(|p| users.uninspectable.contains(&p));
        let (state, why) = if !users_of.is_empty() || creator_unknown {
            (State::InUse, "")
        } else if recently_changed(&path) {
            (State::Idle, "")
        } else {
            match &stats {
                Err(OpenError::Foreign) => (State::Stale, "corrupt, or not a splicecow registry"),
                Err(OpenError::Version(_)) => (
                    State::Stale,
                    "another layout version: no splicecow of this version can use it",
                ),
                Err(OpenError::Missing) => (State::Stale, "removed meanwhile"),
                Err(_) => (State::Refused, ""),
                Ok(_) if is_one_shot(&name) => (State::Stale, "its run is over"),
                Ok(_) => (State::Idle, ""),
            }
        };
        out.push(Domain {
            name,
            path,
            users: users_of,
            stats,
            state,
            why,
            removed: None,
        });
    }
    Ok((out, users.uninspectable))
}

/// The counters `stats --all` shows per domain (all of them are in `--json`).
const COLUMNS: [&str; 6] = [
    "splices",
    "bytes_zero_copy",
    "settles",
    "bytes_copied",
    "conflicts",
    "live_segments",
];

/// The table `stats --all` prints: a header line and one line per domain.
pub fn table(domains: &[Domain]) -> String {
    let mut rows: Vec<Vec<String>> = vec![["domain", "state", "processes"]
        .iter()
        .chain(COLUMNS.iter())
        .map(|s| s.to_string())
        .collect()];
    for d in domains {
        let mut row = vec![
            d.name.clone(),
            d.state.name().to_string(),
            d.users.len().to_string(),
        ];
        match &d.stats {
            Ok(s) => {
                let values: BTreeMap<&str, u64> = fields(s).into_iter().collect();
                row.extend(
                    COLUMNS
                        .iter()
                        .map(|c| values.get(c).map_or("-".into(), |v| v.to_string())),
                );
            }
            Err(_) => row.extend(COLUMNS.iter().map(|_| "-".to_string())),
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // Names and states left-aligned, numbers right-aligned.
            if i < 2 {
                line.push_str(&format!("{cell:<w$}"));
            } else {
                line.push_str(&format!("{cell:>w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One JSON object for `d`: `stats --json`'s fields (when readable) plus `path`,
/// `state`, `processes`, `error`, `stale_because` and `removed`.
pub fn json(d: &Domain) -> serde_json::Value {
    let mut v = match &d.stats {
        Ok(s) => stats::json(&d.name, s),
        Err(_) => serde_json::json!({ "domain": d.name }),
    };
    if let Some(map) = v.as_object_mut() {
        map.insert("path".into(), d.path.display().to_string().into());
        map.insert("state".into(), d.state.name().replace(' ', "_").into());
        map.insert(
            "processes".into(),
            d.users.iter().copied().collect::<Vec<i32>>().into(),
        );
        map.insert(
            "error".into(),
            match &d.stats {
                Ok(_) => serde_json::Value::Null,
                Err(e) => e.to_string().into(),
            },
        );
        map.insert(
            "stale_because".into(),
            if d.why.is_empty() {
                serde_json::Value::Null
            } else {
                d.why.into()
            },
        );
        map.insert("removed".into(), matches!(d.removed, Some(Ok(()))).into());
    }
    v
}

/// Removes a stale registry; refuses anything else.
fn remove(d: &Domain) -> Result<(), String> {
    if d.state != State::Stale {
        return Err(format!("{} is {}, not stale", d.name, d.state.name()));
    }
    // Not followed, and only the file this survey looked at (a symlink is refused above).
    match std::fs::remove_file(&d.path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `splicecow stats --all [--json] [--remove-stale]`; returns the exit status.
pub fn main(args: StatsArgs) -> i32 {
    let (mut domains, uninspectable) = match survey() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("splicecow: cannot list {SHM}: {e}");
            return 1;
        }
    };
    let mut code = 0;
    if args.remove_stale {
        for d in domains.iter_mut().filter(|d| d.state == State::Stale) {
            let r = remove(d);
            if r.is_err() {
                code = 1;
            }
            d.removed = Some(r);
        }
    }
    if args.json {
        for d in &domains {
            println!("{}", json(d));
        }
    } else if domains.is_empty() {
        println!("no registries of this user in {SHM}");
    } else {
        print!("{}", table(&domains));
    }
    for d in &domains {
        if let Err(e) = &d.stats {
            eprintln!("splicecow: domain {}: {e}", d.name);
        }
        if d.state == State::Stale && d.removed.is_none() {
            eprintln!(
                "splicecow: domain {} is stale ({}): `splicecow stats --all --remove-stale` removes it",
                d.name, d.why
            );
        }
        match &d.removed {
            Some(Ok(())) => eprintln!("splicecow: removed {} (stale: {})", d.path.display(), d.why),
            Some(Err(e)) => eprintln!("splicecow: cannot remove {}: {e}", d.path.display()),
            None => {}
        }
    }
    if !uninspectable.is_empty() && !args.json {
        let pids: Vec<String> = uninspectable.iter().map(|p| p.to_string()).collect();
        eprintln!(
            "splicecow: not counted as users: process(es) {} of this user, whose \
             /proc/PID/maps cannot be read",
            pids.join(", ")
        );
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_device_and_inode() {
        let line =
            b"7f1c2a000000-7f1c2a763000 rw-s 00000000 00:1a 123456    /dev/shm/splicecow-0-default";
        assert_eq!(maps_line_file(line), Some((makedev(0, 0x1a), 123456)));
        let deleted = b"7f1c2a000000-7f1c2a763000 rw-s 00000000 fd:01 99 /dev/shm/x (deleted)";
        assert_eq!(maps_line_file(deleted), Some((makedev(0xfd, 1), 99)));
        assert_eq!(
            maps_line_file(b"7ffd1000-7ffd2000 rw-p 00000000 00:00 0  [stack]"),
            None
        );
        assert_eq!(maps_line_file(b""), None);
        assert_eq!(maps_line_file(b"garbage"), None);
    }

    #[test]
    fn makedev_matches_the_kernel_encoding_of_this_file() {
        // /proc/self/maps names this executable's device and inode.
        let exe = std::env::current_exe().unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let maps = std::fs::read("/proc/self/maps").unwrap();
        let found = maps
            .split(|b| *b == b'\n')
            .filter_map(maps_line_file)
            .any(|f| f == (meta.dev(), meta.ino()));
        assert!(found, "{} not found in /proc/self/maps", exe.display());
    }

    #[test]
    fn one_shot_domains_are_those_of_run_and_demo() {
        assert!(is_one_shot("run-4242-1795652450958395441"));
        assert!(is_one_shot("demo-77"));
        for name in [
            "default", "run-", "run-1", "run-a-2", "backup", "demo-", "demo-x",
        ] {
            assert!(!is_one_shot(name), "{name}");
        }
    }

    #[test]
    fn the_table_aligns_and_marks_unreadable_registries() {
        let d = |name: &str, stats, state| Domain {
            name: name.into(),
            path: Path::new(SHM).join(name),
            users: BTreeSet::new(),
            stats,
            state,
            why: "",
            removed: None,
        };
        let ok = Stats {
            splices: 12,
            ..Stats::default()
        };
        let t = table(&[
            d("default", Ok(ok), State::Idle),
            d("run-1-2", Err(OpenError::Version(2)), State::Stale),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("domain   state  processes  splices"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("default  idle           0       12"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("run-1-2  stale          0        -"),
            "{t}"
        );
    }
}
