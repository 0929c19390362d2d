//! The deployment files against the binary: every YAML document under deploy/, the
//! Dockerfile and .dockerignore.
//!
//! - every cutover container (in a Deployment's containers or initContainers, or in a Kamaji
//!   TenantControlPlane's additionalContainers or additionalInitContainers) runs a command
//!   line the binary accepts, with the config its volumes give it: the ConfigMap's
//!   cutover.yaml at the path of `--config`, each file the config names (certificates, the
//!   admin token) provided by a Secret or ConfigMap of the same file (or made by Kamaji).
//!   `serve` becomes `check-config`, the files are copied under a temp dir, and the binary
//!   must accept it (it refuses unknown keys naming them, which is checked too);
//! - probes: readiness on /readyz and liveness on /healthz, on the config's admin port,
//!   which must listen beyond loopback for the kubelet to reach it;
//! - kube-apiserver's --etcd-servers points at cutover's `listen` and its --etcd-prefix lies
//!   in cutover's `prefix`;
//! - the security context and memory limit of every cutover container;
//! - the Prometheus rules name only metrics a running cutover exports (from its /metrics),
//!   with the suffixes their types get (`_total`, `_bucket`, `_sum`, `_count`), label
//!   values cutover uses, and recording rules the file defines; with `promtool` on the
//!   PATH, also `promtool check rules` and a `promtool test rules` of the alerts;
//! - the Dockerfile's final stage runs the binary it copies, as a numeric non-root user,
//!   with an ENTRYPOINT and CMD the binary accepts, exposing the default ports; and
//!   .dockerignore keeps every file the build needs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_norway::Value;

use crate::support::{Etcd, Proxy};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One YAML document of a file under deploy/.
struct Doc {
    file: String,
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("?")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("?")
    }

    /// `deploy/x.yaml, document 3 (Deployment tenant-00-apiserver)`.
    fn at(&self) -> String {
        format!(
            "{}, document {} ({} {})",
            self.file,
            self.index + 1,
            self.kind(),
            self.name()
        )
    }
}

/// Every non-empty YAML document of every file under deploy/, in file-name order.
fn deploy_docs() -> Vec<Doc> {
    let dir = Path::new(ROOT).join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no files under {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let file = format!("deploy/{}", path.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: cannot read: {e}"));
        for (index, d) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{file}, document {}: not valid YAML: {e}", index + 1));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    index,
                    value,
                });
            }
        }
    }
    docs
}

fn strings(v: &Value, at: &str) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::Sequence(s) => s
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => panic!("{at}: expected a string, found {other:?}"),
            })
            .collect(),
        other => panic!("{at}: expected a list of strings, found {other:?}"),
    }
}

/// Where a file in a container comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    ConfigMap { name: String, key: String },
    Secret { name: String, key: String },
}

/// A pod's worth of containers: a Deployment's pod template, or a TenantControlPlane's
/// additions to Kamaji's control-plane pod.
struct Pod<'a> {
    doc: &'a Doc,
    /// (field path, container)
    containers: Vec<(String, &'a Value)>,
    volumes: Vec<&'a Value>,
    volumes_field: &'static str,
    /// kube-apiserver's arguments, when this pod holds one.
    apiserver: Option<(String, Vec<String>)>,
    /// kube-apiserver's --etcd-prefix, when this pod holds one.
    etcd_prefix: Option<(String, String)>,
    /// kube-apiserver's working directory, for a relative unix socket.
    apiserver_dir: Option<String>,
}

fn pods(docs: &[Doc]) -> Vec<Pod<'_>> {
    let mut out = Vec::new();
    for doc in docs {
        let v = &doc.value;
        match doc.kind() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "Pod" => {
                let (spec, prefix) = if doc.kind() == "Pod" {
                    (&v["spec"], "spec")
                } else {
                    (&v["spec"]["template"]["spec"], "spec.template.spec")
                };
                let mut containers = Vec::new();
                for field in ["initContainers", "containers"] {
                    if let Some(list) = spec[field].as_sequence() {
                        for (i, c) in list.iter().enumerate() {
                            containers.push((format!("{prefix}.{field}[{i}]"), c));
                        }
                    }
                }
                let api = containers
                    .iter()
                    .find(|(_, c)| c["name"] == "kube-apiserver")
                    .map(|(at, c)| (at.clone(), *c));
                let apiserver = api.clone().map(|(at, c)| {
                    let mut args = strings(&c["command"], &format!("{} {at}.command", doc.at()));
                    args.extend(strings(&c["args"], &format!("{} {at}.args", doc.at())));
                    (format!("{at} (kube-apiserver)"), args)
                });
                let etcd_prefix = apiserver.as_ref().map(|(at, args)| {
                    // kube-apiserver's default.
                    (
                        at.clone(),
                        flag(args, "--etcd-prefix").unwrap_or_else(|| "/registry".into()),
                    )
                });
                let apiserver_dir = api.and_then(|(_, c)| c["workingDir"].as_str().map(str::to_string));
                out.push(Pod {
                    doc,
                    containers,
                    volumes: spec["volumes"]
                        .as_sequence()
                        .map(|s| s.iter().collect())
                        .unwrap_or_default(),
                    volumes_field: if doc.kind() == "Pod" {
                        "spec.volumes"
                    } else {
                        "spec.template.spec.volumes"
                    },
                    apiserver,
                    etcd_prefix,
                    apiserver_dir,
                });
            }
            "TenantControlPlane" => {
                let d = &v["spec"]["controlPlane"]["deployment"];
                let prefix = "spec.controlPlane.deployment";
                let mut containers = Vec::new();
                for field in ["additionalInitContainers", "additionalContainers"] {
                    if let Some(list) = d[field].as_sequence() {
                        for (i, c) in list.iter().enumerate() {
                            containers.push((format!("{prefix}.{field}[{i}]"), c));
                        }
                    }
                }
                // Kamaji writes the apiserver's command line; extraArgs.apiServer overrides it.
                let at = format!("{prefix}.extraArgs.apiServer");
                let args = strings(&d["extraArgs"]["apiServer"], &format!("{} {at}", doc.at()));
                // Kamaji's --etcd-prefix is "/" + dataStoreSchema (which defaults to
                // namespace_name, unknown here: the example must name it).
                let schema = v["spec"]["dataStoreSchema"].as_str().unwrap_or_else(|| {
                    panic!(
                        "{}: spec.dataStoreSchema is not set, so the tenant's key prefix (Kamaji's \
                         --etcd-prefix=/<dataStoreSchema>) cannot be compared with cutover's prefix",
                        doc.at()
                    )
                });
                out.push(Pod {
                    doc,
                    containers,
                    volumes: d["additionalVolumes"]
                        .as_sequence()
                        .map(|s| s.iter().collect())
                        .unwrap_or_default(),
                    volumes_field: "spec.controlPlane.deployment.additionalVolumes",
                    apiserver: Some((at, args)),
                    etcd_prefix: Some((
                        "spec.dataStoreSchema (Kamaji's --etcd-prefix)".into(),
                        format!("/{schema}"),
                    )),
                    apiserver_dir: None,
                });
            }
            _ => {}
        }
    }
    out
}

