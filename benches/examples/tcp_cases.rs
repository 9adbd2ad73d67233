//! Runs `vireo bench`'s TCP and request/response cases alone and prints their rows as JSON
//! (`cargo run --release -p vireo-benches --example tcp_cases [-- --quick]`; needs root, iperf3
//! and the `vireo` binary beside `target/release/examples/`, or VIREO_BIN).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let rows = vireo_benches::tcp::run_cases(quick, &stop)?;
    for r in &rows {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}
