//! `sluice`: the gateway binary.

use clap::{Parser, Subcommand};
use sluice::access_log::{self, LogFormat};
use sluice::config::{compile, load_file, SharedState};
use sluice::report::source::{positive_duration, Source};
use sluice_plugins::metrics::Metrics;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

// glibc malloc/free were ~10% of a passthrough request's CPU; mimalloc's thread caches are cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice: a fast, policy-driven gateway for OpenAI-compatible LLM APIs.
///
/// Point clients at sluice instead of the model server; routes, upstreams and limits live
/// in one YAML file that is reloaded live (file change, SIGHUP or POST /admin/reload).
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about)]
struct Cli {
    /// Log format of the process (access lines included).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until SIGTERM (graceful) or SIGINT (immediate).
    Run {
        /// The YAML config file (see config/gateway.yaml).
        #[arg(long)]
        config: PathBuf,
        /// Take the listening sockets over from the sluice running on this config: start this,
        /// then send the old process SIGQUIT (within 5 s); it hands them over and drains.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: exit 0, or print every error as file:line:column: field: message.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Compare the variants of a route's split (latency, errors, cache, tokens, cost) with
    /// significance tests, from a running sluice's metrics or from Prometheus.
    AbReport {
        /// The route whose split to report on.
        #[arg(long)]
        route: String,
        /// The variant the others are compared with (default: the first configured).
        #[arg(long)]
        baseline: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Per route: traffic, latency, where the time went, cache and limits; then findings (slow
    /// endpoints, errors, ejections, queueing, 429s, gateway overhead, a low cache hit rate)
    /// with what to do. Reads a running sluice's metrics or Prometheus.
    Report {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Cache commands.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Client key commands.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// Where `ab-report` and `report` read sluice's numbers.
#[derive(clap::Args)]
struct SourceArgs {
    /// A running sluice's metrics, e.g. http://127.0.0.1:9090/metrics.
    #[arg(long, value_name = "URL", required_unless_present = "prometheus")]
    metrics: Option<String>,
    /// With --metrics: scrape, wait this long (e.g. 1m), scrape again and report the
    /// difference. Without it: totals since sluice started.
    #[arg(
        long,
        value_name = "DUR",
        requires = "metrics",
        conflicts_with = "prometheus",
        value_parser = positive_duration
    )]
    window: Option<Duration>,
    /// A Prometheus server that scrapes sluice, e.g. http://127.0.0.1:9091.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "metrics",
        requires = "range"
    )]
    prometheus: Option<String>,
    /// With --prometheus: the window to report, ending now (e.g. 1h).
    #[arg(
        long,
        value_name = "DUR",
        requires = "prometheus",
        conflicts_with = "metrics",
        value_parser = positive_duration
    )]
    range: Option<Duration>,
}

impl SourceArgs {
    /// The source clap's rules allow: --metrics, or --prometheus with --range.
    fn source(self) -> Option<Source> {
        match (self.metrics, self.prometheus, self.range) {
            (Some(url), _, _) => Some(Source::Metrics {
                url,
                window: self.window,
            }),
            (None, Some(url), Some(range)) => Some(Source::Prometheus { url, range }),
            _ => None,
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh client key (shown only this once) and the `keys:` entry that admits it:
    /// the config keeps only its hash.
    New {
        /// The key's name in metrics, logs and /admin/keys.
        #[arg(long)]
        name: String,
        #[arg(long)]
        team: Option<String>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Pre-fill the cache: send each prompt of a JSONL file through the running sluice that
    /// CONFIG describes (a line is a request body, or {"path": ..., "body": {...}}).
    Warm {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        prompts: PathBuf,
        /// Path for lines that do not name one.
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        /// API key to send (entries are scoped per key by default); or SLUICE_WARM_API_KEY.
        #[arg(long, env = "SLUICE_WARM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let result = load_file(&config).and_then(|loaded| {
                let metrics = Metrics::new(env!("CARGO_PKG_VERSION")).map_err(|e| {
                    sluice::config::ConfigErrors(
                        vec![loaded.error_at(&[], format!("metrics: {e}"))],
                    )
                })?;
                compile(&loaded, &SharedState::new(metrics)).map(|_| ())
            });
            match result {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::AbReport {
            route,
            baseline,
            json,
            source,
        } => {
            use sluice::ab_report::Args;
            let Some(source) = source.source() else {
                eprintln!("sluice ab-report: give --metrics URL, or --prometheus URL --range DUR");
                return ExitCode::from(2);
            };
            let args = Args {
                route,
                baseline,
                json,
                source,
            };
            match sluice::ab_report::run(&args) {
                Ok(output) => {
                    for note in &output.notes {
                        eprintln!("sluice ab-report: {note}");
                    }
                    print!("{}", output.stdout);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice ab-report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Report { json, source } => {
            let Some(source) = source.source() else {
                eprintln!("sluice report: give --metrics URL, or --prometheus URL --range DUR");
                return ExitCode::from(2);
            };
            match sluice::report::run(&sluice::report::Args { json, source }) {
                Ok(stdout) => {
                    // A closed stdout (`| head`) is the reader's choice, not a crash.
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), stdout.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys {
            command: KeysCommand::New { name, team },
        } => match sluice::config::keys::new_key() {
            Ok(key) => {
                let team = team.map_or(String::new(), |t| format!(", team: {t}"));
                let text = format!(
                    "key (shown once; give it to the client): {key}\nconfig entry (under keys:):\n  - {{ name: {name}{team}, hash: \"{}\" }}\n",
                    sluice::config::keys::hash_line(&key)
                );
                // A closed stdout (`| head`) is the reader's choice, not a crash.
                let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice keys new: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Cache {
            command:
                CacheCommand::Warm {
                    config,
                    prompts,
                    path,
                    api_key,
                    concurrency,
                },
        } => {
            let args = sluice::warm::WarmArgs {
                config: &config,
                prompts: &prompts,
                path: &path,
                api_key: api_key.as_deref(),
                concurrency,
            };
            match sluice::warm::run(&args) {
                Ok(r) => {
                    println!(
                        "stored {}, already cached {}, failed {}",
                        r.stored, r.already, r.failed
                    );
                    if r.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("sluice cache warm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, upgrade } => {
            access_log::init(cli.log_format);
            let result = sluice::server::run(&config, upgrade);
            access_log::flush(std::time::Duration::from_millis(500));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
