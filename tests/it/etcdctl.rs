//! etcdctl conformance: a script of etcdctl commands prints the same thing through cutover
//! as it does against etcd itself.
//!
//! Each test starts two fresh single-member etcd servers: A, reached directly, and B,
//! reached through a proxy. Both stores start empty and receive the same commands in the
//! same order, so their revisions, versions and create/mod revisions agree, and every step
//! must give the same exit status, stdout and stderr on both sides. Outputs are compared
//! after normalising only what differs between two members by nature:
//!
//! - cluster and member IDs, lease IDs (in decimal and hex), member names, peer and client
//!   URLs, and the endpoint etcdctl was given;
//! - durations (`took`), log timestamps, the random client id in etcdctl's log lines;
//! - database sizes and snapshot hashes (two bbolt files with the same keys are not the
//!   same bytes), the remaining TTL of a lease, and each side's own temp directory.
//!
//! Everything else (revisions, values, error texts and the gRPC codes etcdctl logs with
//! them, raft terms and indexes) is compared exactly, so JSON output (`-w json`) is used
//! where it shows revisions. Steps run on A, then through the proxy, and the first step
//! that differs fails the test with both outputs. Each step also says whether it should
//! succeed against etcd directly, so a typo in the script cannot pass as "both failed".
//!
//! Watches run as sessions: etcdctl stays running while the test waits (with a deadline)
//! for a given number of output lines, writes keys, or types commands into `watch -i`;
//! the session ends when the watch is killed, or by closing stdin, or by itself.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{etcdctl_ok, Etcd, Proxy};

/// How long a watch session may take to print what a step waits for, or to exit.
const SESSION_DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------------

/// One step of the script: an etcdctl command, or a watch session.
struct Step {
    name: &'static str,
    /// etcdctl's arguments after `--endpoints`; `{var}` is replaced by a value the side
    /// captured earlier (a lease ID), `{dir}` by the side's own temp directory.
    args: Vec<String>,
    kind: Kind,
    /// Whether the step succeeds against etcd directly (checked, so the script means
    /// what it says).
    expect_ok: bool,
    /// Store the lease ID this step prints (`lease grant`) under this name.
    capture: Option<&'static str>,
    /// Extra JSON fields whose values differ by nature for this step only.
    blank: &'static [&'static str],
}

enum Kind {
    /// Run once to completion, with this on stdin.
    Once { stdin: Option<String> },
    /// Keep etcdctl running through `acts`, then end it as `end` says.
    Session { acts: Vec<Act>, end: End },
}

/// What happens while a session's etcdctl runs.
enum Act {
    /// Type a line into etcdctl's stdin (`watch -i`).
    Send(&'static str),
    /// Run another etcdctl command against the same endpoint; its output is part of the
    /// session's transcript.
    Run(Vec<String>),
    /// Wait until the session has printed this many lines on stdout in all.
    Lines(usize),
}

enum End {
    /// Kill etcdctl (a plain `watch` never ends by itself).
    Kill,
    /// Close stdin and wait for etcdctl to exit by itself.
    Exit,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A command that runs to completion.
fn cmd(name: &'static str, args: &[&str]) -> Step {
    Step {
        name,
        args: strings(args),
        kind: Kind::Once { stdin: None },
        expect_ok: true,
        capture: None,
        blank: &[],
    }
}

/// A long-running etcdctl (watch, keep-alive) driven by `acts`.
fn session(name: &'static str, args: &[&str], acts: Vec<Act>, end: End) -> Step {
    Step {
        name,
        args: strings(args),
        kind: Kind::Session { acts, end },
        expect_ok: true,
        capture: None,
        blank: &[],
    }
}

impl Step {
    fn stdin(mut self, text: &str) -> Step {
        self.kind = Kind::Once {
            stdin: Some(text.to_string()),
        };
        self
    }

    fn fails(mut self) -> Step {
        self.expect_ok = false;
        self
    }

    fn capture_lease(mut self, var: &'static str) -> Step {
        self.capture = Some(var);
        self
    }

