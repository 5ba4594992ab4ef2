//! The reconciler with a fake source and a fake kernel: what each configuration makes it write,
//! and that it never needs to know where a configuration came from.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;

use super::*;
use crate::config::Source;

/// Records what the reconciler writes.
#[derive(Default)]
struct FakeKernel {
    cgroup: PathBuf,
    routes: Mutex<Vec<Vec<(String, u16)>>>,
    generations: Mutex<Vec<u64>>,
    registry_only: Mutex<Vec<bool>>,
}

impl FakeKernel {
    fn last_routes(&self) -> Vec<(String, u16)> {
        self.routes
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
    fn syncs(&self) -> usize {
        self.routes.lock().unwrap().len()
    }
}

impl Kernel for FakeKernel {
    fn cgroup(&self) -> &Path {
        &self.cgroup
    }
    fn set_outbound_policy(&self, registry_only: bool, _: &[IpNet]) -> Result<(), BpfError> {
        self.registry_only.lock().unwrap().push(registry_only);
        Ok(())
    }
    fn sync_services(&self, routes: &[ServiceRoute]) -> Result<(), BpfError> {
        let mut routes: Vec<(String, u16)> =
            routes.iter().map(|r| (r.net.to_string(), r.port)).collect();
        routes.sort();
        self.routes.lock().unwrap().push(routes);
        Ok(())
    }
    fn set_generation(&self, generation: u64) -> Result<(), BpfError> {
        self.generations.lock().unwrap().push(generation);
        Ok(())
    }
    fn sync_anchors(&self, _: &[(u64, crate::bpf::AnchorFlags)]) -> Result<(), BpfError> {
        Ok(())
    }
    fn cache_deny(&self, _: u64, _: u32, _: u16, _: u64) -> Result<(), BpfError> {
        Ok(())
    }
    fn sweep_verdicts(&self, _: u64) -> Result<usize, BpfError> {
        Ok(0)
    }
}

/// Configurations pushed by the test, as a Kubernetes watch or a file edit would yield them.
struct FakeSource(mpsc::Receiver<Snapshot>);

impl ConfigSource for FakeSource {
    async fn next(&mut self) -> Option<Snapshot> {
        self.0.recv().await
    }
}

/// One ServiceEntry per (name, address, port), as the Kubernetes source would validate it.
fn config(entries: &[(&str, &str, u16)]) -> ConfigSet {
    let mut set = ConfigSet::default();
    for (name, address, port) in entries {
        let value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "istio-egress"},
            "spec": {
                "hosts": [format!("{name}.test")],
                "addresses": [address],
                "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
                "resolution": "STATIC",
                "endpoints": [{"address": "127.0.0.1"}],
            },
        });
        let source = Source::object("ServiceEntry", "istio-egress", name);
        set.merge(crate::config::parse_object(&value, &source).expect("a valid ServiceEntry"));
    }
    set
}

async fn reconciler(initial: ConfigSet, kernel: Arc<FakeKernel>) -> Reconciler {
    let root = tempfile::tempdir().expect("a temporary directory");
    let identities = Arc::new(CgroupIdentities::new(root.path(), "cluster.local"));
    Reconciler::start(
        "istio-system",
        initial,
        kernel,
        identities,
        true,
        Outbound {
            registry_only: None,
            allowed: Vec::new(),
        },
        DnsOptions::default(),
    )
    .await
    .expect("the reconciler starts")
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 2 s");
}

#[tokio::test]
async fn snapshots_from_a_source_are_published_and_synced_to_the_kernel() {
    let kernel = Arc::new(FakeKernel::default());
    let initial = config(&[("a", "198.18.0.1", 80)]);
    let reconciler = reconciler(initial, kernel.clone()).await;
    assert_eq!(kernel.last_routes(), [("198.18.0.1".to_owned(), 80)]);
    assert_eq!(kernel.registry_only.lock().unwrap().as_slice(), [false]);
    let services = reconciler.services();
    assert_eq!(services.load().len(), 1);
    let first_generation = services.load().generation;

    let (tx, rx) = mpsc::channel(4);
    let (_rescans_tx, rescans) = mpsc::channel(1);
    let task = tokio::spawn(reconciler.run(FakeSource(rx), rescans));

    // A second ServiceEntry: both are captured, in a new generation.
    let two = config(&[("a", "198.18.0.1", 80), ("b", "198.18.0.2", 8080)]);
    tx.send(Snapshot {
        config: two.clone(),
        reason: "test".into(),
    })
    .await
    .expect("the reconciler listens");
    eventually("the second ServiceEntry is published", || {
        services.load().len() == 2
    })
    .await;
    assert_eq!(
        kernel.last_routes(),
        [
            ("198.18.0.1".to_owned(), 80),
            ("198.18.0.2".to_owned(), 8080)
        ]
    );
    let second_generation = services.load().generation;
    assert!(second_generation > first_generation);
    assert_eq!(
        kernel.generations.lock().unwrap().last(),
        Some(&second_generation),
        "the kernel's generation moves with the table"
    );

    // The same configuration again changes nothing: no new generation, no kernel sync.
    let syncs = kernel.syncs();
    tx.send(Snapshot {
        config: two,
        reason: "test".into(),
    })
    .await
    .expect("the reconciler listens");
    // Then a removal, which is published: the unchanged snapshot before it was handled first.
    tx.send(Snapshot {
        config: config(&[("b", "198.18.0.2", 8080)]),
        reason: "test".into(),
    })
    .await
    .expect("the reconciler listens");
    eventually("the removal is published", || services.load().len() == 1).await;
    assert_eq!(
        kernel.syncs(),
        syncs + 1,
        "the unchanged snapshot synced nothing"
    );
    assert_eq!(kernel.last_routes(), [("198.18.0.2".to_owned(), 8080)]);

    // The source ends: the last configuration keeps serving.
    drop(tx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "the reconciler outlives its source");
    assert_eq!(services.load().len(), 1);
    task.abort();
}

#[tokio::test]
async fn a_mesh_config_in_a_snapshot_switches_registry_only() {
    let kernel = Arc::new(FakeKernel::default());
    let reconciler = reconciler(config(&[]), kernel.clone()).await;
    let (tx, rx) = mpsc::channel(4);
    let (_rescans_tx, rescans) = mpsc::channel(1);
    let task = tokio::spawn(reconciler.run(FakeSource(rx), rescans));
    let mesh = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"},
    });
    let source = Source::object("ConfigMap", "istio-system", "istio");
    let set = crate::config::parse_object(&mesh, &source).expect("a valid mesh config");
    tx.send(Snapshot {
        config: set,
        reason: "test".into(),
    })
    .await
    .expect("the reconciler listens");
    eventually("REGISTRY_ONLY is applied", || {
        kernel.registry_only.lock().unwrap().as_slice() == [false, true]
    })
    .await;
    task.abort();
}
