//! Detect-mode reports made readable: the frames of their call stacks resolved to
//! function, file and line (DWARF, through `addr2line`), else symbol + offset (the ELF
//! symbol tables, through `object`), else left as module + offset; the same pair of call
//! sites counted once; printed like a sanitizer report, or written as SARIF 2.1.0.
//! `splicecow run` does this at exit, `splicecow symbolize REPORT` for a report
//! collected elsewhere (on the machine whose files the frames name).

use crate::SymbolizeArgs;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

/// Frames of each stack the stderr summary shows.
const SHOWN_FRAMES: usize = 8;

/// A module's symbol table: `(address, size, name)` of its functions, by address.
type Symbols = Vec<(u64, u64, String)>;

/// What is known of one module (executable or shared object).
struct Module {
    /// Its DWARF, when the file could be read.
    dwarf: Option<addr2line::Loader>,
    /// Its function symbols (the full table, else the dynamic one).
    symbols: Symbols,
}

/// Resolves frames, reading each module once.
#[derive(Default)]
pub struct Symbolizer {
    modules: HashMap<String, Option<Module>>,
}

/// The function symbols of the ELF file at `path`.
fn symbols_of(path: &str) -> Symbols {
    use object::{Object, ObjectSymbol, SymbolKind};
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Vec::new();
    };
    let table: Vec<_> = if file.symbols().next().is_some() {
        file.symbols().collect()
    } else {
        file.dynamic_symbols().collect()
    };
    let mut out: Symbols = table
        .iter()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    out.sort();
    out
}

impl Symbolizer {
    fn module(&mut self, path: &str) -> Option<&Module> {
        self.modules
            .entry(path.to_string())
            .or_insert_with(|| {
                Path::new(path).is_file().then(|| Module {
                    dwarf: addr2line::Loader::new(path).ok(),
                    symbols: symbols_of(path),
                })
            })
            .as_ref()
    }

    /// The resolved frames of `frame` (a report frame with `module` and `offset`): one
    /// per inlined function and the function it is inlined into, innermost first, each a
    /// copy of `frame` with `function`, `file`, `line` (and `inlined`) where DWARF has
    /// them, else with `symbol` (`name+0xN`); else `frame` unchanged.
    pub fn resolve(&mut self, frame: &Value) -> Vec<Value> {
        let (Some(path), Some(offset)) = (
            frame["module"].as_str(),
            frame["offset"]
                .as_str()
                .and_then(|o| u64::from_str_radix(o.trim_start_matches("0x"), 16).ok()),
        ) else {
            return vec![frame.clone()];
        };
        let Some(module) = self.module(path) else {
            return vec![frame.clone()];
        };
        let mut out = Vec::new();
        if let Some(mut frames) = module
            .dwarf
            .as_ref()
            .and_then(|d| d.find_frames(offset).ok())
        {
            while let Ok(Some(f)) = frames.next() {
                let mut v = frame.clone();
                let function = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok().map(|s| s.into_owned()));
                let Some(function) = function else { continue };
                v["function"] = json!(function);
                if let Some(loc) = &f.location {
                    if let Some(file) = loc.file {
                        v["file"] = json!(file);
                    }
                    if let Some(line) = loc.line {
                        v["line"] = json!(line);
                    }
                }
                out.push(v);
            }
        }
        let n = out.len();
        for v in out.iter_mut().take(n.saturating_sub(1)) {
            v["inlined"] = json!(true);
        }
        if out.is_empty() {
            let mut v = frame.clone();
            let at = module.symbols.partition_point(|s| s.0 <= offset);
            if let Some((addr, size, name)) = at.checked_sub(1).and_then(|i| module.symbols.get(i))
            {
                if offset < addr + size {
                    let name = addr2line::demangle_auto(name.into(), None);
                    v["symbol"] = json!(format!("{name}+{:#x}", offset - addr));
                }
            }
            out.push(v);
        }
        out
    }

    /// `stack` with every frame resolved (frames already resolved are kept).
    pub fn resolve_stack(&mut self, stack: &Value) -> Value {
        let Some(frames) = stack.as_array() else {
            return stack.clone();
        };
        let resolved = frames.iter().flat_map(|f| {
            if f.get("function").is_some() || f.get("symbol").is_some() {
                vec![f.clone()]
            } else {
                self.resolve(f)
            }
        });
        Value::Array(resolved.collect())
    }
}

