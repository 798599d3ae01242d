//! The user documentation of `splicecow` as data: the examples, exit statuses and notes of
//! every subcommand, the environment variables, and the library's own page. `--help` and
//! the man pages are both rendered from here (see [`crate::generate`]), so they cannot
//! drift apart.

use roff::{bold, italic, roman, Roff};
use splicecow_registry::env;

/// One example: a comment saying what it does, and the command line.
pub struct Example {
    /// What the example does (a shell comment in `--help`, a paragraph in the man page).
    pub what: &'static str,
    /// The command line.
    pub command: &'static str,
}

/// One exit status and what it means.
pub struct Status {
    /// The status, or a description of it (`CMD's status`).
    pub code: &'static str,
    /// What it means.
    pub meaning: &'static str,
}

/// The documentation of one command beyond its clap definition.
pub struct Page {
    /// Paragraphs shown after the one-line summary (`--help`, man DESCRIPTION).
    pub notes: &'static [&'static str],
    /// The examples.
    pub examples: &'static [Example],
    /// The exit statuses.
    pub exit: &'static [Status],
    /// Names of the environment variables the command reads or sets (see [`ENVIRONMENT`]).
    pub env: &'static [&'static str],
}

/// One environment variable: its name and what it does.
pub struct Variable {
    /// The variable's name.
    pub name: &'static str,
    /// What it does, who reads it, its default.
    pub meaning: &'static str,
}

/// Every environment variable the library and the CLI read or set.
pub const ENVIRONMENT: &[Variable] = &[
    Variable {
        name: env::DOMAIN,
        meaning: "The domain a process joins: the processes of one user with the same domain \
                  share one registry and protect each other. 1 to 64 characters of A-Z a-z 0-9 \
                  . _ -, not starting with a dot; default \"default\". Set by splicecow run (a \
                  fresh run-PID-NANOS domain, or --domain NAME); read by the library and by \
                  splicecow stats. An invalid name prints one line and the process runs in copy \
                  mode (detect: off).",
    },
    Variable {
        name: env::MODE,
        meaning: "What the library does: protect (default), detect, copy or off (see \
                  libsplicecow(7)). Read once when a process starts; an unknown value prints \
                  one line and uses protect. Set by splicecow run --mode.",
    },
    Variable {
        name: env::REPORT,
        meaning: "Detect mode: the file conflict reports (one JSON object per line) are \
                  appended to; default standard error. Set by splicecow run --report, which \
                  also takes it as the default for --report.",
    },
    Variable {
        name: env::LIB,
        meaning: "Where splicecow run, doctor and demo find libsplicecow.so, instead of \
                  looking beside the splicecow binary (the build tree) and under the prefix it \
                  is installed in (PREFIX/lib/splicecow/, PREFIX/lib/TRIPLET/splicecow/).",
    },
    Variable {
        name: env::PRIVATE_SNAPSHOTS,
        meaning: "1: MAP_PRIVATE file mappings show the file as it was at mmap time (their \
                  owner copies the affected pages before a covered mutation changes them); 0 \
                  (default): as the kernel shows them. Set by splicecow run \
                  --private-snapshots.",
    },
    Variable {
        name: env::SNAPSHOT_TIMEOUT_MS,
        meaning: "With private snapshots: how long a mutation waits for a mapping's owner to \
                  copy its pages, in milliseconds (default 1000). Then the mutation goes ahead, \
                  the mapping shows it, and snapshot_timeouts counts it.",
    },
    Variable {
        name: env::REGISTRY_PIPES,
        meaning: "Pipe records of a domain's registry, read only by the process that creates \
                  it (splicecow run, or the first preloaded process of a domain): a whole \
                  number from 16 to 1048576, default 2048. The registry also gets twice as \
                  many file records and half as many mapping records (at least 64); each pipe \
                  record holds 64 segments. A registry that exists keeps its size. A bad value \
                  prints one line and the default is used. splicecow run --registry-pipes \
                  takes precedence.",
    },
    Variable {
        name: env::STACKS,
        meaning: "Detect mode: 0 keeps no call stacks (the report's stack and segment.stack \
                  are then empty); default 1: the splicing call's stack is kept with each \
                  segment and the mutating call's is taken when it conflicts, both resolved to \
                  functions and lines by splicecow run at exit (or splicecow symbolize). Read \
                  once when a process starts.",
    },
    Variable {
        name: env::STRICT,
        meaning: "1: strict mode for the programs the domain's processes exec: an exec (execve, \
                  execv, execvp, execvpe, execl*, posix_spawn, posix_spawnp) of a statically \
                  linked or Go program puts the new program under strict mode's seccomp \
                  filter, served by the domain's splicecow run --strict. Set by splicecow run \
                  --strict; given to splicecow run, it is the same as --strict. 0 or unset: \
                  off. Another value prints one line and is taken as 0.",
    },
    Variable {
        name: env::SUPERVISOR,
        meaning: "Set by splicecow run --strict, for the library: PID:EXE, the run that \
                  supervises the domain's filters and the splicecow program that installs one \
                  before it execs a static program. Not meant to be set by hand.",
    },
    Variable {
        name: env::TEST_PAUSE,
        meaning: "For splicecow's own fault tests only: POINT:MICROSECONDS[,...] makes a \
                  process sleep at a point inside a registry update (record, commit, retire, \
                  holder) or a settle (settle) so that a test can kill it there. A bad item \
                  prints one line and is ignored. Never set it otherwise.",
    },
    Variable {
        name: "LD_PRELOAD",
        meaning: "splicecow run appends the library to it (once; other preloaded libraries \
                  stay). A process preloaded by hand, without splicecow run, joins \
                  $SPLICECOW_DOMAIN or the per-user default domain.",
    },
];