    fn blank(mut self, fields: &'static [&'static str]) -> Step {
        self.blank = fields;
        self
    }
}

/// What `etcdctl txn` reads on stdin: the compares, the operations for success and those
/// for failure, each part ended by a blank line.
fn txn_input(compares: &[&str], success: &[&str], failure: &[&str]) -> String {
    let mut text = String::new();
    for part in [compares, success, failure] {
        for line in part {
            text.push_str(line);
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

fn run(args: &[&str]) -> Act {
    Act::Run(strings(args))
}

// ---------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------

/// Replaces every needle by its placeholder, longest needles first, so that a shorter
/// needle (an ID's unpadded hex, an endpoint inside a URL) never eats into a longer one.
fn replace_all(text: &str, names: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = names.iter().filter(|(n, _)| !n.is_empty()).collect();
    sorted.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let mut out = text.to_string();
    for (needle, placeholder) in sorted {
        out = out.replace(needle.as_str(), placeholder);
    }
    out
}

/// Where a bare token (a number, a duration, an id) ends.
fn token_end(s: &str) -> usize {
    s.find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | ']' | ')' | '/' | '"'))
        .unwrap_or(s.len())
}

/// `"field":VALUE` becomes `"field":"<field>"` wherever it occurs; VALUE is a JSON string
/// or a bare scalar. The quotes around the name keep `"ttl"` from matching `"granted-ttl"`.
fn blank_json_field(text: &str, field: &str) -> String {
    let pattern = format!("\"{field}\":");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let after = at + pattern.len();
        out.push_str(&rest[..after]);
        out.push_str(&format!("\"<{field}>\""));
        let value = &rest[after..];
        let len = match value.strip_prefix('"') {
            Some(inner) => inner.find('"').map_or(value.len(), |q| q + 2),
            None => token_end(value),
        };
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

/// The token after each `prefix` becomes `placeholder`.
fn blank_after(text: &str, prefix: &str, placeholder: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = at + prefix.len();
        out.push_str(&rest[..after]);
        out.push_str(placeholder);
        rest = &rest[after..];
        rest = &rest[token_end(rest)..];
    }
    out.push_str(rest);
    out
}

/// JSON fields that differ between two members by nature, in every step.
const TIMING_AND_SIZE_FIELDS: &[&str] = &[
    // zap's log timestamps and snapshot timings.
    "ts",
    "took",
    // bbolt file sizes: same keys, different pages.
    "dbSize",
    "dbSizeInUse",
    "size",
    // A lease's remaining TTL (`lease timetolive -w json`); "granted-ttl" stays exact.
    "ttl",
];

/// Everything but the names: timings, sizes, random client ids.
fn blank_timings(text: &str, extra_fields: &[&str]) -> String {
    let mut t = text.to_string();
    for field in TIMING_AND_SIZE_FIELDS.iter().chain(extra_fields) {
        t = blank_json_field(&t, field);
    }
    // `endpoint health`: "... successfully committed proposal: took = 1.2ms"
    t = blank_after(&t, "took = ", "<took>");
    // `lease timetolive`: "granted with TTL(100s), remaining(97s)"
    t = blank_after(&t, "remaining(", "<ttl>");
    // etcdctl's log lines name its gRPC target: etcdctl 3.4 as
    // "endpoint://client-<uuid>/<endpoint>", etcdctl 3.5 as
    // "etcd-endpoints://0x<address of its client>/<endpoint>".
    t = blank_after(&t, "endpoint://client-", "<uuid>");
    t = blank_after(&t, "etcd-endpoints://0x", "<client>");
    t
}

// ---------------------------------------------------------------------------------------
// One side of the comparison
// ---------------------------------------------------------------------------------------

/// Where one copy of the script runs: etcd A directly, or cutover in front of etcd B.
struct Side {
    /// etcd A itself, as opposed to cutover in front of B.
    direct: bool,
    endpoint: String,
    /// Strings that differ between the sides by nature, and the placeholder for each.
    names: Vec<(String, String)>,
    /// Values captured by earlier steps (lease IDs, in etcdctl's hex).
    vars: BTreeMap<String, String>,
    /// The side's own directory for snapshot files.
    dir: TempDir,
}

impl Side {
    /// `endpoint` is what etcdctl talks to; `member` is the etcd member that answers.
    fn new(direct: bool, endpoint: &str, member: &Etcd) -> Side {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut side = Side {
            direct,
            endpoint: endpoint.to_string(),
            names: Vec::new(),
            vars: BTreeMap::new(),
            dir,
        };
        // Through the proxy, etcd's answers (member list, logs) name B's own URLs, where
        // directly they name A's: the same fact about different members, so both become
        // the same placeholder. B's bare endpoint is deliberately not listed: if it shows
        // up in output through the proxy, the proxy leaked its upstream and it must differ.
        side.name(endpoint, "<endpoint>");
        side.name(&member.client_url, "<client-url>");
        side.name(&member.peer_url, "<peer-url>");
        side.name(&member.name, "<member-name>");
        let dir_path = side.dir.path().display().to_string();
        side.name(&dir_path, "<dir>");
        // The IDs, as the member itself reports them (through the proxy for B).
        let status = etcdctl_ok(endpoint, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&status).expect("endpoint status is JSON");
        let header = &v[0]["Status"]["header"];
        let id = |f: &str| header[f].as_u64().unwrap_or_else(|| panic!("no {f} in {status}"));
        side.id(id("cluster_id"), "<cluster-id>");
        side.id(id("member_id"), "<member-id>");
        side
    }

    fn name(&mut self, needle: &str, placeholder: &str) {
        self.names.push((needle.to_string(), placeholder.to_string()));
    }

    /// An ID as etcdctl prints it: decimal in JSON, hex in `%016x` (leases) or `%x`
    /// (members) in text.
    fn id(&mut self, id: u64, placeholder: &str) {
        for form in [id.to_string(), format!("{id:016x}"), format!("{id:x}")] {
            self.name(&form, placeholder);
        }
    }

    /// `{var}` and `{dir}` in a step's arguments.
    fn expand(&self, args: &[String]) -> Vec<String> {
        args.iter()
            .map(|a| {
                let mut a = a.replace("{dir}", &self.dir.path().display().to_string());
                for (k, v) in &self.vars {
                    a = a.replace(&format!("{{{k}}}"), v);
                }
                a
            })
            .collect()
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=10s")
            .args(self.expand(args));
        c
    }

    /// Runs one etcdctl command to completion.
    fn once(&self, args: &[String], stdin: Option<&str>) -> Outcome {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("etcdctl starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).expect("write etcdctl's stdin");
        }
        let out = child.wait_with_output().expect("etcdctl runs");
        Outcome {
            status: Some(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            notes: Vec::new(),
        }
    }

    /// Runs a long-lived etcdctl through `acts`, then ends it.
    fn session(&self, args: &[String], acts: &[Act], end: &End) -> Outcome {
        let mut s = Session::start(self.command(args));
        let mut notes = Vec::new();
        for act in acts {
            match act {
                Act::Send(line) => s.send(line),
                Act::Run(args) => {
                    let o = self.once(args, None);
                    notes.push(format!("while watching: etcdctl {}\n{}", args.join(" "), o.render()));
                }
                Act::Lines(n) => {
                    if !s.wait_for_lines(*n) {
                        notes.push(format!("gave up waiting for {n} lines of output"));
                        break;
                    }
                }
            }
        }
        let status = match end {
            End::Kill => s.kill(),
            End::Exit => s.close_and_wait().or_else(|| {
                notes.push("etcdctl did not exit by itself".to_string());
                s.kill()
            }),
        };
        let (stdout, stderr) = s.output();
        Outcome {
            status,
            stdout,
            stderr,
            notes,
        }
    }

    fn normalise(&self, text: &str, extra_fields: &[&str]) -> String {
        blank_timings(&replace_all(text, &self.names), extra_fields)
    }

    /// Learns the lease ID a `lease grant` printed, as text or as JSON.
    fn capture_lease(&mut self, var: &str, stdout: &str) -> bool {
        let id = if let Some(rest) = stdout.strip_prefix("lease ") {
            rest.split(' ').next().and_then(|hex| u64::from_str_radix(hex, 16).ok())
        } else {
            serde_json::from_str::<serde_json::Value>(stdout)
                .ok()
                .and_then(|v| v["ID"].as_u64())
        };
        match id {
            Some(id) => {
                self.vars.insert(var.to_string(), format!("{id:x}"));
                self.id(id, &format!("<lease {var}>"));
                true
            }
            None => false,
        }
    }
}

/// What one step printed, and how it ended.
struct Outcome {
    /// `None` if the process could not be ended normally.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    /// Outputs of commands run during a session, and anything that went wrong.
    notes: Vec<String>,
}

impl Outcome {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn render(&self) -> String {
        let status = match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => format!("{s}"),
            },
            None => "did not end".to_string(),
        };
        let mut out = format!("[{status}]\n[stdout]\n{}[stderr]\n{}", self.stdout, self.stderr);
        for n in &self.notes {
            out.push_str(&format!("[note] {n}\n"));
        }
        out
    }
}

/// A running etcdctl whose output is collected as it comes.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Session {
    fn start(mut cmd: Command) -> Session {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("etcdctl starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Session {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn send(&mut self, line: &str) {
        if let Some(pipe) = self.stdin.as_mut() {
            // If etcdctl has already exited the write fails; its output will show why.
            let _ = pipe.write_all(format!("{line}\n").as_bytes());
            let _ = pipe.flush();
        }
    }

    /// Polls until stdout holds `n` lines; false if the deadline passed or etcdctl exited
    /// first.
    fn wait_for_lines(&mut self, n: usize) -> bool {
        let deadline = Instant::now() + SESSION_DEADLINE;
        loop {
            let lines = self.stdout.lock().unwrap().iter().filter(|&&b| b == b'\n').count();
            if lines >= n {
                return true;
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Closes stdin and waits for etcdctl to exit; `None` if it does not in time.
    fn close_and_wait(&mut self) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + SESSION_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything printed, once the process has ended and its pipes are drained.
    fn output(&mut self) -> (String, String) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        (text(&self.stdout), text(&self.stderr))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Running a script on both sides
// ---------------------------------------------------------------------------------------

/// etcd A reached directly, and etcd B reached through cutover; both fresh.
struct Pair {
    direct: Side,
    proxied: Side,
    // Dropped (killed) after the sides; the proxy before its etcd.
    _proxy: Proxy,
    _a: Etcd,
    _b: Etcd,
}

impl Pair {
    async fn start() -> Pair {
        let (a, b) = tokio::join!(Etcd::start(), Etcd::start());
        let proxy = Proxy::start_for(&[&b]).await;
        Pair {
            direct: Side::new(true, &a.endpoint, &a),
            proxied: Side::new(false, &proxy.endpoint, &b),
            _proxy: proxy,
            _a: a,
            _b: b,
        }
    }

    /// Runs every step on both sides; fails at the first step whose normalised outputs
    /// differ, or that does not do on etcd what the script expects.
    fn run(&mut self, script: &[Step]) {
        for (i, step) in script.iter().enumerate() {
            let [direct, proxied] = [&mut self.direct, &mut self.proxied].map(|side| {
                let out = match &step.kind {
                    Kind::Once { stdin } => side.once(&step.args, stdin.as_deref()),
                    Kind::Session { acts, end } => side.session(&step.args, acts, end),
                };
                if let Some(var) = step.capture {
                    // A side that prints no lease ID simply captures nothing; its output
                    // then differs from the other side's and the comparison says so.
                    let ok = side.capture_lease(var, &out.stdout);
                    assert!(
                        ok || !side.direct,
                        "step {i} `{}`: no lease ID in {:?}",
                        step.name,
                        out.stdout
                    );
                }
                let text = side.normalise(&out.render(), step.blank);
                (out, text)
            });
            let what = format!("step {i} `{}` (etcdctl {})", step.name, step.args.join(" "));
            let (d_out, d_text) = direct;
            let (_, p_text) = proxied;
            check_script(&what, step, &d_out, &d_text);
            if d_text != p_text {
                panic!(
                    "{what} prints something else through cutover than directly.\n{}\n=== directly (normalised):\n{d_text}\n=== through cutover (normalised):\n{p_text}",
                    first_difference(&d_text, &p_text)
                );
            }
        }
    }
}

/// Fails if the step did not do against etcd itself what the script says it does.
fn check_script(what: &str, step: &Step, out: &Outcome, text: &str) {
    if out
        .notes
        .iter()
        .any(|n| n.starts_with("gave up") || n.starts_with("etcdctl did not exit"))
    {
        panic!("script error: {what} did not go as planned against etcd directly:\n{text}");
    }
    let judged = !matches!(step.kind, Kind::Session { end: End::Kill, .. });
    if judged && out.success() != step.expect_ok {
        let expected = if step.expect_ok { "succeed" } else { "fail" };
        panic!("script error: {what} should {expected} against etcd directly:\n{text}");
    }
}

fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (la.get(i).copied(), lb.get(i).copied());
        if x != y {
            return format!(
                "first difference at line {}:\n  directly:        {}\n  through cutover: {}",
                i + 1,
                x.unwrap_or("<end of output>"),
                y.unwrap_or("<end of output>")
            );
        }
    }
    "the outputs differ".to_string()
}

// ---------------------------------------------------------------------------------------
// The scripts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn etcdctl_kv_txn_and_compaction_match_etcd() {
    let mut pair = Pair::start().await;
    // Revisions in the comments: a fresh store is at revision 1.
    pair.run(&[
        cmd("put", &["put", "a", "1"]),                            // 2
        cmd("put", &["put", "b", "2"]),                            // 3
        cmd("put", &["put", "c", "3"]),                            // 4
        cmd("overwrite", &["put", "a", "11"]),                     // 5
        cmd("put", &["put", "ab", "x"]),                           // 6
        cmd("put", &["put", "ac", "y"]),                           // 7
        cmd("put with prev-kv", &["put", "a", "12", "--prev-kv"]), // 8
        cmd("put json", &["put", "d", "4", "-w", "json"]),         // 9
        cmd("get json", &["get", "a", "-w", "json"]),
        cmd("get prefix", &["get", "a", "--prefix"]),
        cmd(
            "get prefix with limit",
            &["get", "a", "--prefix", "--limit=2", "-w", "json"],
        ),
        cmd("get at an old revision", &["get", "a", "--rev=2"]),
        cmd(
            "get at an old revision, json",
            &["get", "a", "--prefix", "--rev=5", "-w", "json"],
        ),
        cmd("keys only", &["get", "", "--prefix", "--keys-only"]),
        cmd("keys only json", &["get", "a", "--prefix", "--keys-only", "-w", "json"]),
        // etcdctl 3.4 has no --count-only; the count is in the JSON of a limited range.
        cmd(
            "count with limit 1",
            &["get", "a", "--prefix", "--limit=1", "--keys-only", "-w", "json"],
        ),
        cmd(
            "from key sorted by mod revision",
            &["get", "b", "--from-key", "--sort-by=MODIFY", "--order=DESCEND"],
        ),
        cmd(
            "sorted by value",
            &[
                "get",
                "",
                "--prefix",
                "--sort-by=VALUE",
                "--order=ASCEND",
                "--print-value-only",
            ],
        ),
        cmd(
            "sorted by create revision, json",
            &[
                "get",
                "a",
                "--prefix",
                "--sort-by=CREATE",
                "--order=DESCEND",
                "-w",
                "json",
            ],
        ),
        cmd("range [a, c)", &["get", "a", "c"]),
        cmd("serializable get", &["get", "a", "--consistency=s", "-w", "json"]),
        cmd("hex", &["get", "a", "--hex"]),
        cmd("fields", &["get", "a", "-w", "fields"]),
        cmd("missing key", &["get", "nope", "-w", "json"]),
        cmd("future revision", &["get", "a", "--rev=1000"]).fails(),
        cmd("ignore-value", &["put", "a", "--ignore-value"]), // 10
        cmd("ignore-value on a missing key", &["put", "zz", "--ignore-value"]).fails(),
        cmd("put with an unknown lease", &["put", "x", "y", "--lease=1234"]).fails(),
        cmd("empty key", &["put", "", "v"]).fails(),
        cmd("delete with prev-kv", &["del", "b", "--prev-kv"]), // 11
        cmd("delete a missing key", &["del", "nope"]),
        cmd(
            "delete prefix with prev-kv, json",
            &["del", "a", "--prefix", "--prev-kv", "-w", "json"],
        ), // 12
        cmd("get after delete", &["get", "", "--from-key", "-w", "json"]),
        cmd("txn, then branch, json", &["txn", "-w", "json"]).stdin(&txn_input(
            &[
                r#"value("c") = "3""#,
                r#"mod("c") = "4""#,
                r#"create("c") > "0""#,
                r#"version("c") = "1""#,
            ],
            &["put c 33", "get c"],
            &["put c never"],
        )), // 13
        cmd("txn, else branch", &["txn"]).stdin(&txn_input(
            &[r#"value("c") = "3""#, r#"version("c") < "1""#],
            &["put c never"],
            &["put e 5", "get c", "del nope", r#"get "" --from-key --keys-only"#],
        )), // 14
        cmd("txn, else branch, json", &["txn", "-w", "json"]).stdin(&txn_input(
            &[r#"mod("d") != "9""#],
            &["put d never"],
            &["put d 44 --prev-kv", "del e --prev-kv"],
        )), // 15
        cmd("txn without compares", &["txn"]).stdin(&txn_input(&[], &["put f 6"], &[])), // 16
        cmd("txn with a duplicate key", &["txn"])
            .stdin(&txn_input(&[], &["put g 1", "put g 2"], &[]))
            .fails(),
        cmd("kv hash", &["endpoint", "hashkv", "-w", "json"]),
        cmd("compaction", &["compaction", "5"]),
        cmd("get below the compacted revision", &["get", "a", "--rev=3"]).fails(),
        cmd("get at the compacted revision", &["get", "c", "--rev=5", "-w", "json"]),
        cmd("compaction below the compacted revision", &["compaction", "4"]).fails(),
        cmd("compaction of a future revision", &["compaction", "1000"]).fails(),
        cmd("physical compaction", &["compaction", "8", "--physical"]),
        cmd(
            "get below the compacted revision again",
            &["get", "a", "--rev=7", "-w", "json"],
        )
        .fails(),
        cmd("kv hash after compaction", &["endpoint", "hashkv", "-w", "json"]),
        cmd("everything", &["get", "", "--from-key", "-w", "json"]),
    ]);
}

#[tokio::test]
async fn etcdctl_watch_matches_etcd() {
    let mut pair = Pair::start().await;
    // Each event prints its type, then (with --prev-kv) the previous key and value, then
    // the key and value: 3 lines, or 5 with a previous value. With -w json each response
    // is one line. A session first waits for the history it asked for, so writes made
    // during the watch arrive as responses of their own on both sides.
    pair.run(&[
        cmd("put", &["put", "w/a", "1"]),                  // 2
        cmd("put", &["put", "w/b", "1"]),                  // 3
        cmd("put", &["put", "w/a", "2"]),                  // 4
        cmd("delete", &["del", "w/b"]),                    // 5
        cmd("put outside the prefix", &["put", "x", "1"]), // 6
        session(
            "watch a prefix from a past revision",
            &["watch", "--prefix", "w/", "--rev=2"],
            vec![Act::Lines(12), run(&["put", "w/c", "3"]), Act::Lines(15)], // 7
            End::Kill,
        ),
        session(
            "watch a prefix with prev-kv, json",
            &["watch", "--prefix", "--prev-kv", "w/", "--rev=3", "-w", "json"],
            vec![
                Act::Lines(1),
                run(&["put", "w/a", "3"]), // 8
                Act::Lines(2),
                run(&["del", "w/c"]), // 9
                Act::Lines(3),
            ],
            End::Kill,
        ),
        session(
            "watch a key range",
            &["watch", "w/a", "w/c", "--rev=1"],
            // w/a@2, w/b@3, w/a@4, w/b deleted@5, w/a@8 (w/c is outside [w/a, w/c)).
            vec![Act::Lines(15), run(&["put", "w/b", "9"]), Act::Lines(18)], // 10
            End::Kill,
        ),
        session(
            "watch one key with prev-kv",
            &["watch", "w/a", "--prev-kv", "--rev=4"],
            vec![Act::Lines(10), run(&["del", "w/a"]), Act::Lines(15)], // 11
            End::Kill,
        ),
        session(
            "interactive watch with progress requests",
            &["watch", "-i"],
            // A progress request is answered after the watch before it is created; with
            // two watches open, etcdctl prints the (broadcast) notification once for each.
            // Closing stdin ends `watch -i` with an error of its own.
            vec![
                Act::Send("watch --prefix w/"),
                Act::Send("progress"),
                Act::Lines(1),
                run(&["put", "w/d", "4"]), // 12
                Act::Lines(4),
                Act::Send("progress"),
                Act::Lines(5),
                Act::Send("watch --rev=2 --prev-kv x"),
                Act::Lines(8),
                Act::Send("progress"),
                Act::Lines(10),
            ],
            End::Exit,
        )
        .fails(),
        cmd("compaction", &["compaction", "6"]),
        session(
            "watch from a compacted revision",
            &["watch", "--prefix", "w/", "--rev=2"],
            vec![],
            End::Exit,
        )
        .fails(),
        session(
            "watch from a compacted revision, json",
            &["watch", "w/a", "--rev=3", "-w", "json"],
            vec![],
            End::Exit,
        )
        .fails(),
        session(
            "watch from the compacted revision",
            &["watch", "--prefix", "w/", "--rev=6", "-w", "json"],
            vec![Act::Lines(1)],
            End::Kill,
        ),
    ]);
}

#[tokio::test]
async fn etcdctl_lease_matches_etcd() {
    let mut pair = Pair::start().await;
    // Lease IDs differ between members by nature: each side remembers the IDs it was
    // granted (l1, l2, l3) and uses its own in later commands.
    pair.run(&[
        cmd("grant", &["lease", "grant", "100"]).capture_lease("l1"),
        cmd("grant, json", &["lease", "grant", "200", "-w", "json"]).capture_lease("l2"),
        cmd("attach a key", &["put", "lk1", "v1", "--lease={l1}"]),
        cmd("attach another key", &["put", "lk2", "v2", "--lease={l1}"]),
        cmd("attach a key to the other lease", &["put", "lk3", "v3", "--lease={l2}"]),
        cmd("leased key, json", &["get", "lk", "--prefix", "-w", "json"]),
        cmd("time to live", &["lease", "timetolive", "{l1}"]),
        // etcd lists a lease's keys in Go map order: ask only about a lease with one key.
        cmd("time to live with keys", &["lease", "timetolive", "{l2}", "--keys"]),
        cmd(
            "time to live with keys, json",
            &["lease", "timetolive", "{l2}", "--keys", "-w", "json"],
        ),
        cmd("list", &["lease", "list"]),
        cmd("list, json", &["lease", "list", "-w", "json"]),
        cmd("keep-alive once", &["lease", "keep-alive", "--once", "{l1}"]),
        cmd(
            "keep-alive once, json",
            &["lease", "keep-alive", "--once", "{l2}", "-w", "json"],
        ),
        cmd(
            "keep-alive once of an unknown lease",
            &["lease", "keep-alive", "--once", "1234"],
        )
        .fails(),
        session(
            "keep-alive stream",
            &["lease", "keep-alive", "{l2}"],
            vec![Act::Lines(1)],
            End::Kill,
        ),
        cmd("revoke", &["lease", "revoke", "{l1}"]),
        cmd(
            "keys of a revoked lease are gone",
            &["get", "lk", "--prefix", "-w", "json"],
        ),
        cmd("time to live of a revoked lease", &["lease", "timetolive", "{l1}"]),
        cmd("revoke again", &["lease", "revoke", "{l1}"]).fails(),
        cmd(
            "keep-alive once of a revoked lease",
            &["lease", "keep-alive", "--once", "{l1}"],
        )
        .fails(),
        cmd("put with a revoked lease", &["put", "lk4", "v", "--lease={l1}"]).fails(),
        cmd("grant a third", &["lease", "grant", "300"]).capture_lease("l3"),
        cmd("list after revoke", &["lease", "list"]),
        cmd("grant too long", &["lease", "grant", "10000000000"]).fails(),
        cmd("revoke the second", &["lease", "revoke", "{l2}"]),
        cmd("revoke the third", &["lease", "revoke", "{l3}"]),
        cmd("list when none are left", &["lease", "list", "-w", "json"]),
        // A lock is a lease, a key under the lock's prefix and a watch; with a command
        // given, etcdctl prints only the command's output, and releases the lock after.
        cmd("run a command under a lock", &["lock", "mylock", "echo", "locked"]),
        cmd("lock released", &["get", "mylock", "--prefix", "-w", "json"]),
        cmd("everything", &["get", "", "--from-key", "-w", "json"]),
    ]);
}

#[tokio::test]
async fn etcdctl_auth_matches_etcd() {
    let mut pair = Pair::start().await;
    let root = "--user=root:rootpw";
    pair.run(&[
        cmd("put", &["put", "k1", "v1"]),
        cmd("put", &["put", "a1", "x"]),
        cmd("add root", &["user", "add", "root", "--new-user-password=rootpw"]),
        cmd("add a user", &["user", "add", "alice", "--new-user-password=alicepw"]),
        cmd(
            "add a user, password on stdin",
            &["user", "add", "bob", "--interactive=false"],
        )
        .stdin("bobpw\n"),
        cmd("add a user twice", &["user", "add", "alice", "--new-user-password=x"]).fails(),
        cmd("add a role", &["role", "add", "reader"]),
        cmd("add a role twice", &["role", "add", "reader"]).fails(),
        cmd(
            "grant a prefix",
            &["role", "grant-permission", "reader", "read", "k", "--prefix"],
        ),
        cmd(
            "grant a range",
            &["role", "grant-permission", "reader", "readwrite", "a", "b"],
        ),
        cmd(
            "grant from a key",
            &["role", "grant-permission", "reader", "write", "z", "--from-key"],
        ),
        cmd(
            "grant to a missing role",
            &["role", "grant-permission", "nope", "read", "k"],
        )
        .fails(),
        cmd("root role", &["user", "grant-role", "root", "root"]),
        cmd("grant a role", &["user", "grant-role", "alice", "reader"]),
        cmd("grant a role", &["user", "grant-role", "bob", "reader"]),
        cmd("grant a missing role", &["user", "grant-role", "alice", "nope"]).fails(),
        cmd("get a user", &["user", "get", "alice"]),
        cmd("get a user with detail", &["user", "get", "alice", "--detail"]),
        cmd("get a user, json", &["user", "get", "root", "-w", "json"]),
        cmd("get a missing user", &["user", "get", "nope"]).fails(),
        cmd("get a role", &["role", "get", "reader"]),
        cmd("get a role, json", &["role", "get", "reader", "-w", "json"]),
        cmd("get a missing role", &["role", "get", "nope"]).fails(),
        cmd("list users", &["user", "list"]),
        cmd("list users, json", &["user", "list", "-w", "json"]),
        cmd("list roles", &["role", "list"]),
        cmd("enable auth", &["auth", "enable"]),
        cmd("get without a user", &["get", "k1"]).fails(),
        cmd("get as root", &["get", "k1", root]),
        cmd("get as a reader", &["get", "k1", "--user=alice:alicepw", "-w", "json"]),
        cmd(
            "get as a reader, password flag",
            &["get", "k", "--prefix", "--user=alice", "--password=alicepw"],
        ),
        cmd("write without permission", &["put", "k1", "z", "--user=alice:alicepw"]).fails(),
        cmd("read without permission", &["get", "z", "--user=alice:alicepw"]).fails(),
        cmd("write with permission", &["put", "a1", "y", "--user=alice:alicepw"]),
        cmd("wrong password", &["get", "k1", "--user=alice:wrong"]).fails(),
        cmd("unknown user", &["get", "k1", "--user=nobody:pw"]).fails(),
        cmd("user admin without root", &["user", "list", "--user=alice:alicepw"]).fails(),
        // etcdctl 3.4 reports a member whose health check is refused for lack of a user as
        // unhealthy.
        cmd("health with auth on", &["endpoint", "health"]).fails(),
        cmd("health with auth on, as root", &["endpoint", "health", root]),
        // A user that may not read cutover's fence key costs one refused guard Txn per
        // write before the bare write (see route/fence.rs), and etcd checks permissions
        // after consensus, so the raft index runs ahead through cutover here.
        cmd("status with auth on", &["endpoint", "status", "-w", "json"]).blank(&["raftIndex", "raftAppliedIndex"]),
        cmd(
            "change a password",
            &["user", "passwd", "bob", "--interactive=false", root],
        )
        .stdin("bobpw2\n"),
        cmd("old password", &["get", "k1", "--user=bob:bobpw"]).fails(),
        cmd("new password", &["get", "k1", "--user=bob:bobpw2"]),
        cmd(
            "revoke a permission",
            &["role", "revoke-permission", "reader", "k", "--prefix", root],
        ),
        cmd("read after revoke", &["get", "k1", "--user=bob:bobpw2"]).fails(),
        cmd("revoke a role", &["user", "revoke-role", "bob", "reader", root]),
        cmd("delete a user", &["user", "delete", "bob", root]),
        cmd("delete a role", &["role", "delete", "reader", root]),
        cmd("user without its role", &["user", "get", "alice", root]),
        cmd("list users as root", &["user", "list", root]),
        cmd("disable auth without a user", &["auth", "disable"]).fails(),
        cmd("disable auth as a reader", &["auth", "disable", "--user=alice:alicepw"]).fails(),
        cmd("disable auth", &["auth", "disable", root]),
        cmd("get after disable", &["get", "", "--from-key", "-w", "json"]),
        cmd("delete the last user", &["user", "delete", "alice"]),
        cmd("deleted user", &["user", "get", "alice"]).fails(),
    ]);
}

#[tokio::test]
async fn etcdctl_cluster_and_maintenance_match_etcd() {
    let mut pair = Pair::start().await;
    // Through the proxy, member list and status describe B, the member behind it: its
    // IDs and URLs are normalised like A's. Raft terms and indexes are compared exactly;
    // both members went through the same steps.
    pair.run(&[
        cmd("member list, json", &["member", "list", "-w", "json"]),
        cmd("member list", &["member", "list"]),
        cmd("status, json", &["endpoint", "status", "-w", "json"]),
        cmd("health", &["endpoint", "health"]),
        cmd("health, json", &["endpoint", "health", "-w", "json"]),
        cmd("put", &["put", "m1", "1"]),
        cmd("put", &["put", "m2", "2"]),
        cmd("delete", &["del", "m1"]),
        cmd("kv hash", &["endpoint", "hashkv", "-w", "json"]),
        cmd(
            "kv hash at a revision",
            &["endpoint", "hashkv", "--rev=2", "-w", "json"],
        ),
        cmd("alarms", &["alarm", "list"]),
        cmd("disarm", &["alarm", "disarm"]),
        cmd("snapshot", &["snapshot", "save", "{dir}/snap.db"]),
        // Read back locally: a valid snapshot of the same revision and number of keys.
        // The file's hash and size are the bbolt file's, which differ by nature.
        cmd(
            "snapshot status",
            &["snapshot", "status", "{dir}/snap.db", "-w", "json"],
        )
        .blank(&["hash", "totalSize"]),
        cmd("defrag", &["defrag"]),
        cmd("status after defrag", &["endpoint", "status", "-w", "json"]),
        cmd("physical compaction", &["compaction", "3", "--physical"]),
        cmd("defrag after compaction", &["defrag"]),
        cmd("kv hash after compaction", &["endpoint", "hashkv", "-w", "json"]),
        cmd("remove an unknown member", &["member", "remove", "1234"]).fails(),
        cmd(
            "update an unknown member",
            &["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"],
        )
        .fails(),
        cmd("promote an unknown member", &["member", "promote", "1234"]).fails(),
        cmd("move leadership to an unknown member", &["move-leader", "1234"]).fails(),
        cmd("status at the end", &["endpoint", "status", "-w", "json"]),
    ]);
}

#[test]
fn normalisers_touch_only_what_they_should() {
    let t = r#"{"ts":1795499087.17,"took":"1.2ms","ttl":59,"granted-ttl":60,"dbSize":20480,"x":1}"#;
    assert_eq!(
        blank_timings(t, &[]),
        r#"{"ts":"<ts>","took":"<took>","ttl":"<ttl>","granted-ttl":60,"dbSize":"<dbSize>","x":1}"#
    );
    assert_eq!(
        blank_timings(
            "h is healthy: took = 1.7ms\nremaining(97s)\nendpoint://client-1a-2b/h",
            &[]
        ),
        "h is healthy: took = <took>\nremaining(<ttl>)\nendpoint://client-<uuid>/h"
    );
    // etcdctl 3.5's target: the client's address goes, the endpoint stays.
    assert_eq!(
        blank_timings(r#""target":"etcd-endpoints://0xc0001acf00/127.0.0.1:2379","x":1"#, &[]),
        r#""target":"etcd-endpoints://0x<client>/127.0.0.1:2379","x":1"#
    );
    let names = vec![
        ("127.0.0.1:2379".to_string(), "<endpoint>".to_string()),
        ("http://127.0.0.1:2379".to_string(), "<client-url>".to_string()),
    ];
    assert_eq!(
        replace_all("http://127.0.0.1:2379 127.0.0.1:2379", &names),
        "<client-url> <endpoint>"
    );
}
