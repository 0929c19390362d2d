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
    /// Move the tenant to another datastore, live (through the sidecar's admin API).
    ///
    /// The target must be an entry of the sidecar's `dataStores`, and the tenant's key
    /// range there must be empty (or --overwrite clears it first).
    Migrate {
        /// The datastore to move to (a name from `dataStores`)
        #[arg(long, value_name = "NAME")]
        to: String,
        /// (Gateway) the tenant to move: its role name, Kamaji's schema
        #[arg(long, value_name = "NAME", conflicts_with = "overwrite")]
        tenant: Option<String>,
        /// Delete whatever the target holds in the tenant's key range first
        #[arg(long)]
        overwrite: bool,
        /// With --overwrite and no `prefix` configured (the tenant's range is then the
        /// whole key space): yes, delete every key on the target, whoever wrote it
        #[arg(long, requires = "overwrite")]
        delete_whole_keyspace: bool,
        /// Follow the migration (as `status --watch` does) until it ends; exit 0 if it
        /// succeeded, 1 if it failed or was aborted
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        connect: cutover::cli::Connect,
    },
    /// Stop the running migration; the tenant stays on its current datastore.
    Abort {
        #[command(flatten)]
        connect: cutover::cli::Connect,
    },
    /// Show where the tenant is and the current or last migration.
    ///
    /// Columns: NAME (migration id), STATUS (its outcome), DATASTORE (the authoritative
    /// one), AGE, PHASE, PROGRESS (keys copied / total, MiB), LAG (source revisions the
    /// target is behind), FENCE (how long writes were fenced).
    Status {
        /// Keep following: a line per change of phase, outcome or datastore until
        /// interrupted (progress: a bar on stderr while copying on a terminal, else at most
        /// a line a second)
        #[arg(long, short = 'w')]
        watch: bool,
        /// (Gateway) show this tenant: NAME, PREFIX, HOME (where the catalog places it),
        /// SERVING (where this replica sends its requests), MIGRATION (its latest)
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// Output format: table (the columns above) or json (the /v1/status document; with
        /// --watch, one JSON line per change)
        #[arg(long, short = 'o', value_name = "FORMAT", default_value = "table", value_parser = ["table", "json"])]
        output: String,
        #[command(flatten)]
        connect: cutover::cli::Connect,
    },
    /// (Gateway) List the tenants: where each lives and its latest migration.
    ///
    /// Columns: NAME (the tenant's role, Kamaji's schema), PREFIX (its keys), HOME (the
    /// datastore the catalog places it on), SERVING (where this replica sends its requests
    /// now), KEYS (its keys there), SIZE (with --size), MIGRATION (the latest this replica
    /// saw: id, phase or outcome, from -> to).
    Tenants {
        /// Output format: table or json (the /v1/tenants document)
        #[arg(long, short = 'o', value_name = "FORMAT", default_value = "table", value_parser = ["table", "json"])]
        output: String,
        /// Also show each tenant's size (SIZE: its keys' and values' bytes), which reads
        /// every tenant's keys whole
        #[arg(long)]
        size: bool,
        #[command(flatten)]
        connect: cutover::cli::Connect,
    },
    /// (Gateway) Move every tenant off one datastore of the pool, live.
    ///
    /// Each tenant goes to the datastore that holds the fewest tenants at that moment;
    /// exit 0 when every move succeeded.
    Drain {
        /// The datastore to empty
        #[arg(long, value_name = "NAME")]
        datastore: String,
        /// How many tenants move at once
        #[arg(long, value_name = "N", default_value_t = 2)]
        parallel: usize,
        /// Delete each moved tenant's old copy from the drained datastore once it has moved
        /// (its "moved" marker stays), as `cleanup --tenant` does
        #[arg(long)]
        cleanup: bool,
        #[command(flatten)]
        connect: cutover::cli::Connect,
    },
    /// Delete the tenant's data from a datastore it has left (the "moved" marker stays).
    Cleanup {
        /// The datastore to clean up (refused while it is authoritative or a migration runs)
        #[arg(long, value_name = "NAME")]
        datastore: String,
        /// (Gateway) The tenant whose old copy goes (its role name, Kamaji's schema)
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// With no `prefix` configured (the tenant's range is then the whole key space):
        /// yes, delete every key on that datastore, whoever wrote it
        #[arg(long)]
        delete_whole_keyspace: bool,
        #[command(flatten)]
        connect: cutover::cli::Connect,
    },
}

/// Runs one admin API command on a small runtime: exit 0 when it returns true, 1 when it
/// returns false or fails (no admin API given, unreachable, refused).
fn admin_command<F, Fut>(connect: &cutover::cli::Connect, f: F) -> ExitCode
where
    F: FnOnce(cutover::cli::Admin) -> Fut,
    Fut: std::future::Future<Output = Result<bool, cutover::cli::CliError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match connect.admin() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f(admin)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(cutover::cli::CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
            cutover::memory::configure();
            let config = match o.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            #[cfg(feature = "failpoints")]
            if let Err(e) = cutover::failpoint::from_env() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
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
            match runtime.block_on(cutover::app::serve(config, Some(o))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "cutover stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate {
            to,
            tenant,
            overwrite,
            delete_whole_keyspace,
            wait,
            connect,
        } => admin_command(&connect, |a| async move {
            match tenant {
                Some(t) => cutover::cli::tenants::migrate(&a, &t, &to, wait).await,
                None => cutover::cli::migrate(&a, &to, overwrite, delete_whole_keyspace, wait).await,
            }
        }),
        Command::Tenants { output, size, connect } => admin_command(&connect, |a| async move {
            cutover::cli::tenants::list(&a, output == "json", size)
                .await
                .map(|_| true)
        }),
        Command::Drain {
            datastore,
            parallel,
            cleanup,
            connect,
        } => admin_command(&connect, |a| async move {
            cutover::cli::tenants::drain(&a, &datastore, parallel, cleanup).await
        }),
        Command::Abort { connect } => {
            admin_command(&connect, |a| async move { cutover::cli::abort(&a).await.map(|_| true) })
        }
        Command::Status {
            watch,
            tenant,
            output,
            connect,
        } => admin_command(&connect, |a| async move {
            match tenant {
                Some(t) => cutover::cli::tenants::status(&a, &t, watch, output == "json").await,
                None => cutover::cli::status(&a, watch, output == "json").await,
            }
            .map(|_| true)
        }),
        Command::Cleanup {
            datastore,
            tenant,
            delete_whole_keyspace,
            connect,
        } => admin_command(&connect, |a| async move {
            match tenant {
                Some(t) => cutover::cli::tenants::cleanup(&a, &t, &datastore).await,
                None => cutover::cli::cleanup(&a, &datastore, delete_whole_keyspace).await,
            }
            .map(|_| true)
        }),
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