/// The top-level command.
pub const TOP: Page = Page {
    notes: &[
        "splicecow runs programs with libsplicecow.so preloaded (see libsplicecow(7)), so \
         that the bytes a splice(2), sendfile(2) or tee(2) moved from a file into a pipe \
         reach the pipe's reader exactly as the file held them when the call returned, \
         whatever happens to the file afterwards, while staying zero-copy when nobody \
         changes the file. It also reads the registries the library keeps in /dev/shm, \
         checks a machine and a program, and demonstrates the hazard.",
    ],
    examples: &[
        Example {
            what: "protect a pipeline",
            command: "splicecow run -- pv /var/log/big.log | gzip > big.gz",
        },
        Example {
            what: "see the hazard on this machine, without and with splicecow",
            command: "splicecow demo",
        },
        Example {
            what: "every domain of this user, and whether a process still uses it",
            command: "splicecow stats --all",
        },
    ],
    exit: &[
        Status {
            code: "N",
            meaning: "that of the subcommand (see `splicecow help SUBCOMMAND`)",
        },
        Status {
            code: "2",
            meaning: "usage error",
        },
    ],
    env: &[
        "SPLICECOW_DOMAIN",
        "SPLICECOW_MODE",
        "SPLICECOW_REPORT",
        "SPLICECOW_STACKS",
        "SPLICECOW_LIB",
        "SPLICECOW_PRIVATE_SNAPSHOTS",
        "SPLICECOW_SNAPSHOT_TIMEOUT_MS",
        "SPLICECOW_REGISTRY_PIPES",
        "SPLICECOW_STRICT",
        "SPLICECOW_SUPERVISOR",
        "SPLICECOW_TEST_PAUSE",
        "LD_PRELOAD",
    ],
};

/// `splicecow run`.
pub const RUN: Page = Page {
    notes: &[
        "CMD runs with LD_PRELOAD extended by libsplicecow.so (found beside this binary, \
         under the prefix it is installed in, or at $SPLICECOW_LIB) and SPLICECOW_DOMAIN, \
         SPLICECOW_MODE (and SPLICECOW_REPORT) set. The domain's registry is created before \
         CMD starts and removed once the last process started from CMD is gone (splicecow \
         waits for orphaned descendants too), unless --domain named a registry that already \
         existed. SIGINT, SIGTERM and SIGHUP are forwarded to CMD (a terminal's signals reach \
         CMD directly and are not sent twice). A signal that arrives after CMD has exited \
         makes splicecow wait 1 s more for the remaining descendants, then exit and leave the \
         registry to them.",
        "In detect mode without --report, conflict reports are collected in a temporary file \
         and copied to stderr at exit. --fail-on-conflict fails the run when the report file \
         has a line or the registry's `conflicts` counter is non-zero (it counts every \
         mutating call that hit an in-flight segment, and protect mode increments it too, for \
         conflicts it settled); the summary counts report lines (one per conflict) when there \
         are any, else that counter.",
        "In detect mode the report's call stacks (the mutating call's and the splice's, \
         module + offset per frame) are resolved at exit to function and file:line (DWARF), \
         else symbol + offset, and lines from the same pair of call sites are merged with a \
         count (see splicecow-symbolize(1)); the report file is rewritten so, and each \
         conflict is printed on stderr like a sanitizer report ending in a SUMMARY line. A \
         --report path ending in .sarif is written as SARIF 2.1.0 instead.",
    ],
    examples: &[
        Example {
            what: "protect a pipeline",
            command: "splicecow run -- pv access.log | nc collector 9000",
        },
        Example {
            what: "find code that splices a file and then changes it; keep the report",
            command: "splicecow run --mode detect --fail-on-conflict --report conflicts.jsonl -- python3 -m pytest",
        },
        Example {
            what: "a named domain, and the counters at the end",
            command: "splicecow run --stats --domain backup -- tar -cf - /srv | zstd > srv.tar.zst",
        },
    ],
    exit: &[
        Status {
            code: "N",
            meaning: "CMD's exit status, or 128+N when CMD was killed by signal N",
        },
        Status {
            code: "66",
            meaning: "with --fail-on-conflict: CMD exited 0 but splice/mutation conflicts were \
                      seen (a failing CMD's own status wins)",
        },
        Status {
            code: "126",
            meaning: "CMD could not be executed (e.g. permission denied)",
        },
        Status {
            code: "127",
            meaning: "CMD was not found",
        },
        Status {
            code: "2",
            meaning: "usage error",
        },
    ],
    env: &[
        "LD_PRELOAD",
        "SPLICECOW_LIB",
        "SPLICECOW_DOMAIN",
        "SPLICECOW_MODE",
        "SPLICECOW_REPORT",
        "SPLICECOW_STACKS",
        "SPLICECOW_PRIVATE_SNAPSHOTS",
        "SPLICECOW_REGISTRY_PIPES",
        "SPLICECOW_STRICT",
        "SPLICECOW_SUPERVISOR",
    ],
};

