//! The environment splicecow reads, named once for the library, the CLI and the test
//! harness: every `SPLICECOW_*` variable, and the modes `SPLICECOW_MODE` takes.

/// Domain name (`[A-Za-z0-9._-]{1,64}`, not starting with `.`); unset: `default`.
pub const DOMAIN: &str = "SPLICECOW_DOMAIN";
/// What the library does: one of [`Mode::ALL`]'s names; unset: `protect`.
pub const MODE: &str = "SPLICECOW_MODE";
/// Detect mode: the file conflict reports are appended to (unset: stderr).
pub const REPORT: &str = "SPLICECOW_REPORT";
/// Where `splicecow run` finds the library.
pub const LIB: &str = "SPLICECOW_LIB";
/// `1`: register `MAP_PRIVATE` file mappings as snapshots.
pub const PRIVATE_SNAPSHOTS: &str = "SPLICECOW_PRIVATE_SNAPSHOTS";
/// How long a mutator waits for another process to snapshot its private pages (ms).
pub const SNAPSHOT_TIMEOUT_MS: &str = "SPLICECOW_SNAPSHOT_TIMEOUT_MS";
/// Pipe records of a registry this process creates (files: twice as many); read only
/// by the creator (see [`crate::layout::Capacity::from_env`]), never by a joiner.
pub const REGISTRY_PIPES: &str = "SPLICECOW_REGISTRY_PIPES";
/// Detect mode: `0` keeps no call stacks (default `1`: both stacks of every conflict).
pub const STACKS: &str = "SPLICECOW_STACKS";
/// `1`: in a `splicecow run --strict` domain, an exec of a statically linked or Go
/// program puts it under strict mode's seccomp filter (`run --strict` sets it).
pub const STRICT: &str = "SPLICECOW_STRICT";
/// Set by `splicecow run --strict` for its domain: `PID:EXE`, the supervisor's process
/// (it listens for filters' listeners) and the program that installs the filter.
pub const SUPERVISOR: &str = "SPLICECOW_SUPERVISOR";
/// Test pauses: `point:microseconds[,...]` (see [`crate::pause`]).
pub const TEST_PAUSE: &str = "SPLICECOW_TEST_PAUSE";
/// What every variable of splicecow's starts with.
pub const PREFIX: &str = "SPLICECOW_";

/// Every variable above, in the order the manual lists them.
pub const ALL: [&str; 11] = [
    DOMAIN,
    MODE,
    REPORT,
    STACKS,
    LIB,
    PRIVATE_SNAPSHOTS,
    SNAPSHOT_TIMEOUT_MS,
    REGISTRY_PIPES,
    STRICT,
    SUPERVISOR,
    TEST_PAUSE,
];

/// What the library does with splices and mutations (`SPLICECOW_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Zero-copy splices, settled on conflict (default).
    Protect,
    /// Zero-copy splices; conflicts are reported, not settled.
    Detect,
    /// Every file→pipe splice copies: the pipe never holds page-cache pages.
    Copy,
    /// Hooks call straight through.
    Off,
}

impl Mode {
    /// Every mode, the default first.
    pub const ALL: [Mode; 4] = [Mode::Protect, Mode::Detect, Mode::Copy, Mode::Off];

    /// The mode's name in `SPLICECOW_MODE`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Protect => "protect",
            Mode::Detect => "detect",
            Mode::Copy => "copy",
            Mode::Off => "off",
        }
    }

    /// One line saying what the mode does (for `--help` and the manual).
    pub fn summary(self) -> &'static str {
        match self {
            Mode::Protect => "Settle pipes before a conflicting mutation (copy on conflict)",
            Mode::Detect => "Do not settle; report each conflict as a JSON line",
            Mode::Copy => "Never put page-cache pages in a pipe: always copy",
            Mode::Off => "Load but do nothing",
        }
    }

    /// The mode named `s` (surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::Mode;

    #[test]
    fn modes_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.name()), Some(m));
        }
        assert_eq!(Mode::parse(" detect\n"), Some(Mode::Detect));
        assert_eq!(Mode::parse("protected"), None);
    }
}
