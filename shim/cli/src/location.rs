//! Where the CLI finds `libsplicecow.so`: `$SPLICECOW_LIB` if set, else by the CLI's own
//! location, in one of the layouts it can be installed in:
//!
//! - the build tree: `cargo build --release` leaves `splicecow` and `libsplicecow.so`
//!   side by side in `target/release/`;
//! - an installed prefix: `PREFIX/bin/splicecow` with `PREFIX/lib/splicecow/libsplicecow.so`
//!   (`scripts/install --prefix PREFIX`), or with
//!   `PREFIX/lib/<multiarch triplet>/splicecow/libsplicecow.so` (prefix `/usr`: the Debian
//!   package and `scripts/install --prefix /usr`).

use std::path::{Path, PathBuf};

/// File name of the preload library.
pub const LIBRARY_NAME: &str = "libsplicecow.so";

/// How the library's path was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `$SPLICECOW_LIB` named it.
    Environment,
    /// Beside the executable, in a cargo target directory (it has `.fingerprint/`).
    BuildTree,
    /// Beside the executable, outside a cargo target directory.
    BesideBinary,
    /// Under the prefix the executable is installed in (`PREFIX/bin/splicecow`).
    Installed {
        /// The installation prefix, e.g. `/usr` or `/usr/local`.
        prefix: PathBuf,
    },
}

/// The library the CLI would preload, and how it was found.
#[derive(Clone, Debug)]
pub struct Library {
    /// The path handed to `LD_PRELOAD` (the first candidate when none exists).
    pub path: PathBuf,
    /// Where `path` comes from.
    pub origin: Origin,
    /// Whether `path` is an existing regular file.
    pub found: bool,
    /// Every path looked at, in order.
    pub searched: Vec<PathBuf>,
    /// The executable the search started from.
    pub exe: PathBuf,
}

/// The multiarch triplet of the directory Debian keeps this architecture's libraries in
/// (`/usr/lib/x86_64-linux-gnu`).
pub fn multiarch_triplet() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}

/// Where an installed layout keeps the library, relative to its prefix, in the order
/// they are tried: `lib/splicecow/` (any prefix), `lib/<triplet>/splicecow/` (`/usr`).
pub fn installed_library_dirs() -> [PathBuf; 2] {
    [
        PathBuf::from("lib/splicecow"),
        Path::new("lib").join(multiarch_triplet()).join("splicecow"),
    ]
}

/// The candidates for an executable at `exe`, in search order.
fn candidates(exe: &Path) -> Vec<(PathBuf, Origin)> {
    let mut out = Vec::new();
    let Some(dir) = exe.parent() else {
        return out;
    };
    let beside = if dir.join(".fingerprint").is_dir() {
        Origin::BuildTree
    } else {
        Origin::BesideBinary
    };
    out.push((dir.join(LIBRARY_NAME), beside));
    if dir.file_name().is_some_and(|n| n == "bin") {
        if let Some(prefix) = dir.parent() {
            for sub in installed_library_dirs() {
                out.push((
                    prefix.join(sub).join(LIBRARY_NAME),
                    Origin::Installed {
                        prefix: prefix.to_path_buf(),
                    },
                ));
            }
        }
    }
    out
}

/// Finds the library for an executable at `exe`, with `env` the value of
/// `$SPLICECOW_LIB` (ignored when empty).
pub fn find_for(exe: &Path, env: Option<std::ffi::OsString>) -> Library {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        let path = std::path::absolute(&p).unwrap_or(p);
        return Library {
            found: path.is_file(),
            searched: vec![path.clone()],
            path,
            origin: Origin::Environment,
            exe: exe.to_path_buf(),
        };
    }
    let all = candidates(exe);
    let searched = all.iter().map(|(p, _)| p.clone()).collect();
    let (path, origin, found) = match all.iter().find(|(p, _)| p.is_file()) {
        Some((p, o)) => (p.clone(), o.clone(), true),
        None => match all.into_iter().next() {
            Some((p, o)) => (p, o, false),
            None => (PathBuf::from(LIBRARY_NAME), Origin::BesideBinary, false),
        },
    };
    Library {
        path,
        origin,
        found,
        searched,
        exe: exe.to_path_buf(),
    }
}

/// Finds the library for this executable (`/proc/self/exe`, symlinks resolved).
pub fn find() -> Library {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("splicecow"));
    find_for(&exe, std::env::var_os(splicecow_registry::env::LIB))
}

impl Library {
    /// One phrase for `doctor`: which layout the library was found in.
    pub fn describe_origin(&self) -> String {
        match &self.origin {
            Origin::Environment => "named by $SPLICECOW_LIB".to_string(),
            Origin::BuildTree => format!(
                "build tree: beside {} in a cargo target directory",
                self.exe.display()
            ),
            Origin::BesideBinary => format!("beside {}", self.exe.display()),
            Origin::Installed { prefix } => format!(
                "installed layout under {}, found from {}",
                prefix.display(),
                self.exe.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory tree for one test.
    fn tree(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("splicecow-location-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn an_installed_prefix_is_found_from_bin() {
        let root = tree("prefix");
        let exe = root.join("bin/splicecow");
        touch(&exe);
        let lib = root.join("lib/splicecow").join(LIBRARY_NAME);
        touch(&lib);
        let found = find_for(&exe, None);
        assert!(found.found);
        assert_eq!(found.path, lib);
        assert_eq!(
            found.origin,
            Origin::Installed {
                prefix: root.clone()
            }
        );
        assert_eq!(found.searched.len(), 3);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_triplet_directory_is_found_for_usr_layouts() {
        let root = tree("triplet");
        let exe = root.join("bin/splicecow");
        touch(&exe);
        let lib = root
            .join("lib")
            .join(multiarch_triplet())
            .join("splicecow")
            .join(LIBRARY_NAME);
        touch(&lib);
        let found = find_for(&exe, None);
        assert!(found.found);
        assert_eq!(found.path, lib);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn beside_the_binary_wins_and_a_target_dir_is_the_build_tree() {
        let root = tree("build");
        std::fs::create_dir_all(root.join("release/.fingerprint")).unwrap();
        let exe = root.join("release/splicecow");
        touch(&exe);
        touch(&root.join("release").join(LIBRARY_NAME));
        let found = find_for(&exe, None);
        assert_eq!(found.origin, Origin::BuildTree);
        assert!(found.found);
        // Nothing anywhere: the first candidate is reported, not found.
        std::fs::remove_file(root.join("release").join(LIBRARY_NAME)).unwrap();
        let missing = find_for(&exe, None);
        assert!(!missing.found);
        assert_eq!(missing.path, root.join("release").join(LIBRARY_NAME));
        assert_eq!(missing.searched.len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_environment_overrides_the_layout() {
        let found = find_for(Path::new("/usr/bin/splicecow"), Some("rel/lib.so".into()));
        assert_eq!(found.origin, Origin::Environment);
        assert!(found.path.is_absolute());
        let empty = find_for(Path::new("/nonexistent/bin/splicecow"), Some("".into()));
        assert_ne!(empty.origin, Origin::Environment);
    }
}