/// `splicecow stats`.
pub const STATS: Page = Page {
    notes: &[
        "The domain is --domain, else $SPLICECOW_DOMAIN, else \"default\".",
        "With --all: every registry of this user in /dev/shm, one line each with its main \
         counters, how many processes map it now (found in /proc/*/maps) and its state: \
         \"in use\"; \"idle\" (a named domain nobody uses now: its registry is meant to \
         outlive its processes, another process may join it any time, and it is kept); \
         \"stale\" (nobody uses it and nobody will: the domain of a splicecow run or demo \
         that is over, or a corrupt registry or one of another layout version, which no \
         process of this version can use; and unchanged for a minute); \"refused\" \
         (not a regular 0600 file of this user: look at it, remove it by hand). \
         --remove-stale removes the stale registries. Processes of this user whose \
         /proc/PID/maps cannot be read are named on stderr and not counted as users.",
    ],
    examples: &[
        Example {
            what: "the default domain (or $SPLICECOW_DOMAIN)",
            command: "splicecow stats",
        },
        Example {
            what: "one JSON object",
            command: "splicecow stats --domain backup --json",
        },
        Example {
            what: "print again every 2 seconds",
            command: "splicecow stats --watch 2",
        },
        Example {
            what: "every domain of this user; remove the registries of dead runs",
            command: "splicecow stats --all --remove-stale",
        },
    ],
    exit: &[
        Status {
            code: "0",
            meaning: "the counters were printed (--all: also when there is no registry)",
        },
        Status {
            code: "1",
            meaning: "no registry exists for the domain (nothing has run in it) or it cannot be \
                      read; --all: /dev/shm cannot be read or a stale registry could not be \
                      removed",
        },
        Status {
            code: "2",
            meaning: "usage error",
        },
    ],
    env: &["SPLICECOW_DOMAIN"],
};

/// `splicecow doctor`.
pub const DOCTOR: Page = Page {
    notes: &[
        "Each check prints one line starting with \u{2713} or \u{2717} and the reason. The \
         library line says which library splicecow run would preload and how it was found: \
         named by $SPLICECOW_LIB, beside this binary in the build tree, or under the prefix \
         this binary is installed in.",
        "With PROGRAM (a path, or a name looked up in PATH) it also checks whether splicecow \
         can see that program's calls: dynamically linked, not setuid/setgid, not Go, no \
         io_uring.",
    ],
    examples: &[
        Example {
            what: "this machine and the library",
            command: "splicecow doctor",
        },
        Example {
            what: "also whether pv's calls can be seen",
            command: "splicecow doctor pv",
        },
    ],
    exit: &[
        Status {
            code: "0",
            meaning: "every check passed",
        },
        Status {
            code: "1",
            meaning: "at least one check failed",
        },
        Status {
            code: "2",
            meaning: "usage error",
        },
    ],
    env: &["SPLICECOW_LIB", "SPLICECOW_REGISTRY_PIPES"],
};