/// A container runs cutover if it is named so or its image is.
fn is_cutover(c: &Value) -> bool {
    let image = c["image"].as_str().unwrap_or("");
    let repo = image.rsplit('/').next().unwrap_or("");
    let repo = repo.split([':', '@']).next().unwrap_or("");
    c["name"] == "cutover" || repo == "cutover"
}

/// The value of `--name=V` or `--name V` (the last one, as flag parsers take it).
fn flag(args: &[String], name: &str) -> Option<String> {
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        } else if a == name {
            found = args.get(i + 1).cloned();
        }
    }
    found
}

/// The index of the value of `--config`/`-c` in `args`, if given as a separate argument or
/// as `--config=FILE` (then the index of that argument).
fn config_arg(args: &[String]) -> Option<(usize, bool)> {
    for (i, a) in args.iter().enumerate() {
        if (a == "--config" || a == "-c") && i + 1 < args.len() {
            return Some((i + 1, false));
        }
        if a.starts_with("--config=") {
            return Some((i, true));
        }
    }
    None
}

/// Which volume source provides `path` in container `c` of `pod`.
fn source_of(pod: &Pod, c: &Value, c_at: &str, path: &str) -> Source {
    let at = pod.doc.at();
    let mounts = c["volumeMounts"].as_sequence().map(|s| s.as_slice()).unwrap_or(&[]);
    // The longest mount path that contains `path` wins, as mounts nest.
    let mut best: Option<(&Value, String)> = None;
    for m in mounts {
        let mount_path = m["mountPath"].as_str().unwrap_or("").trim_end_matches('/');
        let rel = if let Some(sub) = m["subPath"].as_str() {
            (path == mount_path).then(|| sub.to_string())
        } else {
            path.strip_prefix(mount_path)
                .and_then(|r| r.strip_prefix('/'))
                .map(str::to_string)
        };
        if let Some(rel) = rel {
            let longer = best
                .as_ref()
                .map(|(b, _)| b["mountPath"].as_str().unwrap_or("").len() < mount_path.len())
                .unwrap_or(true);
            if longer {
                best = Some((m, rel));
            }
        }
    }
    let Some((mount, rel)) = best else {
        panic!("{at}: {c_at}: no volumeMount of the container covers {path}")
    };
    let vname = mount["name"].as_str().unwrap_or("");
    let volume = pod.volumes.iter().find(|v| v["name"] == vname).unwrap_or_else(|| {
        panic!(
            "{at}: {c_at}: volumeMount {vname:?} names no volume in {}",
            pod.volumes_field
        )
    });
    // (kind, object name, items) of each source of the volume.
    let mut sources: Vec<(&str, String, &Value)> = Vec::new();
    if !volume["configMap"].is_null() {
        sources.push((
            "ConfigMap",
            volume["configMap"]["name"].as_str().unwrap_or("").into(),
            &volume["configMap"]["items"],
        ));
    }
    if !volume["secret"].is_null() {
        sources.push((
            "Secret",
            volume["secret"]["secretName"].as_str().unwrap_or("").into(),
            &volume["secret"]["items"],
        ));
    }
    if let Some(list) = volume["projected"]["sources"].as_sequence() {
        for s in list {
            if !s["configMap"].is_null() {
                sources.push((
                    "ConfigMap",
                    s["configMap"]["name"].as_str().unwrap_or("").into(),
                    &s["configMap"]["items"],
                ));
            }
            if !s["secret"].is_null() {
                sources.push((
                    "Secret",
                    s["secret"]["name"].as_str().unwrap_or("").into(),
                    &s["secret"]["items"],
                ));
            }
        }
    }
    for (kind, name, items) in sources {
        let key = match items.as_sequence() {
            Some(items) => items
                .iter()
                .find(|i| i["path"] == rel.as_str())
                .and_then(|i| i["key"].as_str().map(str::to_string)),
            // Without items every key is a file at the root of the volume.
            None => (!rel.contains('/')).then(|| rel.clone()),
        };
        if let Some(key) = key {
            return match kind {
                "ConfigMap" => Source::ConfigMap { name, key },
                _ => Source::Secret { name, key },
            };
        }
    }
    panic!(
        "{at}: {c_at}: {path} is under the mount of volume {vname:?} but no ConfigMap or Secret of that \
         volume provides {rel:?} (check its items)"
    )
}

