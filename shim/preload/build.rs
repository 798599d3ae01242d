//! Compiles the bodies of the variadic hooks (C can take `...`, stable Rust cannot).
fn main() {
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