/// `splicecow demo`.
pub const DEMO: Page = Page {
    notes: &[
        "Each case writes a file, splices 64 KiB of it into a pipe, changes the file (in \
              the same or in another process) and then reads the pipe back. Every case runs \
              once without splicecow and once with it preloaded in a fresh domain. The files \
              are written in /var/tmp (when it is not tmpfs), else $TMPDIR.",
    ],
    examples: &[Example {
        what: "the splice hazard on this kernel, without and with splicecow",
        command: "splicecow demo",
    }],
    exit: &[
        Status {
            code: "0",
            meaning: "every protected run read back exactly the bytes that were spliced",
        },
        Status {
            code: "1",
            meaning: "some protected run was corrupted (or failed)",
        },
        Status {
            code: "2",
            meaning: "libsplicecow.so was not found",
        },
    ],
    env: &["SPLICECOW_LIB"],
};

/// `splicecow symbolize`.
pub const SYMBOLIZE: Page = Page {
    notes: &[
        "Reads a detect-mode report (the JSON lines libsplicecow writes, see \
         libsplicecow(7)) and resolves every frame of its call stacks (the mutation's, \
         `stack`, and the splice's, `segment.stack`, each frame a module path and an \
         offset): function, file and line where the module has DWARF debug information, \
         else symbol + offset from its symbol table, else module + offset as recorded. \
         The modules are read from the paths the report names, so run it on the machine \
         (or an identical image) where the report was collected. Lines with the same \
         mutation kind and the same pair of call stacks are merged into one with a \
         `count`. Each conflict is printed on stderr like a sanitizer report, ending in a \
         SUMMARY line; splicecow run --mode detect does the same at exit.",
    ],
    examples: &[
        Example {
            what: "resolve a report collected in CI, JSON lines on stdout",
            command: "splicecow symbolize splicecow-report.jsonl",
        },
        Example {
            what: "write it as SARIF 2.1.0 for a code-scanning view",
            command: "splicecow symbolize splicecow-report.jsonl --output splicecow.sarif",
        },
    ],
    exit: &[
        Status {
            code: "0",
            meaning: "the report was read (whether or not it had conflicts)",
        },
        Status {
            code: "1",
            meaning: "the report could not be read or the output not written",
        },
        Status {
            code: "2",
            meaning: "usage error",
        },
    ],
    env: &["SPLICECOW_REPORT", "SPLICECOW_STACKS"],
};

/// `splicecow completions`.
pub const COMPLETIONS: Page = Page {
    notes: &[
        "Prints the completion script for SHELL on standard output. The Debian package \
              and scripts/install put the bash, zsh and fish scripts where those shells look \
              for them; this is for installing them by hand.",
    ],
    examples: &[
        Example {
            what: "bash, for this user",
            command:
                "splicecow completions bash > ~/.local/share/bash-completion/completions/splicecow",
        },
        Example {
            what: "zsh: a directory in $fpath",
            command: "splicecow completions zsh > ~/.zfunc/_splicecow",
        },
        Example {
            what: "fish",
            command: "splicecow completions fish > ~/.config/fish/completions/splicecow.fish",
        },
    ],
    exit: &[
        Status {
            code: "0",
            meaning: "the script was printed",
        },
        Status {
            code: "2",
            meaning: "usage error (an unknown shell)",
        },
    ],
    env: &[],
};

impl Page {
    /// The text clap prints after the options: examples, then exit statuses.
    pub fn after_help(&self) -> String {
        let mut out = String::from(if self.examples.len() == 1 {
            "Example:\n"
        } else {
            "Examples:\n"
        });
        for e in self.examples {
            out.push_str(&format!("  # {}\n  {}\n", e.what, e.command));
        }
        out.push_str("\nExit status:\n");
        let width = self.exit.iter().map(|s| s.code.len()).max().unwrap_or(0);
        for s in self.exit {
            out.push_str(&format!("  {:width$}  {}\n", s.code, s.meaning));
        }
        out.truncate(out.trim_end().len());
        out
    }

    /// The text `--help` prints under the usage line: `about`, then the notes.
    pub fn long_about(&self, about: &str) -> String {
        let mut out = about.to_string();
        for n in self.notes {
            out.push_str("\n\n");
            out.push_str(n);
        }
        out
    }
}

/// Requests every page starts with after `.TH`: ragged right, no hyphenation (option
/// names such as `--remove-stale` stay whole).
pub const LAYOUT_REQUESTS: &str = ".ad l\n.nh\n";

/// Stands for a `/` after which troff may break a line (`/\:`): a long path (a library
/// installed under a deep prefix) would otherwise make `man` warn that it cannot break
/// the line. The roff crate escapes backslashes, so the break point is put in by
/// [`finish`] after rendering.
const SLASH_BREAK: char = '\u{e000}';