/// The report lines of `text` that are JSON objects (others are skipped).
pub fn parse_report(text: impl BufRead) -> Vec<Value> {
    text.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(Value::is_object)
        .collect()
}

/// The call sites of a stack: its frames' `module` + `offset` (or `pc`), ignoring what
/// resolution added.
fn sites(stack: &Value) -> Vec<String> {
    let frames = stack.as_array().map(Vec::as_slice).unwrap_or(&[]);
    frames
        .iter()
        .filter(|f| f.get("inlined").is_none())
        .map(|f| match (f["module"].as_str(), f["offset"].as_str()) {
            (Some(m), Some(o)) => format!("{m}+{o}"),
            _ => f["pc"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// Resolves every stack of `lines` and keeps one line per (mutation kind, mutation
/// stack, splice stack), with `count` the number of lines it stands for. Lines without
/// stacks are kept as they are (each counts once).
pub fn symbolize(lines: Vec<Value>, sym: &mut Symbolizer) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen: HashMap<(String, Vec<String>, Vec<String>), usize> = HashMap::new();
    for mut v in lines {
        let count = v["count"].as_u64().unwrap_or(1);
        let mutation = sites(&v["stack"]);
        let splice = sites(&v["segment"]["stack"]);
        if !mutation.is_empty() || !splice.is_empty() {
            let key = (
                v["kind"].as_str().unwrap_or("?").to_string(),
                mutation,
                splice,
            );
            if let Some(&i) = seen.get(&key) {
                if let Some(first) = out.get_mut(i) {
                    first["count"] = json!(first["count"].as_u64().unwrap_or(1) + count);
                }
                continue;
            }
            seen.insert(key, out.len());
        }
        if v.get("stack").is_some() {
            v["stack"] = sym.resolve_stack(&v["stack"]);
        }
        if v["segment"].get("stack").is_some() {
            v["segment"]["stack"] = sym.resolve_stack(&v["segment"]["stack"]);
        }
        v["count"] = json!(count);
        out.push(v);
    }
    out
}

/// Is the module at `path` part of the system (the C library, the loader, the vDSO)
/// rather than the program's own code?
fn is_system(path: &str) -> bool {
    [
        "/lib/",
        "/lib64/",
        "/usr/lib/",
        "/usr/lib64/",
        "/usr/libexec/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        || !path.starts_with('/')
}

/// Is the source file at `path` a toolchain's or a dependency's (Rust's std, C and C++
/// headers, crates from the cargo registry) rather than the program's own?
fn is_toolchain_file(path: &str) -> bool {
    path.starts_with("/rustc/")
        || path.starts_with("/usr/include/")
        || path.contains("/.rustup/toolchains/")
        || path.contains("/.cargo/registry/")
}

/// The frame of `stack` that best names the program's own code: the first outside the
/// system's libraries with a source line that is not a toolchain's, else the first
/// outside them with a line, else the first outside them, else the first.
fn own_frame(stack: &Value) -> Option<&Value> {
    let frames = stack.as_array()?;
    let own = |f: &&Value| !is_system(f["module"].as_str().unwrap_or(""));
    let lined = |f: &&Value| f.get("line").is_some();
    frames
        .iter()
        .filter(own)
        .filter(lined)
        .find(|f| !is_toolchain_file(f["file"].as_str().unwrap_or("")))
        .or_else(|| frames.iter().filter(own).find(lined))
        .or_else(|| frames.iter().find(own))
        .or_else(|| frames.first())
}

/// `fn file:line (module+offset)` of a frame, as much of it as is known.
fn describe(f: &Value) -> String {
    let place = match (f["module"].as_str(), f["offset"].as_str()) {
        (Some(m), Some(o)) => format!("({m}+{o})"),
        _ => format!("({})", f["pc"].as_str().unwrap_or("?")),
    };
    let name = f["function"]
        .as_str()
        .or_else(|| f["symbol"].as_str())
        .unwrap_or("<unknown>");
    match (f["file"].as_str(), f["line"].as_u64()) {
        (Some(file), Some(line)) => format!("{name} {file}:{line} {place}"),
        (Some(file), None) => format!("{name} {file} {place}"),
        _ => format!("{name} {place}"),
    }
}

/// Where a frame points, for a `SUMMARY:` line: `file:line in fn`, else `fn`, else the
/// module + offset.
fn summary_place(f: Option<&Value>) -> String {
    let Some(f) = f else {
        return "an unknown place".into();
    };
    let name = f["function"].as_str().or_else(|| f["symbol"].as_str());
    match (f["file"].as_str(), f["line"].as_u64(), name) {
        (Some(file), Some(line), Some(n)) => format!("{file}:{line} in {n}"),
        (_, _, Some(n)) => format!("{n} {}", describe_place(f)),
        _ => describe_place(f),
    }
}

fn describe_place(f: &Value) -> String {
    match (f["module"].as_str(), f["offset"].as_str()) {
        (Some(m), Some(o)) => format!("({m}+{o})"),
        _ => format!("({})", f["pc"].as_str().unwrap_or("?")),
    }
}

fn push_frames(out: &mut String, stack: &Value) {
    let frames = stack.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if frames.is_empty() {
        out.push_str("    (no stack recorded)\n");
    }
    for (i, f) in frames.iter().take(SHOWN_FRAMES).enumerate() {
        out.push_str(&format!("    #{i} {}\n", describe(f)));
    }
    if frames.len() > SHOWN_FRAMES {
        out.push_str(&format!("    ... {} more\n", frames.len() - SHOWN_FRAMES));
    }
}

/// The sanitizer-shaped text of one (symbolized) report line.
pub fn sanitizer_text(v: &Value) -> String {
    let kind = v["kind"].as_str().unwrap_or("?");
    let seg = &v["segment"];
    let count = v["count"].as_u64().unwrap_or(1);
    let len = v["len"]
        .as_u64()
        .map_or("to the end of the file".to_string(), |n| {
            format!("of {n} bytes")
        });
    let mut out = String::from("==================\n");
    out.push_str(&format!(
        "WARNING: splicecow: splice-then-{kind} on {}{}\n",
        v["path"].as_str().unwrap_or("?"),
        if count > 1 {
            format!(" ({count} times)")
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "  {kind} {len} at offset {} by pid {} ({}):\n",
        v["offset"],
        v["pid"],
        v["exe"].as_str().unwrap_or("?")
    ));
    push_frames(&mut out, &v["stack"]);
    out.push_str(&format!(
        "  changed bytes still in flight in pipe {}: spliced ({} bytes at offset {}) by pid {} ({}), {} ms earlier:\n",
        seg["pipe_ino"],
        seg["len"],
        seg["offset"],
        seg["splicer_pid"],
        seg["splicer_exe"].as_str().unwrap_or("?"),
        seg["age_ms"]
    ));
    push_frames(&mut out, &seg["stack"]);
    out.push_str(&format!(
        "SUMMARY: splicecow: splice-then-{kind} at {}\n",
        summary_place(own_frame(&v["stack"]))
    ));
    out.push_str("==================\n");
    out
}

/// A SARIF location for a frame: its source file and line when known, else its module.
fn sarif_location(f: &Value) -> Value {
    let physical = match (f["file"].as_str(), f["line"].as_u64()) {
        (Some(file), Some(line)) => json!({
            "artifactLocation": {"uri": file_uri(file)},
            "region": {"startLine": line},
        }),
        _ => {
            let mut p = json!({
                "artifactLocation": {"uri": file_uri(f["module"].as_str().unwrap_or("unknown"))},
            });
            if let Some(off) = f["offset"]
                .as_str()
                .and_then(|o| u64::from_str_radix(o.trim_start_matches("0x"), 16).ok())
            {
                p["address"] = json!({"relativeAddress": off});
            }
            p
        }
    };
    let mut loc = json!({"physicalLocation": physical});
    if let Some(name) = f["function"].as_str().or_else(|| f["symbol"].as_str()) {
        loc["logicalLocations"] = json!([{"name": name, "kind": "function"}]);
    }
    loc
}

fn file_uri(path: &str) -> String {
    if path.starts_with('/') {
        format!("file://{path}")
    } else {
        path.to_string()
    }
}

fn sarif_stack(label: &str, stack: &Value) -> Value {
    let frames = stack.as_array().map(Vec::as_slice).unwrap_or(&[]);
    json!({
        "message": {"text": label},
        "frames": frames.iter().map(|f| json!({"location": sarif_location(f)})).collect::<Vec<_>>(),
    })
}

/// The (symbolized) report lines as one SARIF 2.1.0 log: one result per line, located
/// at the mutation's frame in the program's own code, with both stacks.
pub fn sarif(lines: &[Value]) -> Value {
    let results: Vec<Value> = lines
        .iter()
        .map(|v| {
            let kind = v["kind"].as_str().unwrap_or("?");
            let seg = &v["segment"];
            let top = own_frame(&v["stack"]);
            let splice_top = own_frame(&seg["stack"]);
            let count = v["count"].as_u64().unwrap_or(1);
            let text = format!(
                "{kind} of {} changed bytes still in flight in a pipe (spliced at {}); \
                 the pipe's reader gets the new bytes instead of the spliced ones",
                v["path"].as_str().unwrap_or("?"),
                summary_place(splice_top)
            );
            let mut r = json!({
                "ruleId": "splice-then-mutate",
                "level": "error",
                "message": {"text": text},
                "locations": [top.map_or(json!({}), sarif_location)],
                "stacks": [
                    sarif_stack(&format!("{kind} (mutation)"), &v["stack"]),
                    sarif_stack("splice", &seg["stack"]),
                ],
                "occurrenceCount": count,
                "properties": {"kind": kind, "count": count, "report": v},
            });
            if let Some(f) = splice_top {
                r["relatedLocations"] =
                    json!([{"id": 1, "message": {"text": "the splice"}, "physicalLocation": sarif_location(f)["physicalLocation"]}]);
            }
            r
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "splicecow",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": [{
                    "id": "splice-then-mutate",
                    "name": "SpliceThenMutate",
                    "shortDescription": {"text": "A file is changed while bytes spliced from it are still in a pipe"},
                    "fullDescription": {"text": "splice(2) from a file into a pipe does not copy: \
                        the pipe holds the file's page-cache pages, so changing the file before \
                        the pipe's reader consumed them changes what the reader gets."},
                    "defaultConfiguration": {"level": "error"},
                }],
            }},
            "results": results,
        }],
    })
}

