//! What the standalone per-core subcommands (`streams`, `soak`, `idle`) share: the binaries
//! they run, the load generator's setup, and where their report goes.

use super::{target_dir, LOAD_CPU, UPSTREAM_CPU};
use sluice_benches::load::idle::raise_fd_limit;
use sluice_benches::load::procs::{pin_self, spawn, wait_port, Running};
use sluice_benches::load::report::machine;
use sluice_testkit::free_port;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A mock-llm on [`UPSTREAM_CPU`] streaming `tokens` tokens `delay_ms` apart, logging to
/// `<d>/<name>.log`; its port once it accepts, and the process.
pub fn start_mock(
    d: &Path,
    bin: &Path,
    tokens: usize,
    delay_ms: u64,
    name: &str,
) -> Result<(u16, Running), String> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (delay, count) = (delay_ms.to_string(), tokens.to_string());
    let args = [
        "--listen",
        &listen,
        "--threads",
        "1",
        "--token-delay-ms",
        &delay,
        "--tokens",
        &count,
    ];
    let mock = spawn(
        name,
        UPSTREAM_CPU,
        bin,
        &args,
        &d.join(format!("{name}.log")),
    )?;
    wait_port(port, Duration::from_secs(5))?;
    Ok((port, mock))
}