/// The content of a ConfigMap or Secret key defined in the same file, or None for a Secret
/// that Kamaji makes for a TenantControlPlane.
fn content(docs: &[Doc], pod: &Pod, src: &Source, what: &str) -> Option<String> {
    let (kind, name, key) = match src {
        Source::ConfigMap { name, key } => ("ConfigMap", name, key),
        Source::Secret { name, key } => ("Secret", name, key),
    };
    let obj = docs
        .iter()
        .find(|d| d.file == pod.doc.file && d.kind() == kind && d.name() == name.as_str());
    let Some(obj) = obj else {
        // Kamaji keeps the apiserver's etcd client certificate for the TenantControlPlane's
        // DataStore in <name>-datastore-certificate (ca.crt, server.crt, server.key).
        let kamaji = pod.doc.kind() == "TenantControlPlane"
            && kind == "Secret"
            && *name == format!("{}-datastore-certificate", pod.doc.name())
            && ["ca.crt", "server.crt", "server.key"].contains(&key.as_str());
        assert!(
            kamaji,
            "{}: {what} comes from {kind} {name:?} key {key:?}, which {} does not define",
            pod.doc.at(),
            pod.doc.file
        );
        return None;
    };
    let value = ["stringData", "data"]
        .iter()
        .find_map(|f| obj.value[*f][key.as_str()].as_str().map(str::to_string));
    Some(value.unwrap_or_else(|| panic!("{}: {what} comes from key {key:?}, which it does not have", obj.at())))
}

/// Every `*File` key of a cutover config (certificates, keys, the admin token, passwords),
/// as (dotted key, path).
fn file_keys(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    if let Some(m) = v.as_mapping() {
        for (k, x) in m {
            let k = k.as_str().unwrap_or("?");
            let key = if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            };
            match x {
                Value::String(s) if k.ends_with("File") => out.push((key, s.clone())),
                _ => file_keys(x, &key, out),
            }
        }
    }
}