/// Writes `lines` to `path`: SARIF when it ends in `.sarif`, else JSON lines.
pub fn write_report(path: &Path, lines: &[Value]) -> std::io::Result<()> {
    let text = if path.extension().is_some_and(|e| e == "sarif") {
        let mut s = serde_json::to_string_pretty(&sarif(lines)).unwrap_or_default();
        s.push('\n');
        s
    } else {
        lines.iter().map(|v| format!("{v}\n")).collect()
    };
    std::fs::write(path, text)
}

/// Reads a report file, symbolized and deduplicated.
pub fn read_symbolized(path: &Path) -> std::io::Result<Vec<Value>> {
    let file = std::fs::File::open(path)?;
    Ok(symbolize(
        parse_report(std::io::BufReader::new(file)),
        &mut Symbolizer::default(),
    ))
}

/// `splicecow symbolize REPORT [--output PATH]`.
pub fn main(args: SymbolizeArgs) -> i32 {
    let lines = match read_symbolized(&args.report) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("splicecow: cannot read {}: {e}", args.report.display());
            return 1;
        }
    };
    for v in &lines {
        eprint!("{}", sanitizer_text(v));
    }
    match &args.output {
        Some(out) => {
            if let Err(e) = write_report(out, &lines) {
                eprintln!("splicecow: cannot write {}: {e}", out.display());
                return 1;
            }
        }
        None => {
            for v in &lines {
                println!("{v}");
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, m: &[&str], s: &[&str]) -> Value {
        let frames = |offs: &[&str]| -> Value {
            offs.iter()
                .map(|o| json!({"module": "/nonexistent/prog", "offset": o}))
                .collect()
        };
        json!({"kind": kind, "path": "/f", "offset": 0, "len": 1, "pid": 1, "exe": "/p",
               "stack": frames(m),
               "segment": {"offset": 0, "len": 9, "pipe_ino": 3, "splicer_pid": 1,
                           "splicer_exe": "/p", "age_ms": 0, "stack": frames(s)}})
    }

    #[test]
    fn the_same_pair_of_call_sites_is_reported_once_with_a_count() {
        let lines = vec![
            line("pwrite", &["0x10", "0x20"], &["0x30"]),
            line("pwrite", &["0x10", "0x20"], &["0x30"]),
            line("pwrite", &["0x11", "0x20"], &["0x30"]),
            line("ftruncate", &["0x10", "0x20"], &["0x30"]),
            json!({"kind": "pwrite"}),
            json!({"kind": "pwrite"}),
        ];
        let out = symbolize(lines, &mut Symbolizer::default());
        let counts: Vec<u64> = out.iter().map(|v| v["count"].as_u64().unwrap()).collect();
        assert_eq!(counts, [2, 1, 1, 1, 1]);
        // Unresolvable frames stay module + offset, and the text says so.
        let text = sanitizer_text(&out[0]);
        assert!(
            text.contains("WARNING: splicecow: splice-then-pwrite on /f (2 times)"),
            "{text}"
        );
        assert!(
            text.contains("#0 <unknown> (/nonexistent/prog+0x10)"),
            "{text}"
        );
        assert!(
            text.contains("SUMMARY: splicecow: splice-then-pwrite at (/nonexistent/prog+0x10)"),
            "{text}"
        );
        let s = sarif(&out);
        assert_eq!(s["version"], "2.1.0");
        assert_eq!(s["runs"][0]["results"].as_array().unwrap().len(), 5);
        assert_eq!(s["runs"][0]["results"][0]["occurrenceCount"], 2);
    }

    #[test]
    fn system_modules_are_not_the_programs_own_code() {
        assert!(is_system("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_system("linux-vdso.so.1"));
        assert!(!is_system("/home/u/prog"));
        let v = json!([{"module": "/lib/x86_64-linux-gnu/libc.so.6", "offset": "0x1", "line": 3},
                       {"module": "/home/u/prog", "offset": "0x2"},
                       {"module": "/home/u/prog", "offset": "0x3", "line": 9}]);
        assert_eq!(own_frame(&v).unwrap()["offset"], "0x3");
        let rust = json!([{"module": "/p", "offset": "0x1", "line": 3, "file": "/rustc/abc/library/std/src/fs.rs"},
                          {"module": "/p", "offset": "0x2", "line": 9, "file": "/src/main.rs"}]);
        assert_eq!(own_frame(&rust).unwrap()["offset"], "0x2");
    }
}
