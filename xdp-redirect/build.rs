use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/steer.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // Debian's gcc-multilib provides /usr/include/asm; the extra include keeps the build working
    // where only the multiarch directory has it.
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-O2", "-g", "-Wall", "-I/usr/include/x86_64-linux-gnu"])
        .build_and_generate(out.join("steer.skel.rs"))
        .unwrap_or_else(|e| {
            panic!("building {SRC} with clang failed (run scripts/setup.sh): {e:#}")
        });
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=bpf/steer.h");
}