/// Rewrites every `*File` path of the config to lie under `root`.
fn reroot(v: &mut Value, root: &Path) {
    if let Some(m) = v.as_mapping_mut() {
        for (k, x) in m.iter_mut() {
            let is_file = k.as_str().map(|k| k.ends_with("File")).unwrap_or(false);
            match x {
                Value::String(s) if is_file => *s = under(root, s).display().to_string(),
                _ => reroot(x, root),
            }
        }
    }
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A cutover container, ready to be run as `check-config` with its files under a temp dir.
struct Prepared {
    at: String,
    /// The index of its pod in `pods(docs)`, and the container's field path there.
    pod: usize,
    c_at: String,
    _root: tempfile::TempDir,
    /// The container's arguments with `serve` -> `check-config` and the temp config path.
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The config as the ConfigMap gives it (paths not rewritten).
    config: Value,
    /// Where the container reads its config.
    config_path: String,
    /// The config with the paths rewritten, as written to the temp dir.
    config_text: String,
    temp_config: PathBuf,
}

fn prepare(docs: &[Doc], pod: &Pod, pod_index: usize, c_at: &str, c: &Value) -> Prepared {
    let at = format!(
        "{}: {c_at} (container {:?})",
        pod.doc.at(),
        c["name"].as_str().unwrap_or("?")
    );
    let mut args = strings(&c["command"], &format!("{at}.command"));
    if let Some(bin) = args.first() {
        assert!(
            bin == "/cutover" || bin == "cutover",
            "{at}: command starts with {bin:?}, not the cutover binary (/cutover in the image)"
        );
        args.remove(0);
    }
    args.extend(strings(&c["args"], &format!("{at}.args")));
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "{at}: the container's arguments {args:?} do not start with `serve`"
    );
    args[0] = "check-config".into();
    let env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let config_path = match config_arg(&args) {
        Some((i, inline)) => {
            if inline {
                args[i].trim_start_matches("--config=").to_string()
            } else {
                args[i].clone()
            }
        }
        None => env
            .iter()
            .find(|(k, _)| k == "CUTOVER_CONFIG")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{at}: no --config in {args:?} and no CUTOVER_CONFIG")),
    };
    let src = source_of(pod, c, c_at, &config_path);
    let config_text = content(docs, pod, &src, &format!("the config {config_path}")).unwrap_or_else(|| {
        panic!(
            "{at}: the config {config_path} must come from a ConfigMap of {}",
            pod.doc.file
        )
    });
    let config: Value = serde_norway::from_str(&config_text)
        .unwrap_or_else(|e| panic!("{at}: the config {config_path} ({src:?}) is not valid YAML: {e}"));

    let root = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    file_keys(&config, "", &mut files);
    for (key, path) in &files {
        let src = source_of(pod, c, c_at, path);
        let text = content(docs, pod, &src, &format!("{key} ({path})"))
            .unwrap_or_else(|| format!("made by Kamaji: {src:?}\n"));
        let file = under(root.path(), path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
    }
    let mut rerooted = config.clone();
    reroot(&mut rerooted, root.path());
    let text = serde_norway::to_string(&rerooted).unwrap();
    let temp_config = under(root.path(), &config_path);
    std::fs::create_dir_all(temp_config.parent().unwrap()).unwrap();
    std::fs::write(&temp_config, &text).unwrap();
    let (i, inline) = config_arg(&args).unwrap_or((usize::MAX, false));
    if i != usize::MAX {
        args[i] = if inline {
            format!("--config={}", temp_config.display())
        } else {
            temp_config.display().to_string()
        };
    }
    let env = env
        .into_iter()
        .map(|(k, v)| {
            if k == "CUTOVER_CONFIG" {
                (k, temp_config.display().to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    Prepared {
        at,
        pod: pod_index,
        c_at: c_at.to_string(),
        _root: root,
        args,
        env,
        config,
        config_path,
        config_text: text,
        temp_config,
    }
}

/// Runs the binary with `args` and `env` only from the cutover environment (no CUTOVER_*
/// inherited from the test's own environment).
fn run(args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CUTOVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cutover runs")
}

/// Every cutover container of every file, prepared.
fn cutover_containers(docs: &[Doc]) -> Vec<Prepared> {
    let pods = pods(docs);
    let mut out = Vec::new();
    for (p, pod) in pods.iter().enumerate() {
        for (c_at, c) in &pod.containers {
            if is_cutover(c) {
                out.push(prepare(docs, pod, p, c_at, c));
            }
        }
    }
    out
}

#[test]
fn every_document_is_a_named_object_without_a_namespace() {
    let docs = deploy_docs();
    for d in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(d.value[field].as_str().is_some(), "{}: no {field}", d.at());
        }
        assert!(
            d.value["metadata"]["name"].as_str().is_some(),
            "{}: no metadata.name",
            d.at()
        );
        // `kubectl apply -n NS -f` puts them in the tenant's namespace.
        assert!(
            d.value["metadata"]["namespace"].is_null(),
            "{}: metadata.namespace is set; the examples are applied with -n",
            d.at()
        );
        if d.kind() == "Deployment" {
            let selector = d.value["spec"]["selector"]["matchLabels"].as_mapping();
            let labels = d.value["spec"]["template"]["metadata"]["labels"].as_mapping();
            for (k, v) in selector.into_iter().flatten() {
                assert!(
                    labels.and_then(|l| l.get(k)) == Some(v),
                    "{}: spec.selector.matchLabels {k:?}={v:?} is not a label of the pod template",
                    d.at()
                );
            }
        }
    }
    for pod in pods(&docs) {
        for (c_at, c) in &pod.containers {
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or("");
                assert!(
                    pod.volumes.iter().any(|v| v["name"] == name),
                    "{}: {c_at}: volumeMount {name:?} names no volume in {}",
                    pod.doc.at(),
                    pod.volumes_field
                );
            }
        }
    }
}

#[test]
fn every_cutover_container_runs_a_config_the_binary_accepts() {
    let docs = deploy_docs();
    let prepared = cutover_containers(&docs);
    let files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    for f in [
        "deploy/sidecar.yaml",
        "deploy/kube-apiserver-with-cutover.yaml",
        "deploy/kamaji-tenantcontrolplane.yaml",
    ] {
        assert!(files.contains(f), "{f} is missing");
    }
    let with_cutover: BTreeSet<&str> = prepared.iter().map(|p| p.at.split(',').next().unwrap_or("")).collect();
    for f in [
        "deploy/sidecar.yaml",
        "deploy/kube-apiserver-with-cutover.yaml",
        "deploy/kamaji-tenantcontrolplane.yaml",
    ] {
        assert!(with_cutover.contains(f), "{f}: no cutover container found");
    }
    for p in &prepared {
        let out = run(&p.args, &p.env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: `cutover {}` (the container's command line, `serve` -> `check-config`, its files \
             under a temp dir) was refused: {stderr}\nconfig as run:\n{}",
            p.at,
            p.args.join(" "),
            p.config_text
        );
        let active = p.config["dataStore"].as_str().unwrap_or("?");
        assert!(
            stdout.contains(&format!("dataStore: {active}")),
            "{}: check-config did not print the active datastore {active:?}: {stdout}",
            p.at
        );

        // An unknown key is refused with its name: so a key the binary does not know in
        // these configs would have failed above, naming it.
        let mut bad: Value = serde_norway::from_str(&p.config_text).unwrap();
        bad.as_mapping_mut()
            .unwrap()
            .insert(Value::String("deployTestUnknownKey".into()), Value::Number(1.into()));
        std::fs::write(&p.temp_config, serde_norway::to_string(&bad).unwrap()).unwrap();
        let out = run(&p.args, &p.env);
        std::fs::write(&p.temp_config, &p.config_text).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && stderr.contains("deployTestUnknownKey"),
            "{}: a config with an unknown key was not refused naming it (exit {:?}): {stderr}",
            p.at,
            out.status.code()
        );
    }
}

/// The address of a cutover config's admin API.
fn admin_addr(config: &Value, at: &str) -> SocketAddr {
    let listen = config["admin"]["listen"].as_str().unwrap_or("127.0.0.1:9180");
    listen
        .parse()
        .unwrap_or_else(|e| panic!("{at}: admin.listen {listen:?} is not ip:port: {e}"))
}

#[test]
fn probes_use_the_admin_api_of_the_config_and_containers_are_locked_down() {
    let docs = deploy_docs();
    let pods = pods(&docs);
    for p in cutover_containers(&docs) {
        let pod = &pods[p.pod];
        let (c_at, c) = pod.containers.iter().find(|(c_at, _)| *c_at == p.c_at).unwrap();
        let at = &p.at;
        let admin = admin_addr(&p.config, at);
        assert!(
            admin.ip().is_unspecified(),
            "{at}: admin.listen is {admin} in {}; the kubelet probes the pod IP, so it must listen on \
             0.0.0.0 (or [::])",
            p.config_path
        );
        if c_at.contains("nitContainers") {
            assert_eq!(
                c["restartPolicy"].as_str(),
                Some("Always"),
                "{at}: cutover as an init container needs restartPolicy: Always (a native sidecar), or \
                 the pod never gets past it"
            );
        }
        let ports: BTreeMap<String, u64> = c["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["containerPort"].as_u64()?)))
            .collect();
        for (probe, paths, required) in [
            ("readinessProbe", &["/readyz"][..], true),
            ("livenessProbe", &["/healthz"][..], true),
            ("startupProbe", &["/healthz", "/readyz"][..], false),
        ] {
            let get = &c[probe]["httpGet"];
            if get.is_null() {
                assert!(!required, "{at}: no {probe}.httpGet");
                continue;
            }
            let path = get["path"].as_str().unwrap_or("");
            assert!(
                paths.contains(&path),
                "{at}: {probe} asks {path:?}, expected one of {paths:?}"
            );
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(name) => *ports.get(name).unwrap_or_else(|| {
                    panic!("{at}: {probe} names port {name:?}, which the container does not declare")
                }),
                other => panic!("{at}: {probe}.httpGet.port is {other:?}"),
            };
            assert_eq!(
                port,
                admin.port() as u64,
                "{at}: {probe} probes port {port}, but admin.listen in {} is {admin}",
                p.config_path
            );
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            assert_eq!(
                scheme, "HTTP",
                "{at}: {probe} uses {scheme}; the admin API is plain HTTP"
            );
        }

        let sc = &c["securityContext"];
        for (field, want) in [
            ("runAsNonRoot", Value::Bool(true)),
            ("readOnlyRootFilesystem", Value::Bool(true)),
            ("allowPrivilegeEscalation", Value::Bool(false)),
        ] {
            assert_eq!(sc[field], want, "{at}: securityContext.{field} should be {want:?}");
        }
        assert!(
            strings(&sc["capabilities"]["drop"], at).iter().any(|c| c == "ALL"),
            "{at}: securityContext.capabilities.drop should contain ALL"
        );
        assert!(
            c["resources"]["limits"]["memory"].as_str().is_some(),
            "{at}: no resources.limits.memory"
        );
    }
}

/// A gateway is reached as a Kamaji DataStore: a Service of the same file selects its pods
/// and carries its `listen` port, the DataStore's endpoints are that Service's names and
/// port, and the DataStore's CA is the one the gateway verifies clients with.
#[test]
fn a_kamaji_datastore_reaches_each_gateway_through_its_service() {
    let docs = deploy_docs();
    let pods = pods(&docs);
    let mut gateways = 0;
    for p in cutover_containers(&docs) {
        if p.config["mode"] != "gateway" {
            continue;
        }
        gateways += 1;
        let pod = &pods[p.pod];
        let at = &p.at;
        let listen_port: u64 = p.config["listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{at}: gateway mode listens on TCP: {:?}", p.config["listen"]));
        let (_, c) = pod.containers.iter().find(|(c_at, _)| *c_at == p.c_at).unwrap();
        let named_port = |name: &str| {
            c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|port| port["name"] == name)
                .and_then(|port| port["containerPort"].as_u64())
        };
        let labels = &pod.doc.value["spec"]["template"]["metadata"]["labels"];
        let same_file = |kind: &'static str| docs.iter().filter(move |d| d.file == pod.doc.file && d.kind() == kind);
        let service = same_file("Service")
            .find(|svc| {
                svc.value["spec"]["selector"]
                    .as_mapping()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| &labels[k.as_str().unwrap_or("")] == v))
            })
            .unwrap_or_else(|| panic!("{at}: no Service in {} selects the gateway's pods", pod.doc.file));
        let svc_port = service.value["spec"]["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|sp| match &sp["targetPort"] {
                Value::Number(n) => n.as_u64() == Some(listen_port),
                Value::String(name) => named_port(name) == Some(listen_port),
                _ => sp["port"].as_u64() == Some(listen_port),
            })
            .and_then(|sp| sp["port"].as_u64())
            .unwrap_or_else(|| {
                panic!(
                    "{}: no port reaches the gateway's listen port {listen_port}",
                    service.at()
                )
            });
        let datastore = same_file("DataStore")
            .next()
            .unwrap_or_else(|| panic!("{at}: no Kamaji DataStore in {}", pod.doc.file));
        assert_eq!(datastore.value["spec"]["driver"], "etcd", "{}", datastore.at());
        let endpoints = strings(&datastore.value["spec"]["endpoints"], &datastore.at());
        assert!(!endpoints.is_empty(), "{}: no endpoints", datastore.at());
        for ep in &endpoints {
            let (host, port) = ep
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{}: endpoint {ep:?} has no port", datastore.at()));
            assert!(
                host == service.name() || host.starts_with(&format!("{}.", service.name())),
                "{}: endpoint {ep:?} is not Service {:?}",
                datastore.at(),
                service.name()
            );
            assert_eq!(port, svc_port.to_string(), "{}: endpoint {ep:?}", datastore.at());
        }
        let ca_secret = datastore.value["spec"]["tlsConfig"]["certificateAuthority"]["certificate"]["secretReference"]
            ["name"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{}: no tlsConfig.certificateAuthority: Kamaji signs tenants' certificates with it",
                    datastore.at()
                )
            });
        let (_, c) = pod.containers.iter().find(|(c_at, _)| *c_at == p.c_at).unwrap();
        let client_ca = p.config["tls"]["clientCAFile"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: a gateway needs tls.clientCAFile"));
        match source_of(pod, c, &p.c_at, client_ca) {
            Source::Secret { name, .. } => assert_eq!(
                name, ca_secret,
                "{at}: the gateway verifies clients with Secret {name:?}, the DataStore's CA is {ca_secret:?}"
            ),
            other => panic!("{at}: tls.clientCAFile comes from {other:?}, not the DataStore's CA Secret"),
        }
    }
    assert!(gateways > 0, "deploy/ has a gateway");
}

