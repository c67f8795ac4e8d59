//! `sluice`: the gateway binary.

use clap::{Parser, Subcommand};
use sluice::access_log::{self, LogFormat};
use sluice::config::{compile, load_file, SharedState};
use sluice_plugins::metrics::Metrics;
use std::path::PathBuf;
use std::process::ExitCode;

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
    },
    /// Validate a config file: exit 0, or print every error as file:line:column: field: message.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Cache commands.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
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
        Command::Run { config } => {
            access_log::init(cli.log_format);
            let result = sluice::server::run(&config);
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
