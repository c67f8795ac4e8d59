//! `loadbench idle`: RSS per idle keep-alive client connection, sluice then nginx, each alone
//! on CPU 0 with one worker (the client and the fixed upstream on CPU 1), `IDLE_CONNECTIONS`
//! connections each. Writes `target/bench/idle.md` and prints it.

use super::standalone::{publish, release_bins, setup_generator};
use super::{start_fixed_upstream, IDLE_CONNECTIONS};
use sluice_benches::load::idle::{idle_connections, IdleResult};
use sluice_benches::load::procs::{nginx_conf, spawn_nginx, wait_port};
use sluice_benches::load::sluice::{start_plain_sluice, SLUICE_CPU};
use sluice_testkit::free_port;
use std::fmt::Write;
use std::time::Duration;

/// The target for sluice, KiB per idle connection.
const TARGET_KIB: f64 = 8.0;

pub fn run() -> Result<(), String> {
    let bins = release_bins()?;
    let machine = setup_generator(IDLE_CONNECTIONS as u64 + 4096)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let (up_port, _upstream) = start_fixed_upstream(d)?;

    let mut rows = Vec::new();
    let sluice = start_plain_sluice(d, "idle", up_port, &bins.sluice)?;
    rows.push((
        "sluice",
        checked(
            "sluice",
            idle_connections(sluice.port, sluice.proc.pid(), IDLE_CONNECTIONS)?,
        )?,
    ));
    drop(sluice);

    let port = free_port();
    let conf = nginx_conf(d, 1, port, Some(up_port), "");
    let nginx = spawn_nginx(d, "nginx-idle", SLUICE_CPU, &conf)?;
    wait_port(port, Duration::from_secs(5))?;
    rows.push((
        "nginx",
        checked(
            "nginx",
            idle_connections(port, nginx.pid(), IDLE_CONNECTIONS)?,
        )?,
    ));
    drop(nginx);

    let mut md = format!("# Idle keep-alive client connections, per core\n\n{machine}; each system alone on CPU 0 with one worker; one GET per connection, then idle; RSS growth of the process and its children.\n\n| system | connections | KiB per connection | still served after |\n|---|---|---|---|\n");
    for (system, r) in &rows {
        let _ = writeln!(
            md,
            "| {system} | {} | {:.1} | {} |",
            r.connections, r.kib_per_connection, r.served_after
        );
    }
    let sluice_kib = rows[0].1.kib_per_connection;
    let _ = writeln!(
        md,
        "\n- sluice: {sluice_kib:.1} KiB per idle connection (target ≤ {TARGET_KIB}: {}); nginx: {:.1}",
        if sluice_kib <= TARGET_KIB { "PASS" } else { "FAIL" },
        rows[1].1.kib_per_connection
    );
    let _ = writeln!(
        md,
        "- nginx allocates its connection table (worker_connections) at start, so its growth is below its real cost"
    );
    publish("idle.md", &md)?;
    Ok(())
}

/// `r`, unless some connection was no longer served once all were open.
pub(super) fn checked(system: &str, r: IdleResult) -> Result<IdleResult, String> {
    eprintln!(
        "idle {system}: {} connections, {:.1} KiB each, {} served after",
        r.connections, r.kib_per_connection, r.served_after
    );
    if r.served_after != r.connections {
        return Err(format!(
            "idle connections: {system} served only {} of {} afterwards",
            r.served_after, r.connections
        ));
    }
    Ok(r)
}
