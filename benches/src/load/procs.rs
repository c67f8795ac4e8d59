//! Starting and watching the processes under test.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A child process pinned to some CPUs, killed on drop.
pub struct Running {
    pub name: String,
    child: Child,
}

impl Running {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Children first: nginx's workers outlive a killed master, still holding their sockets.
        for child in with_children(self.pid()).into_iter().skip(1) {
            if let Ok(pid) = libc::pid_t::try_from(child) {
                // SAFETY: kill only sends a signal to a process this one started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` under `taskset -c cpus`, output to `log`.
pub fn spawn(
    name: &str,
    cpus: &str,
    program: &Path,
    args: &[&str],
    log: &Path,
) -> Result<Running, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("taskset")
        .args(["-c", cpus])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {name} ({}): {e}", program.display()))?;
    Ok(Running {
        name: name.to_string(),
        child,
    })
}

/// Writes `<dir>/<name>.conf` and runs nginx on it pinned to `cpus`, logging to
/// `<dir>/<name>.log`; `conf` is what [`nginx_conf`] makes.
pub fn spawn_nginx(dir: &Path, name: &str, cpus: &str, conf: &str) -> Result<Running, String> {
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, conf).map_err(|e| format!("{}: {e}", file.display()))?;
    spawn(
        name,
        cpus,
        Path::new("/usr/sbin/nginx"),
        &["-c", path_str(&file)?, "-p", path_str(dir)?],
        &dir.join(format!("{name}.log")),
    )
}

/// `p` as a command-line argument.
pub fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()))
}

/// Waits until something accepts on `port`.
pub fn wait_port(port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listening on port {port} after {within:?}"))
}

/// Resident set size of a process in KiB.
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's RSS every 50 ms and keeps the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    #[must_use]
    pub fn start(pid: u32) -> Self {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak in MiB.
    pub fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// An nginx config: one `return 200` server (the fixed upstream) or a keep-alive reverse proxy.
#[must_use]
pub fn nginx_conf(
    dir: &Path,
    workers: usize,
    port: u16,
    proxy_to: Option<u16>,
    fixed_body: &str,
) -> String {
    let d = dir.display();
    let location = match proxy_to {
        Some(up) => format!(
            "upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{port} reuseport; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
        None => format!(
            "server {{ listen 127.0.0.1:{port} reuseport; location / {{ default_type application/json; return 200 '{fixed_body}'; }} }}"
        ),
    };
    format!(
        "worker_processes {workers};\ndaemon off;\nuser root;\npid {d}/nginx-{port}.pid;\nerror_log {d}/nginx-{port}.err warn;\nworker_rlimit_nofile 40000;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_max_body_size 64m;\n  client_body_buffer_size 512k;\n  client_body_temp_path {d}/body-{port};\n  proxy_temp_path {d}/proxy-{port};\n  fastcgi_temp_path {d}/fcgi-{port};\n  uwsgi_temp_path {d}/uwsgi-{port};\n  scgi_temp_path {d}/scgi-{port};\n  {location}\n}}\n"
    )
}

/// `pid` and its direct children (nginx's workers).
#[must_use]
pub fn with_children(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

/// RSS of `pid` plus its direct children, KiB.
#[must_use]
pub fn tree_rss_kib(pid: u32) -> u64 {
    with_children(pid).into_iter().filter_map(rss_kib).sum()
}

/// CPU time (user + system, all threads) of `pid` plus its direct children, seconds.
pub fn tree_cpu_seconds(pid: u32) -> Result<f64, String> {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    let mut total = 0u64;
    for p in with_children(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_err(|e| format!("/proc/{p}/stat: {e}"))?;
        // Fields after the command name, which may hold spaces: state is [0], utime [11], stime [12].
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| format!("/proc/{p}/stat: no command name"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> Result<u64, String> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("/proc/{p}/stat: field {} unreadable", i + 3))
        };
        total += field(11)? + field(12)?;
    }
    Ok(total as f64 / ticks as f64)
}

/// Files (sockets included) `pid` has open.
pub fn open_fds(pid: u32) -> Result<usize, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))
}

/// Pins the calling thread, and the threads and processes it starts afterwards, to `cpu`
/// (one CPU number, as `taskset -c` takes it).
pub fn pin_self(cpu: &str) -> Result<(), String> {
    let n: usize = cpu
        .parse()
        .map_err(|_| format!("{cpu}: not one CPU number"))?;
    // SAFETY: the set is a plain bitmask owned here; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(n, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin the load generator to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