#[test]
fn kube_apiserver_stores_through_cutover_within_its_prefix() {
    let docs = deploy_docs();
    let pods = pods(&docs);
    for p in cutover_containers(&docs) {
        let pod = &pods[p.pod];
        let at = &p.at;
        if p.config["mode"] == "gateway" {
            // No apiserver beside a gateway: Kamaji's DataStore names it (below).
            continue;
        }
        let (api_at, args) = pod
            .apiserver
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: no kube-apiserver container beside cutover"));
        let servers = flag(args, "--etcd-servers")
            .unwrap_or_else(|| panic!("{}: {api_at}: no --etcd-servers in {args:?}", pod.doc.at()));
        let listen = p.config["listen"].as_str().unwrap_or("127.0.0.1:2379");
        let tls = !p.config["tls"].is_null();
        for server in servers.split(',') {
            let wrong = |why: &str| -> ! {
                panic!(
                    "{}: {api_at}: --etcd-servers has {server:?}, but cutover (listen: {listen}{}) {why}",
                    pod.doc.at(),
                    if tls { ", tls" } else { "" }
                )
            };
            if let Some(path) = listen.strip_prefix("unix://").or_else(|| listen.strip_prefix("unix:")) {
                let given = server
                    .strip_prefix("unix://")
                    .or_else(|| server.strip_prefix("unix:"))
                    .unwrap_or_else(|| wrong("listens on a unix socket"));
                let given = match (&pod.apiserver_dir, given.starts_with('/')) {
                    (Some(dir), false) => format!("{}/{given}", dir.trim_end_matches('/')),
                    _ => given.to_string(),
                };
                if given != path {
                    wrong(&format!("listens on {path}"));
                }
            } else {
                let want: SocketAddr = listen
                    .parse()
                    .unwrap_or_else(|e| panic!("{at}: listen {listen:?}: {e}"));
                let scheme = if tls { "https" } else { "http" };
                let rest = server
                    .strip_prefix(&format!("{scheme}://"))
                    .unwrap_or_else(|| wrong(&format!("serves {scheme}")));
                let rest = rest.trim_end_matches('/');
                let rest = match rest.strip_prefix("localhost:") {
                    Some(port) => format!("127.0.0.1:{port}"),
                    None => rest.to_string(),
                };
                let given: SocketAddr = rest.parse().unwrap_or_else(|_| wrong("is not at that address"));
                let same = given == want
                    || (want.ip().is_unspecified() && given.ip().is_loopback() && given.port() == want.port());
                if !same {
                    wrong("is not at that address");
                }
            }
        }
        // Every key kube-apiserver writes is <etcd-prefix>/...: it must lie in the tenant's
        // prefix, or cutover refuses it (and a migration would not move it).
        let (prefix_at, etcd_prefix) = pod.etcd_prefix.as_ref().unwrap();
        let keys = format!("{}/", etcd_prefix.trim_end_matches('/'));
        let tenant = p.config["prefix"].as_str().unwrap_or("");
        assert!(
            keys.starts_with(tenant),
            "{}: {prefix_at}: kube-apiserver writes keys under {keys:?}, outside cutover's prefix {tenant:?} \
             in {}",
            pod.doc.at(),
            p.config_path
        );
    }
}

