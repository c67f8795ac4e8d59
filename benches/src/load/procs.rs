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
    spawn_with_env(name, cpus, program, args, &[], log)
}

/// [`spawn`] with the environment variables `env` set for the program.
pub fn spawn_with_env(
    name: &str,
    cpus: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Running, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("taskset")
        .args(["-c", cpus])
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
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

/// `pid` and its direct children (nginx's workers).
#[must_use]
pub fn with_children(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

/// CPU seconds (user + system, all threads) that `pid` and its direct children have used.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    let mut ticks = 0;
    for p in with_children(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_err(|e| format!("/proc/{p}/stat: {e}"))?;
        ticks += stat_ticks(&stat).ok_or_else(|| format!("/proc/{p}/stat: unreadable"))?;
    }
    Ok(ticks as f64 / hz as f64)
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15, counted past the
/// parenthesised command name, which may hold spaces).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
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

/// What the fixed upstream answers every request with: a ~300-byte chat completion.
pub const FIXED_COMPLETION: &str = r#"{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A fixed completion for benchmarking."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#;

/// The fixed upstream: nginx (1 worker) on `cpus` answering every request with
/// [`FIXED_COMPLETION`]; its port once it accepts, and the process.
pub fn fixed_upstream(d: &Path, cpus: &str) -> Result<(u16, Running), String> {
    let port = sluice_testkit::free_port();
    let conf = nginx_conf(d, 1, port, None, FIXED_COMPLETION);
    let nginx = spawn_nginx(d, "nginx-upstream", cpus, &conf)?;
    wait_port(port, Duration::from_secs(5))?;
    Ok((port, nginx))
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
    let location = match proxy_to {
        Some(up) => format!(
            "upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{port} reuseport; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
        None => format!(
            "server {{ listen 127.0.0.1:{port} reuseport; location / {{ default_type application/json; return 200 '{fixed_body}'; }} }}"
        ),
    };
    nginx_conf_with(dir, workers, port, &location)
}

/// An nginx config whose keep-alive reverse proxy to `up` caches each POST keyed on its body
/// (held in memory: the body buffer is 512k) for 10 minutes, and says so in `X-Cache-Status`.
#[must_use]
pub fn nginx_cache_conf(dir: &Path, workers: usize, port: u16, up: u16) -> String {
    let d = dir.display();
    let location = format!(
        "proxy_cache_path {d}/cache-{port} levels=1:2 keys_zone=bench-{port}:10m;\n  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{port} reuseport; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_cache bench-{port}; proxy_cache_methods POST; proxy_cache_key \"$request_uri|$http_authorization|$request_body\"; proxy_cache_valid 200 10m; add_header X-Cache-Status $upstream_cache_status; }} }}"
    );
    nginx_conf_with(dir, workers, port, &location)
}

/// The whole nginx config around `servers` (what goes in `http {}` after the common settings).
fn nginx_conf_with(dir: &Path, workers: usize, port: u16, servers: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\ndaemon off;\nuser root;\npid {d}/nginx-{port}.pid;\nerror_log {d}/nginx-{port}.err warn;\nworker_rlimit_nofile 40000;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_max_body_size 64m;\n  client_body_buffer_size 512k;\n  client_body_temp_path {d}/body-{port};\n  proxy_temp_path {d}/proxy-{port};\n  fastcgi_temp_path {d}/fcgi-{port};\n  uwsgi_temp_path {d}/uwsgi-{port};\n  scgi_temp_path {d}/scgi-{port};\n  {servers}\n}}\n"
    )
}

/// RSS of `pid` plus its direct children, KiB.
#[must_use]
pub fn tree_rss_kib(pid: u32) -> u64 {
    with_children(pid).into_iter().filter_map(rss_kib).sum()
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

#[cfg(test)]
mod tests {
    use super::stat_ticks;

    #[test]
    fn stat_ticks_adds_utime_and_stime_past_a_spaced_name() {
        let stat = "4242 (nginx: worker) S 1 2 3 0 -1 4194624 100 0 0 0 250 75 0 0 20 0 1 0 9";
        assert_eq!(stat_ticks(stat), Some(325));
        assert_eq!(stat_ticks("4242 (x) S 1"), None);
    }
}
