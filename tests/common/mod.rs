//! Support shared by the integration tests (`tests/it`) and the benches: child processes
//! that die with the test, loopback ports, the cutover binary, environment knobs and
//! percentiles. Each includes this file with `#[path]`; not every one uses every item.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Starts `cmd` with its output in `log`; the kernel kills it if the thread that started
/// it ends (call it from the thread that lives as long as the test or bench). `setup`
/// runs in the child before exec (it must be async-signal-safe: plain system calls).
pub fn spawn_logged(
    cmd: &mut Command,
    log: &Path,
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Child {
    let out = std::fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut setup = setup;
    // SAFETY: prctl is async-signal-safe, and `setup` must be too (see above).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            setup()
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process, killed when this handle is dropped (its log's tail printed if the
/// test or bench is failing).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: PathBuf,
        setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Proc {
        let child = spawn_logged(&mut cmd, &log, setup);
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `Err` with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.exited() {
            Some(status) => Err(format!(
                "{} exited early ({status}); log tail:\n{}",
                self.name,
                self.log_tail(30)
            )),
            None => Ok(()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log (tail) ---\n{}", self.name, self.log_tail(30));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member etcd (`bin`) for a bench, its client URL on loopback port `port`, its
/// data and log in `dir`; `setup` runs in the child before exec (see [`spawn_logged`]).
pub fn bench_etcd(
    bin: &str,
    port: u16,
    dir: &Path,
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Proc {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin);
    cmd.args([
        "--name=bench".to_string(),
        format!("--data-dir={}", dir.join("etcd-data").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=bench={peer}"),
        "--initial-cluster-state=new".to_string(),
        "--logger=zap".to_string(),
        "--log-level=warn".to_string(),
        // 8 GiB: a bench writes a few hundred MB at most.
        "--quota-backend-bytes=8589934592".to_string(),
    ])
    .env("ETCD_UNSUPPORTED_ARCH", "");
    Proc::spawn("etcd", cmd, dir.join("etcd.log"), setup)
}

/// One HTTP/2 channel to `addr`: `host:port`, or `unix:/path` for a unix socket.
pub async fn connect_channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::Endpoint;
    let timeout = std::time::Duration::from_secs(2);
    match addr.strip_prefix("unix:") {
        Some(path) => {
            let path = PathBuf::from(path);
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
        }
        None => {
            Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(timeout)
                .connect()
                .await
        }
    }
    .map_err(|e| format!("connect: {e}"))
}

/// Txns of `per_txn` ops each (at most etcd's --max-txn-ops, 128 by default), in order.
pub fn txns_of(
    ops: impl IntoIterator<Item = cutover::proto::etcdserverpb::RequestOp>,
    per_txn: usize,
) -> Vec<cutover::proto::etcdserverpb::TxnRequest> {
    let ops: Vec<_> = ops.into_iter().collect();
    ops.chunks(per_txn)
        .map(|c| cutover::proto::etcdserverpb::TxnRequest {
            success: c.to_vec(),
            ..Default::default()
        })
        .collect()
}

/// Puts of every (key, value), as [`txns_of`].
pub fn put_txns(kvs: &[(bytes::Bytes, bytes::Bytes)], per_txn: usize) -> Vec<cutover::proto::etcdserverpb::TxnRequest> {
    use cutover::proto::etcdserverpb::{request_op, PutRequest, RequestOp};
    let puts = kvs.iter().map(|(k, v)| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        })),
    });
    txns_of(puts, per_txn)
}

/// Sends `txns` on `ch`, `in_flight` at a time, each answered within 10 s; the first
/// error ends it.
pub async fn send_txns(
    ch: &tonic::transport::Channel,
    txns: Vec<cutover::proto::etcdserverpb::TxnRequest>,
    in_flight: usize,
) -> Result<(), String> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(txns)
        .map(|req| {
            let mut kv = cutover::proto::etcdserverpb::kv_client::KvClient::new(ch.clone());
            async move {
                match tokio::time::timeout(std::time::Duration::from_secs(10), kv.txn(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer to a Txn within 10 s".to_string()),
                }
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The cutover binary: `CUTOVER_BIN`, else the one cargo built for this target.
pub fn cutover_binary() -> PathBuf {
    let path = std::env::var_os("CUTOVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cutover")));
    assert!(
        path.is_file(),
        "cutover binary {} not found (build it with `cargo build --release --bin cutover` or set CUTOVER_BIN)",
        path.display()
    );
    path
}

/// An environment variable parsed as `T`, or `default` when unset or blank; a value that
/// does not parse stops the run with its name.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

/// Resident memory of process `pid`, in KiB (from /proc; 0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `p` quantile (0..=1) of sorted values, by the nearest-rank method; `None` when
/// there are none.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(super::percentile(&v, 0.5), Some(5));
        assert_eq!(super::percentile(&v, 0.99), Some(10));
        assert_eq!(super::percentile(&v, 0.0), Some(1));
        assert_eq!(super::percentile::<u8>(&[], 0.5), None);
    }
}