/// Metric families as (name, type), from the `# TYPE` lines of an exposition.
fn type_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// cutover's metric families. prometheus-client prints a labelled family only once it has
/// a child, so a running proxy shows only some of them: every family of the registry
/// (`cutover::metrics::Metrics`) is given a child here and its exposition read; the running
/// binary's /metrics must name nothing beyond those, with the same types.
async fn metric_families() -> BTreeMap<String, String> {
    use cutover::metrics::{DatastoreLabels, EndpointLabels, Metrics, OutcomeLabels};
    let m = Metrics::new();
    m.observe_unary("KV", "Range", tonic::Code::Ok, std::time::Duration::from_millis(1));
    let _stream = m.stream_guard("watch");
    m.endpoint_up
        .get_or_create(&EndpointLabels {
            datastore: "d".into(),
            endpoint: "http://e:2379".into(),
        })
        .set(1);
    m.failovers
        .get_or_create(&DatastoreLabels { datastore: "d".into() })
        .inc();
    m.fenced_writes.get_or_create(&OutcomeLabels { outcome: "held" }).inc();
    m.migrations.get_or_create(&OutcomeLabels { outcome: "failed" }).inc();
    let registry = m.encode();
    let families = type_lines(&registry);
    for f in [
        "cutover_grpc_requests",
        "cutover_fenced_writes",
        "cutover_migrations",
        "cutover_migration_phase",
    ] {
        assert!(
            families.contains_key(f),
            "{f} missing from the registry's exposition:\n{registry}"
        );
    }

    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    crate::support::etcdctl_ok(&proxy.endpoint, &["put", "k", "v"]);
    let served = proxy.metrics().await;
    let running = type_lines(&served);
    assert!(
        running.contains_key("cutover_grpc_requests") && running.contains_key("cutover_migration_phase"),
        "unexpected /metrics of a running cutover:\n{served}"
    );
    for (name, kind) in &running {
        assert_eq!(
            families.get(name),
            Some(kind),
            "the running cutover exports {name} ({kind}), which cutover::metrics::Metrics does not have \
             with that type: this test reads the wrong registry"
        );
    }
    families
}

/// Whether `name` is a series a Prometheus scrape of these families produces.
fn exported(families: &BTreeMap<String, String>, name: &str) -> bool {
    if families.get(name).map(String::as_str) == Some("gauge") {
        return true;
    }
    let with = |suffix: &str, kind: &str| {
        name.strip_suffix(suffix)
            .and_then(|f| families.get(f))
            .map(|k| k == kind)
            .unwrap_or(false)
    };
    with("_total", "counter")
        || with("_bucket", "histogram")
        || with("_sum", "histogram")
        || with("_count", "histogram")
        || families.get(name).map(String::as_str) == Some("info")
}

/// The `cutover_...` and `cutover:...` names in `text`, each starting a word.
fn names(text: &str, start: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(start) {
        if text[..i].chars().next_back().map(word).unwrap_or(false) {
            continue;
        }
        let end = text[i..].find(|c: char| !word(c)).map(|e| i + e).unwrap_or(text.len());
        out.insert(text[i..end].to_string());
    }
    out
}

/// The values a label matcher `label="v"` or `label=~"a|b"` accepts, in `expr`.
fn matcher_values(expr: &str, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    for op in ["=~\"", "=\"", "!=\"", "!~\""] {
        let pat = format!("{label}{op}");
        for (i, _) in expr.match_indices(&pat) {
            if expr[..i]
                .chars()
                .next_back()
                .map(|c| c.is_ascii_alphanumeric() || c == '_')
                .unwrap_or(false)
            {
                continue;
            }
            let rest = &expr[i + pat.len()..];
            let v = &rest[..rest.find('"').unwrap_or(rest.len())];
            out.extend(v.split('|').map(str::to_string));
        }
    }
    out
}

