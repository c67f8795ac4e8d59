//! Ports. A mock binds port 0 and prints the address it got, so it never races. sluice and
//! redis are told their ports in advance, and "bind port 0, release it, hand it on" loses to
//! anything that binds port 0 or connects out in between (a parallel test's mock, a client
//! socket). So the ports handed out here lie outside the kernel's ephemeral range, where
//! port-0 binds and outgoing connections never land; each test process walks its own block
//! (chosen by pid) with a counter. What is left (a process whose block collides, anything else
//! on the host that binds there) is caught at start: the child exits, logs a failed bind or
//! does not own the listening socket, and the start is retried on fresh ports.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;

/// Ports per test process: far more than any test binary starts children.
const BLOCK_LEN: u16 = 256;

/// The lowest port handed out, to stay clear of the well-known and registered ports that
/// services on a developer machine tend to hold.
const LOWEST_PORT: u32 = 10_000;

/// This process's block of ports and the next one to hand out.
struct PortBlock {
    first: u16,
    next: AtomicU16,
}

fn port_block() -> &'static PortBlock {
    static BLOCK: OnceLock<PortBlock> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let (low, high) = non_ephemeral_ports();
        let blocks = (high - low) / u32::from(BLOCK_LEN);
        assert!(
            blocks > 0,
            "no room for test ports outside the ephemeral range: only {low}..{high} is free"
        );
        let first = low + std::process::id() % blocks * u32::from(BLOCK_LEN);
        PortBlock {
            first: u16::try_from(first).expect("port below 65536"),
            next: AtomicU16::new(0),
        }
    })
}

/// The wider of the two spans (below and above it) outside the kernel's ephemeral port range,
/// as `[low, high)`. Linux's default range is assumed where it cannot be read.
fn non_ephemeral_ports() -> (u32, u32) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut bounds = range
        .iter()
        .flat_map(|r| r.split_whitespace())
        .map(|v| v.parse::<u32>().ok());
    let (eph_low, eph_high) = match (bounds.next().flatten(), bounds.next().flatten()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32_768, 60_999),
    };
    let below = (LOWEST_PORT, eph_low.max(LOWEST_PORT));
    let above = ((eph_high + 1).max(LOWEST_PORT), 65_536);
    if below.1 - below.0 >= above.1 - above.0 {
        below
    } else {
        above
    }
}

/// A loopback port for a child to bind: outside the ephemeral range, from this process's
/// block, and bindable right now (see the module doc). Also a port nothing listens on.
#[must_use]
pub fn free_port() -> u16 {
    let block = port_block();
    for _ in 0..BLOCK_LEN {
        let port = block.first + block.next.fetch_add(1, Ordering::Relaxed) % BLOCK_LEN;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no bindable port left in {}..{}",
        block.first,
        block.first + BLOCK_LEN
    );
}

/// Whether process `pid` itself holds the socket listening on `port` (`Some(false)`: another
/// process bound it first). `None` when nothing listens there or `/proc` cannot say.
#[must_use]
pub fn listener_is_child(pid: u32, port: u16) -> Option<bool> {
    // Lines: `sl local_address rem_address st ... uid timeout inode`, ports in hex, 0A = LISTEN.
    let sockets: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let listening =
                u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A";
            if !listening {
                return None;
            }
            Some(format!("socket:[{}]", fields.get(9)?))
        })
        .collect();
    if sockets.is_empty() {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lie_outside_the_ephemeral_range_and_are_not_repeated() {
        let (low, high) = non_ephemeral_ports();
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap_or_else(|_| "32768 60999".into());
        let eph: Vec<u32> = range
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(high <= eph[0] || low > eph[1], "{low}..{high} vs {eph:?}");
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        for (i, p) in ports.iter().enumerate() {
            assert!((low..high).contains(&u32::from(*p)), "{p}");
            assert!(!ports[..i].contains(p), "{p} handed out twice");
        }
    }

    #[test]
    fn tells_whose_listener_holds_a_port() {
        let ours = TcpListener::bind((Ipv4Addr::LOCALHOST, free_port())).unwrap();
        let port = ours.local_addr().unwrap().port();
        let me = std::process::id();
        assert_eq!(listener_is_child(me, port), Some(true));
        // pid 1 is never this process.
        assert_eq!(listener_is_child(1, port), Some(false));
        drop(ours);
        assert_eq!(listener_is_child(me, port), None);
    }
}