/// `path` with a permitted line break after every `/`.
pub fn breakable(path: &str) -> String {
    path.replace('/', &SLASH_BREAK.to_string())
}

/// Rendered roff with the break points of [`breakable`] put in.
pub fn finish(roff: String) -> String {
    roff.replace(SLASH_BREAK, "/\\:")
}

/// A piece of a man page section.
pub enum Block<'a> {
    /// A filled paragraph.
    Para(&'a str),
    /// Items each with a tag (`.TP`).
    Tagged(Vec<(String, String)>),
    /// Bulleted items.
    Bullets(&'a [&'a str]),
    /// Lines shown as they are (a command, a JSON line).
    Verbatim(&'a [&'a str]),
}

/// Appends `.SH NAME` and its blocks.
pub fn section(roff: &mut Roff, name: &str, blocks: &[Block<'_>]) {
    roff.control("SH", [name]);
    let mut first = true;
    for b in blocks {
        match b {
            Block::Para(text) => {
                if !first {
                    roff.control("PP", []);
                }
                roff.text([roman(*text)]);
            }
            Block::Tagged(items) => {
                for (tag, text) in items {
                    roff.control("TP", []);
                    roff.text([bold(tag.as_str())]);
                    roff.text([roman(text.as_str())]);
                }
                // A following paragraph starts at the left margin again.
                roff.control("PP", []);
            }
            Block::Bullets(items) => {
                for item in *items {
                    roff.control("IP", ["\\(bu", "2"]);
                    roff.text([roman(*item)]);
                }
                roff.control("PP", []);
            }
            Block::Verbatim(lines) => {
                roff.control("PP", []);
                roff.control("RS", ["4"]);
                roff.control("nf", []);
                for l in *lines {
                    roff.text([roman(*l)]);
                }
                roff.control("fi", []);
                roff.control("RE", []);
            }
        }
        first = false;
    }
}

/// The ENVIRONMENT items for `names`.
pub fn environment_items(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| ENVIRONMENT.iter().find(|v| v.name == *n))
        .map(|v| (v.name.to_string(), v.meaning.to_string()))
        .collect()
}

/// Appends the sections a command's page has beyond clap's: ENVIRONMENT, EXIT STATUS,
/// EXAMPLES.
pub fn page_sections(roff: &mut Roff, page: &Page) {
    if !page.env.is_empty() {
        section(
            roff,
            "ENVIRONMENT",
            &[Block::Tagged(environment_items(page.env))],
        );
    }
    let exit: Vec<(String, String)> = page
        .exit
        .iter()
        .map(|s| (s.code.to_string(), s.meaning.to_string()))
        .collect();
    section(roff, "EXIT STATUS", &[Block::Tagged(exit)]);
    roff.control("SH", ["EXAMPLES"]);
    for (i, e) in page.examples.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        let mut what = e.what.to_string();
        if let Some(first) = what.get(..1) {
            what = first.to_uppercase() + what.get(1..).unwrap_or("");
        }
        roff.text([roman(format!("{what}:"))]);
        roff.control("RS", ["4"]);
        roff.control("nf", []);
        roff.text([bold(e.command)]);
        roff.control("fi", []);
        roff.control("RE", []);
    }
}

/// Appends a FILES section naming the registries and the library.
pub fn files_section(roff: &mut Roff, library: &str) {
    section(
        roff,
        "FILES",
        &[Block::Tagged(vec![
            (
                "/dev/shm/splicecow-EUID-DOMAIN".to_string(),
                "The registry of one domain of one user (mode 0600, 8.6 MiB, sparse). \
                 splicecow run removes the registries it created; the default domain's stays."
                    .to_string(),
            ),
            (
                breakable(library),
                "The preload library, libsplicecow(7).".to_string(),
            ),
        ])],
    );
}

/// Appends a SEE ALSO section.
pub fn see_also(roff: &mut Roff, pages: &[&str]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let (name, sect) = p.split_once('(').unwrap_or((p, ")"));
        line.push(bold(name));
        line.push(roman(if i + 1 < pages.len() {
            format!("({sect}, ")
        } else {
            format!("({sect}")
        }));
    }
    roff.text(line);
}