#[tokio::test]
async fn prometheus_rules_use_only_metrics_cutover_exports() {
    let docs = deploy_docs();
    let families = metric_families().await;

    // Every cutover_ name anywhere under deploy/ (rules, comments, annotations).
    let mut seen = 0;
    let files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    for file in files {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            for name in names(line, "cutover_") {
                seen += 1;
                assert!(
                    exported(&families, &name),
                    "{file} line {}: {name} is not a metric cutover exports (families: {:?}; counters \
                     take _total, histograms _bucket/_sum/_count)",
                    n + 1,
                    families
                );
            }
        }
    }
    let rules: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "PrometheusRule").collect();
    assert!(!rules.is_empty(), "no PrometheusRule under deploy/");
    assert!(
        seen >= 8,
        "only {seen} cutover_ metric names found under deploy/: is the scan broken?"
    );

    // Label values cutover produces: gRPC codes as cutover names them, outcomes of fenced
    // writes (README, "Admin API and metrics") and of migrations.
    let codes: BTreeSet<String> = (0..=16)
        .map(|i| cutover::error::code_name(tonic::Code::from_i32(i)).to_string())
        .collect();
    let outcomes: BTreeSet<String> = ["held", "held_rejected", "rejected"]
        .into_iter()
        .map(str::to_string)
        .chain(
            [
                cutover::migrate::Outcome::Succeeded,
                cutover::migrate::Outcome::Failed,
                cutover::migrate::Outcome::Aborted,
            ]
            .iter()
            .map(|o| o.as_str().to_string()),
        )
        .collect();

    for d in rules {
        let groups = d.value["spec"]["groups"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{}: no spec.groups", d.at()));
        let mut recorded = BTreeSet::new();
        let mut used = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let rules = group["rules"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{}: spec.groups[{g}] has no rules", d.at()));
            for (r, rule) in rules.iter().enumerate() {
                let at = format!("{}: spec.groups[{g}].rules[{r}]", d.at());
                let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{at}: no expr"));
                match (rule["record"].as_str(), rule["alert"].as_str()) {
                    (Some(name), None) => {
                        recorded.insert(name.to_string());
                    }
                    (None, Some(alert)) => {
                        assert!(
                            rule["labels"]["severity"].as_str().is_some(),
                            "{at} (alert {alert}): no labels.severity"
                        );
                        assert!(
                            rule["annotations"]["summary"].as_str().is_some(),
                            "{at} (alert {alert}): no annotations.summary"
                        );
                    }
                    _ => panic!("{at}: a rule has exactly one of record and alert"),
                }
                for v in matcher_values(expr, "code") {
                    assert!(
                        codes.contains(&v),
                        "{at}: code {v:?} is not a gRPC code as cutover names it ({codes:?})"
                    );
                }
                for v in matcher_values(expr, "outcome") {
                    assert!(
                        outcomes.contains(&v),
                        "{at}: outcome {v:?} is not one cutover records ({outcomes:?})"
                    );
                }
                for name in names(expr, "cutover:") {
                    used.push((at.clone(), name));
                }
            }
        }
        for (at, name) in used {
            assert!(
                recorded.contains(&name),
                "{at}: uses {name}, which no rule of the file records"
            );
        }
        promtool(d);
    }
}

