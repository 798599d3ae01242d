//! Compiles the variadic stdio wrappers (C can forward `...`, stable Rust cannot).
fn main() {
    println!("cargo:rerun-if-changed=src/hooks/stdio_variadic.c");
    cc::Build::new()
        .file("src/hooks/stdio_variadic.c")
        .flag("-fvisibility=default")
        .compile("stdio_variadic");
}
