//! The `cutover` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use cutover::config::{Config, LogFormat, Overrides};

/// An etcd v3 gRPC proxy for tenant Kubernetes control planes.
///
/// cutover runs next to kube-apiserver and answers it exactly as etcd would, forwarding
/// every request to the active datastore (an etcd cluster).
#[derive(Parser)]
#[command(name = "cutover", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API on `listen`, forwarding to the active datastore.
    ///
    /// Every config key can be given in the file, as a flag, or as a CUTOVER_* environment
    /// variable; flags win over the file.
    Serve(Overrides),
    /// Check a configuration (file and flags) and print it as cutover understands it.
    CheckConfig(Overrides),
}

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(o) => {
            let config = match o.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            // One thread (no work stealing, no cross-thread wake-ups) costs the least CPU
            // per request; more threads are for sidecars with CPU to spare.
            let mut builder = if config.worker_threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(config.worker_threads);
                b
            };
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(cutover::app::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "cutover stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig(o) => match o.load() {
            Ok(c) => {
                println!("listen: {}", c.listen);
                println!("admin: {}", c.admin_listen);
                println!("tls: {}", if c.tls.is_some() { "on" } else { "off" });
                println!("dataStore: {}", c.data_store);
                for ds in c.data_stores.values() {
                    println!(
                        "dataStores.{}: {} (tls {}, basicAuth {})",
                        ds.name,
                        ds.endpoints.join(", "),
                        if ds.tls.is_some() { "on" } else { "off" },
                        if ds.basic_auth.is_some() { "on" } else { "off" }
                    );
                }
                println!("maxRequestBytes: {}", c.max_request_bytes);
                println!("workerThreads: {}", c.worker_threads);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