/// `promtool check rules` and a unit test of some alerts, when promtool is installed.
fn promtool(d: &Doc) {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("promtool is not installed: {} checked without it", d.at());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_norway::to_string(&d.value["spec"]).unwrap()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: promtool check rules refused spec: {}{}",
        d.at(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Alerts that must fire on these series, and one that must not. promtool compares
    // annotations too: the copy under test has none (their templates were checked above).
    let mut spec = d.value["spec"].clone();
    for group in spec["groups"].as_sequence_mut().into_iter().flatten() {
        for rule in group["rules"].as_sequence_mut().into_iter().flatten() {
            if let Some(m) = rule.as_mapping_mut() {
                m.remove("annotations");
            }
        }
    }
    std::fs::write(&rules, serde_norway::to_string(&spec).unwrap()).unwrap();
    let test = r#"
rule_files: [rules.yaml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'cutover_migration_phase{namespace="t",pod="p"}'
        values: '0 0 4x8'
      - series: 'cutover_migrations_total{namespace="t",pod="p",outcome="failed"}'
        values: '0 0 1x8'
      - series: 'cutover_upstream_endpoint_up{namespace="t",pod="p",datastore="dedicated",endpoint="https://e:2379"}'
        values: '1 0x12'
      - series: 'cutover_fenced_writes_total{namespace="t",pod="p",outcome="rejected"}'
        values: '0+10x16'
      - series: 'cutover_grpc_requests_total{namespace="t",pod="p",service="KV",method="Range",code="OK"}'
        values: '0+100x60'
      - series: 'cutover_grpc_requests_total{namespace="t",pod="p",service="KV",method="Range",code="NotFound"}'
        values: '0+100x60'
    alert_rule_test:
      - eval_time: 2m
        alertname: CutoverFenceHeldTooLong
        exp_alerts:
          - exp_labels: {severity: critical, namespace: t, pod: p}
      - eval_time: 2m
        alertname: CutoverMigrationFailed
        exp_alerts:
          - exp_labels: {severity: warning, namespace: t, pod: p}
      - eval_time: 3m
        alertname: CutoverDatastoreDown
        exp_alerts:
          - exp_labels: {severity: critical, namespace: t, pod: p, datastore: dedicated}
      - eval_time: 3m30s
        alertname: CutoverWritesRejected
        exp_alerts:
          - exp_labels: {severity: critical, namespace: t, pod: p}
      # NotFound is etcd's ordinary answer, not an error of the proxy.
      - eval_time: 15m
        alertname: CutoverErrorRateHigh
        exp_alerts: []
"#;
    let test_file = dir.path().join("test.yaml");
    std::fs::write(&test_file, test).unwrap();
    let out = Command::new("promtool")
        .current_dir(dir.path())
        .arg("test")
        .arg("rules")
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: promtool test rules: the alerts do not behave as intended: {}{}",
        d.at(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Dockerfile's instructions, continuation lines joined: (line number, INSTRUCTION, rest).
fn instructions(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (start, mut acc) = current.take().unwrap_or((n + 1, String::new()));
        let (part, cont) = match trimmed.strip_suffix('\\') {
            Some(p) => (p, true),
            None => (trimmed, false),
        };
        acc.push_str(part);
        acc.push(' ');
        if cont {
            current = Some((start, acc));
        } else {
            let acc = acc.trim().to_string();
            let (word, rest) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
            out.push((start, word.to_uppercase(), rest.trim().to_string()));
        }
    }
    out
}

#[test]
fn the_dockerfile_runs_the_binary_as_the_manifests_do() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("a Dockerfile");
    let all = instructions(&text);
    let last_from = all
        .iter()
        .rposition(|(_, i, _)| i == "FROM")
        .expect("Dockerfile: no FROM");
    let build_stages = &all[..last_from];
    let last = &all[last_from..];
    let exec_form = |what: &str| -> Vec<String> {
        let (n, _, rest) = last
            .iter()
            .rev()
            .find(|(_, i, _)| i == what)
            .unwrap_or_else(|| panic!("Dockerfile: the final stage has no {what}"));
        serde_json::from_str(rest).unwrap_or_else(|e| {
            panic!(
                "Dockerfile line {n}: {what} {rest} is not the exec (JSON array) form ({e}); the shell \
                 form needs a shell, which distroless lacks, and keeps signals from cutover"
            )
        })
    };
    let entrypoint = exec_form("ENTRYPOINT");
    let cmd = exec_form("CMD");
    assert_eq!(
        entrypoint.len(),
        1,
        "Dockerfile: ENTRYPOINT {entrypoint:?}: expected the binary alone"
    );
    let bin = &entrypoint[0];
    let copied = last.iter().any(|(_, i, rest)| {
        i == "COPY" && rest.starts_with("--from=") && rest.split_whitespace().last() == Some(bin.as_str())
    });
    assert!(
        copied,
        "Dockerfile: ENTRYPOINT runs {bin}, which the final stage does not COPY --from a build stage"
    );
    let builds = build_stages.iter().any(|(_, i, rest)| {
        i == "RUN"
            && rest.contains("cargo build")
            && rest.contains("--release")
            && rest.contains("--locked")
            && rest.contains("--bin cutover")
    });
    assert!(
        builds,
        "Dockerfile: no build stage runs `cargo build --release --locked --bin cutover`"
    );
    let user = last
        .iter()
        .rev()
        .find(|(_, i, _)| i == "USER")
        .map(|(_, _, u)| u.clone())
        .expect("Dockerfile: the final stage sets no USER (the base image's may be root)");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| {
        panic!("Dockerfile: USER {user}: not numeric, so Kubernetes' runAsNonRoot cannot check it")
    });
    assert_ne!(uid, 0, "Dockerfile: USER {user} is root");

    // The default ports, as the binary reports them.
    let out = run(
        &[
            "check-config",
            "--data-store",
            "d",
            "--data-store-endpoints",
            "d=127.0.0.1:1",
        ]
        .map(String::from),
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let port_of = |key: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|a| a.rsplit(':').next())
            .unwrap_or_else(|| panic!("check-config printed no {key:?}: {stdout}"))
            .to_string()
    };
    let exposed: BTreeSet<String> = last
        .iter()
        .filter(|(_, i, _)| i == "EXPOSE")
        .flat_map(|(_, _, rest)| rest.split_whitespace().map(|p| p.trim_end_matches("/tcp").to_string()))
        .collect();
    for port in [port_of("listen: "), port_of("admin: ")] {
        assert!(
            exposed.contains(&port),
            "Dockerfile: EXPOSE {exposed:?} lacks cutover's default port {port}"
        );
    }

    // CMD is what the manifests run: the same arguments, the same config path; and the
    // binary accepts it with a manifest's config at that path.
    let docs = deploy_docs();
    let prepared = cutover_containers(&docs);
    let p = prepared
        .iter()
        .find(|p| p.at.starts_with("deploy/kube-apiserver-with-cutover.yaml"))
        .expect("a cutover container in deploy/kube-apiserver-with-cutover.yaml");
    for q in &prepared {
        let mut theirs = q.args.clone();
        theirs[0] = "serve".into();
        if let Some((i, false)) = config_arg(&theirs) {
            theirs[i] = q.config_path.clone();
        }
        assert_eq!(
            theirs, cmd,
            "{}: the container's arguments differ from the image's CMD in the Dockerfile",
            q.at
        );
    }
    let mut args = cmd.clone();
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "Dockerfile: CMD {cmd:?} does not start with serve"
    );
    args[0] = "check-config".into();
    let (i, inline) = config_arg(&args).unwrap_or_else(|| panic!("Dockerfile: CMD {cmd:?} gives no --config"));
    assert!(!inline);
    assert_eq!(
        args[i], p.config_path,
        "Dockerfile: CMD reads {}, the manifests mount the config at {}",
        args[i], p.config_path
    );
    args[i] = p.temp_config.display().to_string();
    let out = run(&args, &[]);
    assert!(
        out.status.success(),
        "Dockerfile: `{} {}` refused (with the config of {}): {}",
        bin,
        cmd.join(" "),
        p.at,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerignore_keeps_what_the_build_needs() {
    let text = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect("a .dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .collect();
    assert!(
        patterns.iter().any(|p| p.trim_matches('/') == "target"),
        ".dockerignore: target/ is not excluded"
    );
    // Cargo reads every target Cargo.toml declares (benches, tests/it) before building.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src",
        "proto",
        "benches",
        "tests",
    ] {
        assert!(
            Path::new(ROOT).join(needed).exists(),
            "{needed} is gone: update this test"
        );
        for p in &patterns {
            let p = p.trim_matches('/');
            assert!(
                p != needed && p != "*" && p != "**" && !needed.starts_with(&format!("{p}/")),
                ".dockerignore: {p:?} excludes {needed}, which `cargo build` needs"
            );
        }
    }
}