/// `libsplicecow(7)`: the library itself. `library` is its installed path.
pub fn library_page(version: &str, library: &str) -> String {
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "LIBSPLICECOW",
            "7",
            "",
            &format!("splicecow {version}"),
            "splicecow manual",
        ],
    );
    r.control("ad", ["l"]);
    r.control("nh", []);
    r.control("SH", ["NAME"]);
    r.text([roman(
        "libsplicecow.so - make splice(2), sendfile(2) and tee(2) from files into pipes \
         behave as if they had copied",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.control("nf", []);
    r.text([
        bold("LD_PRELOAD="),
        italic(breakable(library)),
        roman(" "),
        italic("command"),
    ]);
    r.text([
        bold("splicecow run"),
        roman(" ["),
        italic("options"),
        roman("] "),
        bold("--"),
        roman(" "),
        italic("command"),
    ]);
    r.control("fi", []);
    let synopsis_note = "Usually the library is loaded by splicecow-run(1), which gives the \
                         command and everything it starts a fresh domain and cleans it up.";
    section(
        &mut r,
        "DESCRIPTION",
        &[
            Block::Para(
                "splice(2) from a file into a pipe does not copy: the pipe holds references \
                 to the file's page cache. If anyone writes to, punches a hole in or truncates \
                 the file before the pipe's reader has consumed those bytes, the reader gets \
                 the new bytes or zeroes instead of what was spliced (splicecow demo shows it \
                 on the running kernel).",
            ),
            Block::Para(
                "libsplicecow.so is an LD_PRELOAD library that makes splice, sendfile and tee \
                 behave as if they had copied while staying zero-copy in the common case. \
                 Every file-to-pipe transfer is recorded as an in-flight segment (file, byte \
                 range, pipe, holder) in a shared-memory registry. Every call that is about to \
                 change a file looks the range up; when it overlaps an in-flight segment, it \
                 first settles each pipe holding one: drains the pipe's pending bytes and \
                 writes the very same bytes back, so the pipe now holds private copies; then \
                 the change goes ahead. When nobody touches the file nothing is ever copied.",
            ),
            Block::Para(
                "Readers need nothing: an unmodified, unshimmed cat, a socket or a static \
                 binary reading the pipe gets the right bytes. Only the processes that change \
                 files or move bytes into pipes need the library.",
            ),
            Block::Para(synopsis_note),
        ],
    );
    section(
        &mut r,
        "WHAT IS PROTECTED",
        &[
            Block::Para(
                "Every byte a splice or sendfile moved from a regular file into a pipe, or a \
                 shimmed tee or pipe-to-pipe splice carried on, reaches every reader of the \
                 pipe as the file held it when the call returned, whatever mutation a process \
                 of the domain starts afterwards. The transfers recorded:",
            ),
            Block::Bullets(&[
                "splice file to pipe, with and without off_in;",
                "sendfile and sendfile64 file to pipe (run as a non-blocking splice);",
                "tee and splice pipe to pipe: the segments are carried to the destination pipe.",
            ]),
            Block::Para("The mutations that settle first:"),
            Block::Bullets(&[
                "writes: write, writev (at the fd's offset; O_APPEND never conflicts), pwrite, \
                 pwrite64, pwritev, pwritev64, pwritev2, pwritev64v2 (RWF_APPEND: none);",
                "space: fallocate and fallocate64 punch hole and zero range (the range), \
                 collapse and insert range (from the offset to the end); plain allocation \
                 changes no data;",
                "truncation: ftruncate, ftruncate64, truncate, truncate64 (from the new length \
                 on);",
                "truncating opens: open, open64, openat, openat64, creat, creat64 and the \
                 __open_2 family with O_TRUNC; fopen, fopen64, freopen, freopen64 with a \"w\" \
                 mode (the whole file);",
                "copies into a file: copy_file_range, sendfile into a regular file, splice \
                 pipe to file (the destination range);",
                "clone ioctls: FICLONE, FICLONERANGE, FIDEDUPERANGE (the destination ranges);",
                "shared writable mappings: mmap and mmap64 with MAP_SHARED and PROT_WRITE, \
                 mprotect adding PROT_WRITE: the mapped range is settled first and, while such \
                 a mapping lives in the domain, splices from the file take the copy path \
                 (stores cannot be intercepted); munmap, mremap and mprotect keep the count \
                 exact;",
                "stdio: fwrite, fputs, fputc, putc, fprintf, printf, puts, fflush, fclose, \
                 fseek and the rest of the output functions (from the fd's offset to the end), \
                 and the exit flush (every open writable regular file of the process).",
            ]),
            Block::Para(
                "No byte is dropped, duplicated or reordered in a pipe under concurrency, \
                 signals, fork, vfork, exec, threads and the death (SIGKILL) of any \
                 participant: a settler killed between drain and write-back is finished from \
                 the settle journal by the next process that takes the registry lock. Every \
                 hooked call returns what the real call would, with the same errno, offsets \
                 and blocking behaviour, and the environment is passed to exec untouched. \
                 With SPLICECOW_PRIVATE_SNAPSHOTS=1, MAP_PRIVATE file mappings also show the \
                 file as it was at mmap time.",
            ),
        ],
    );
    section(
        &mut r,
        "MODES",
        &[
            Block::Para("SPLICECOW_MODE, read once per process:"),
            Block::Tagged(vec![
                (
                    "protect".into(),
                    "The default: zero-copy transfers, settle on conflict.".into(),
                ),
                (
                    "detect".into(),
                    "Zero-copy transfers, no settle: each conflicting segment is reported once \
                     as a JSON line (to $SPLICECOW_REPORT, else standard error), with the \
                     splicing and the mutating call stacks as module + offset frames \
                     (SPLICECOW_STACKS=0: none). The data is not protected; this mode finds code that splices a file and then changes it \
                     (splicecow run --mode detect --fail-on-conflict)."
                        .into(),
                ),
                (
                    "copy".into(),
                    "Every file-to-pipe transfer reads the file into fresh private pages and \
                     vmsplices them into the pipe; no page-cache page ever enters a pipe. Same \
                     return values, offsets and blocking behaviour."
                        .into(),
                ),
                ("off".into(), "Every hook calls straight through.".into()),
            ]),
            Block::Para(
                "An unknown mode prints one line and uses protect. An invalid domain name or a \
                 registry that cannot be used (corrupt, another layout version, not 0600, \
                 owned by someone else, a symlink, /dev/shm not writable) prints one line and \
                 turns protect into copy and detect into off. Bad values never stop the \
                 program.",
            ),
        ],
    );
    section(
        &mut r,
        "DOMAINS",
        &[
            Block::Para(
                "A domain is the processes that share one registry: the same effective user, \
                 the same SPLICECOW_DOMAIN (default \"default\"), the library loaded, in \
                 protect or detect mode. They protect each other: a mutation in one settles \
                 the pipes another filled. Processes preloaded by hand join the per-user \
                 default domain, so separately started processes of one user still protect \
                 each other; splicecow run gives its command a fresh run-PID-NANOS domain and \
                 removes its registry when the last process is gone. A process in copy or off \
                 mode settles nothing for anyone else.",
            ),
            Block::Para(
                "The registry is /dev/shm/splicecow-EUID-DOMAIN: sized by the process that \
                 creates it (8.6 MiB by default, only touched pages use memory; see \
                 SPLICECOW_REGISTRY_PIPES), mode 0600, created exclusively, checked on open \
                 (owner, type, mode, magic, layout version, size against the capacities it \
                 records). By default it holds at most 2048 pipes with live segments, 64 \
                 segments per pipe, 4096 files; a transfer that finds \
                 no room takes the copy path and is counted (copy_fallbacks_registry_full), it \
                 is never an error. splicecow stats shows a domain's counters; splicecow stats \
                 --all lists the domains of the user.",
            ),
        ],
    );
    section(
        &mut r,
        "DETECT-MODE REPORTS",
        &[
            Block::Para(
                "One JSON object per line, one line per (mutation, in-flight segment) \
                 conflict: time, domain, pid, exe, kind (write, pwrite, punch_hole, ftruncate, \
                 open_trunc, shared_mapping, stdio, ...), path, offset and len of the mutation \
                 (len null: to the end of the file), and the segment it hit (offset, len, \
                 pipe_ino, splicer_pid, splicer_exe, age_ms):",
            ),
            Block::Verbatim(&[
                "{\"time\":\"2026-11-26T00:00:00.123Z\",\"domain\":\"run-4242-17\",\"pid\":4250,",
                " \"exe\":\"/usr/bin/python3.11\",\"kind\":\"punch_hole\",\"path\":\"/var/log/app.log\",",
                " \"offset\":0,\"len\":65536,\"segment\":{\"offset\":0,\"len\":65536,",
                " \"pipe_ino\":123456,\"splicer_pid\":4249,\"splicer_exe\":\"/usr/bin/pv\",\"age_ms\":12}}",
            ]),
        ],
    );
    section(
        &mut r,
        "WHAT IS NOT PROTECTED",
        &[Block::Bullets(&[
            "Static binaries: LD_PRELOAD is applied by the dynamic loader, which they do not \
             have (splicecow doctor PROGRAM says so).",
            "Go programs and raw syscall(2): they bypass libc's symbols.",
            "glibc-internal calls that bypass the public symbols; POSIX AIO (aio_write, \
             lio_listio) is not covered.",
            "setuid and setgid programs: the loader ignores LD_PRELOAD for them.",
            "io_uring: operations are submitted through a shared ring, with no libc call to \
             hook.",
            "file-to-socket sendfile and splice: a socket cannot be drained and refilled like \
             a pipe.",
            "Unshimmed pipe-to-pipe relays: their segments are not carried on.",
            "Processes outside the domain: other users, other domains, unshimmed processes, \
             NFS peers.",
            "clone(CLONE_VM) without CLONE_VFORK or CLONE_SETTLS: the child shares its \
             parent's thread-local state.",
            "A few instructions between a read or write returning and its count being stored \
             in the settle journal (a death there loses or doubles those bytes); pipes grown \
             beyond 1 MiB are settled without the journal.",
            "A blocking plain write into an untracked pipe that a concurrent splice then \
             makes tracked may land between a settle's drain and refill.",
            "Work per call is bounded: a mutation settles at most 256 pipes, a process \
             tracks 256 mappings; beyond that the rest goes unprotected.",
            "vmsplice(2) moves user memory, not file pages, and is out of scope; private \
             snapshots are opt-in and a timed-out snapshot lets the mutation show through.",
        ])],
    );
    section(
        &mut r,
        "ENVIRONMENT",
        &[Block::Tagged(environment_items(&[
            "SPLICECOW_DOMAIN",
            "SPLICECOW_MODE",
            "SPLICECOW_REPORT",
            "SPLICECOW_STACKS",
            "SPLICECOW_PRIVATE_SNAPSHOTS",
            "SPLICECOW_SNAPSHOT_TIMEOUT_MS",
            "SPLICECOW_REGISTRY_PIPES",
            "SPLICECOW_STRICT",
            "SPLICECOW_SUPERVISOR",
            "SPLICECOW_TEST_PAUSE",
        ]))],
    );
    section(
        &mut r,
        "DIAGNOSTICS",
        &[Block::Para(
            "The library prints nothing unless asked (detect mode), except one line starting \
             with \"splicecow:\" on standard error for an unusable environment value or \
             registry.",
        )],
    );
    files_section(&mut r, library);
    see_also(
        &mut r,
        &[
            "splicecow(1)",
            "splicecow-run(1)",
            "splicecow-stats(1)",
            "splice(2)",
            "sendfile(2)",
            "tee(2)",
            "vmsplice(2)",
            "ld.so(8)",
        ],
    );
    finish(r.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `SPLICECOW_*` name that appears in the sources below `dir`.
    fn names_in(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                names_in(&path, out);
                continue;
            }
            if !matches!(path.extension().and_then(|e| e.to_str()), Some("rs" | "c")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("SPLICECOW_") {
                let tail = &rest[at..];
                let len = tail
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()))
                    .unwrap_or(tail.len());
                let name = tail[..len].trim_end_matches('_');
                if name.len() > "SPLICECOW_".len() {
                    out.insert(name.to_string());
                }
                rest = &tail[len.max(1)..];
            }
        }
    }

    #[test]
    fn every_variable_the_code_reads_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names = BTreeSet::new();
        for dir in ["preload/src", "registry/src", "cli/src"] {
            names_in(&root.join(dir), &mut names);
        }
        assert!(names.contains("SPLICECOW_MODE"), "{names:?}");
        names.extend(env::ALL.iter().map(|n| n.to_string()));
        for name in &names {
            assert!(
                ENVIRONMENT.iter().any(|v| v.name == name),
                "{name} is read by the code but not in manual::ENVIRONMENT"
            );
        }
        for page in [&TOP, &RUN, &STATS, &DOCTOR, &DEMO, &SYMBOLIZE, &COMPLETIONS] {
            for n in page.env {
                assert!(ENVIRONMENT.iter().any(|v| v.name == *n), "{n}");
            }
        }
    }

    #[test]
    fn after_help_has_examples_and_exit_statuses() {
        let text = RUN.after_help();
        assert!(text.starts_with("Examples:\n  # protect a pipeline\n  splicecow run"));
        assert!(
            text.contains("\nExit status:\n  N    CMD's exit status"),
            "{text}"
        );
        assert!(DEMO.after_help().starts_with("Example:\n"));
    }

    #[test]
    fn the_library_page_names_modes_and_gaps() {
        let page = library_page("0.0.0", "/usr/lib/x/libsplicecow.so");
        for needle in [
            ".TH LIBSPLICECOW 7",
            ".SH MODES",
            ".SH \"WHAT IS NOT PROTECTED\"",
            ".SH DOMAINS",
            "SPLICECOW_SNAPSHOT_TIMEOUT_MS",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
    }
}
