//! Compiles the bodies of the variadic hooks (C can take `...`, stable Rust cannot).
fn main() {
    // Only the hooks' variadic bodies are C; a build without hooks needs none.
    if std::env::var_os("CARGO_FEATURE_HOOKS").is_none() {
        return;
    }
    let bodies = [
        "src/hooks/stdio_variadic.c",
        "src/hooks/exec_variadic.c",
        "src/hooks/vfork_variadic.c",
    ];
    for c in bodies {
        println!("cargo:rerun-if-changed={c}");
    }
    cc::Build::new().files(bodies).compile("variadic_bodies");
}
