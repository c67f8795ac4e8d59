//! What the standalone per-core subcommands (`streams`, `soak`, `idle`) share: the binaries
//! they run, the load generator's setup, and where their report goes.

use super::{target_dir, LOAD_CPU};
use sluice_benches::load::idle::raise_fd_limit;
use sluice_benches::load::procs::pin_self;
use sluice_benches::load::report::machine;
use std::path::PathBuf;

/// The release builds of sluice and mock-llm.
pub struct Bins {
    pub sluice: PathBuf,
    pub mock: PathBuf,
}

/// The release binaries, or Err naming the one missing.
pub fn release_bins() -> Result<Bins, String> {
    let release = target_dir()?.join("release");
    let bins = Bins {
        sluice: release.join("sluice"),
        mock: release.join("mock-llm"),
    };
    for b in [&bins.sluice, &bins.mock] {
        if !b.exists() {
            return Err(format!("{} missing: `make bench` builds it", b.display()));
        }
    }
    Ok(bins)
}

/// Lets this process and what it starts open `fds` files, then pins this thread (the load
/// generator, and the threads it starts) to [`LOAD_CPU`]; the machine's description, taken
/// first since pinning leaves this process one core to see.
pub fn setup_generator(fds: u64) -> Result<String, String> {
    raise_fd_limit(fds)?;
    let machine = machine();
    pin_self(LOAD_CPU)?;
    Ok(machine)
}

/// Prints `md` and writes it to `target/bench/<name>`.
pub fn publish(name: &str, md: &str) -> Result<(), String> {
    println!("{md}");
    let out = target_dir()?.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let file = out.join(name);
    std::fs::write(&file, md).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("written: {}", file.display());
    Ok(())
}
