//! The Kubernetes configuration source: kube-runtime watchers for ServiceEntry,
//! DestinationRule, AuthorizationPolicy (`v1` and `v1beta1`), Namespaces (their labels bind
//! ServiceEntries), the `istio` ConfigMap of the root namespace (mesh config) and the Secrets
//! DestinationRules name in `credentialName`.
//!
//! Every watcher feeds one task that keeps the last state of each object. Changes are debounced
//! ([`DEBOUNCE`]) into one snapshot: each object is validated by the parser files use, with its
//! origin `Kind ns/name`; an invalid one is logged (`Kind ns/name: field: message`), counted in
//! `egress_config_rejected_objects_total{kind}` and left out, and the others serve. A watch that
//! breaks is retried with the watcher's backoff, and the last state keeps serving meanwhile.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

use super::{KubeError, crd};
use crate::{
    config::{self, ClientTlsSettings, ConfigSet, Source},
    reload::{ConfigSource, Snapshot},
    telemetry::metrics::{Labels, Metrics},
    tls::{SecretPem, TlsClient},
};

/// Changes that arrive within this long of each other become one snapshot.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long start-up waits for the first complete list of everything watched.
const INITIAL_SYNC: Duration = Duration::from_secs(60);
/// How long a snapshot waits for a newly watched Secret's first answer (so a new
/// DestinationRule does not flap through "Secret not read yet").
const SECRET_GRACE: Duration = Duration::from_secs(2);
/// Istio's binding label: on a ServiceEntry or its namespace, any value but `none` binds it to
/// a waypoint (this agent).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The metric counting objects rejected by validation, labelled by kind.
pub const REJECTED_OBJECTS: &str = crate::telemetry::metrics::CONFIG_REJECTED_OBJECTS_TOTAL;

/// Which ServiceEntries are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Those bound by `istio.io/use-waypoint` (on the ServiceEntry, or on its namespace unless
    /// the ServiceEntry says `none`), as Istio does.
    Bound,
    /// Every ServiceEntry.
    All,
}

/// `egress run --kubernetes` settings.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// `--kubeconfig`; `None`: `KUBECONFIG`, `~/.kube/config`, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// This node (`--node-name`, `$NODE_NAME`).
    pub node_name: String,
    pub service_entries: Binding,
    /// Where the `istio` ConfigMap (mesh config) lives.
    pub root_namespace: String,
}

/// Snapshots from the API server, for the reconciler.
pub struct KubeSource {
    snapshots: watch::Receiver<Option<Snapshot>>,
    /// The watching task; it ends with this source.
    task: JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    /// Connects, starts the watchers, and waits for the first complete configuration.
    pub async fn start(options: &KubeOptions) -> Result<(Self, ConfigSet), KubeError> {
        let client = super::client(options.kubeconfig.as_deref()).await?;
        let (updates_tx, updates) = mpsc::channel(256);
        let (snapshots_tx, mut snapshots) = watch::channel(None);
        let state = State::new(client.clone(), options.clone(), updates_tx.clone());
        state.start_watchers();
        let task = tokio::spawn(state.run(updates, snapshots_tx));
        let mut source = Self {
            snapshots: snapshots.clone(),
            task,
        };
        let first = tokio::time::timeout(INITIAL_SYNC, async {
            loop {
                if snapshots.changed().await.is_err() {
                    return None;
                }
                if let Some(snapshot) = snapshots.borrow_and_update().clone() {
                    return Some(snapshot);
                }
            }
        })
        .await;
        match first {
            Ok(Some(snapshot)) => {
                source.snapshots.mark_unchanged();
                info!(
                    node = %options.node_name,
                    service_entries = snapshot.config.service_entries.len(),
                    authorization_policies = snapshot.config.authorization_policies.len(),
                    destination_rules = snapshot.config.destination_rules.len(),
                    "configuration read from the Kubernetes API"
                );
                Ok((source, snapshot.config))
            }
            _ => Err(KubeError::NotSynced(
                "ServiceEntries, DestinationRules, AuthorizationPolicies, Namespaces and the \
                 istio ConfigMap"
                    .to_owned(),
                INITIAL_SYNC,
            )),
        }
    }
}

impl ConfigSource for KubeSource {
    async fn next(&mut self) -> Option<Snapshot> {
        loop {
            self.snapshots.changed().await.ok()?;
            if let Some(snapshot) = self.snapshots.borrow_and_update().clone() {
                return Some(snapshot);
            }
        }
    }
}

/// The Istio kinds watched, each with its API resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    ServiceEntry,
    DestinationRule,
    AuthorizationPolicy,
    /// `security.istio.io/v1beta1`: older Istio releases serve only this one. An object seen in
    /// both versions is taken once, from `v1`.
    AuthorizationPolicyV1beta1,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ServiceEntry,
        Kind::DestinationRule,
        Kind::AuthorizationPolicy,
        Kind::AuthorizationPolicyV1beta1,
    ];

    fn resource(self) -> ApiResource {
        match self {
            Kind::ServiceEntry => ApiResource::erase::<crd::service_entry_v1::ServiceEntry>(&()),
            Kind::DestinationRule => {
                ApiResource::erase::<crd::destination_rule_v1::DestinationRule>(&())
            }
            Kind::AuthorizationPolicy => {
                ApiResource::erase::<crd::authorization_policy_v1::AuthorizationPolicy>(&())
            }
            Kind::AuthorizationPolicyV1beta1 => {
                ApiResource::erase::<crd::authorization_policy_v1beta1::AuthorizationPolicy>(&())
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::DestinationRule => "DestinationRule",
            Kind::AuthorizationPolicy | Kind::AuthorizationPolicyV1beta1 => "AuthorizationPolicy",
        }
    }

    /// Whether start-up waits for this kind's first list (a cluster may not serve v1beta1).
    fn required(self) -> bool {
        self != Kind::AuthorizationPolicyV1beta1
    }
}

/// One watcher's news.
enum Update {
    Object(Kind, watcher::Event<DynamicObject>),
    Namespace(watcher::Event<Namespace>),
    Mesh(watcher::Event<ConfigMap>),
    Secret(Key, watcher::Event<Secret>),
    /// Nothing new: look again whether the configuration is complete.
    Recheck,
}

/// Namespace and name.
type Key = (String, String);

fn key_of<K: Resource>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// The last state of one watched collection, as a reflector keeps it.
struct Store<K> {
    ready: bool,
    items: BTreeMap<Key, K>,
    /// Objects of a (re-)list in progress; they replace `items` when it is done.
    relist: Option<BTreeMap<Key, K>>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            ready: false,
            items: BTreeMap::new(),
            relist: None,
        }
    }
}

impl<K: Resource> Store<K> {
    fn apply(&mut self, event: watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(object) => {
                let key = key_of(&object);
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, object);
            }
            watcher::Event::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                self.ready = true;
            }
            watcher::Event::Apply(object) => {
                self.items.insert(key_of(&object), object);
            }
            watcher::Event::Delete(object) => {
                self.items.remove(&key_of(&object));
            }
        }
    }
}

/// A watched Secret: its last state, once its watch has listed.
struct WatchedSecret {
    task: JoinHandle<()>,
    started: Instant,
    store: Store<Secret>,
}

impl Drop for WatchedSecret {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A validation result, kept while the object's resourceVersion is unchanged.
struct Parsed {
    version: String,
    result: Result<ConfigSet, config::ConfigErrors>,
}

struct State {
    client: Client,
    options: KubeOptions,
    updates: mpsc::Sender<Update>,
    objects: BTreeMap<Kind, Store<DynamicObject>>,
    namespaces: Store<Namespace>,
    mesh: Store<ConfigMap>,
    secrets: HashMap<Key, WatchedSecret>,
    parsed: HashMap<(Kind, Key), Parsed>,
    /// Why a DestinationRule's TLS is unavailable, as last logged.
    unavailable: BTreeMap<String, String>,
}

impl State {
    fn new(client: Client, options: KubeOptions, updates: mpsc::Sender<Update>) -> Self {
        Self {
            client,
            options,
            updates,
            objects: Kind::ALL
                .into_iter()
                .map(|k| (k, Store::default()))
                .collect(),
            namespaces: Store::default(),
            mesh: Store::default(),
            secrets: HashMap::new(),
            parsed: HashMap::new(),
            unavailable: BTreeMap::new(),
        }
    }

    fn start_watchers(&self) {
        for kind in Kind::ALL {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.resource());
            spawn_watch(
                api,
                watcher::Config::default(),
                self.updates.clone(),
                move |event| Update::Object(kind, event),
                kind.resource().api_version,
                kind.resource().plural,
            );
        }
        spawn_watch(
            Api::<Namespace>::all(self.client.clone()),
            watcher::Config::default(),
            self.updates.clone(),
            Update::Namespace,
            "v1".into(),
            "namespaces".into(),
        );
        spawn_watch(
            Api::<ConfigMap>::namespaced(self.client.clone(), &self.options.root_namespace),
            watcher::Config::default().fields("metadata.name=istio"),
            self.updates.clone(),
            Update::Mesh,
            "v1".into(),
            "configmaps (istio)".into(),
        );
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Object(kind, event) => {
                if let Some(store) = self.objects.get_mut(&kind) {
                    store.apply(event);
                }
            }
            Update::Namespace(event) => self.namespaces.apply(event),
            Update::Mesh(event) => self.mesh.apply(event),
            Update::Secret(key, event) => {
                if let Some(watched) = self.secrets.get_mut(&key) {
                    watched.store.apply(event);
                }
            }
            Update::Recheck => {}
        }
    }

    /// Whether everything start-up needs has listed once, and no new Secret is still within
    /// its grace period.
    fn ready(&self) -> bool {
        let objects = self
            .objects
            .iter()
            .all(|(kind, store)| store.ready || !kind.required());
        let secrets = self
            .secrets
            .values()
            .all(|s| s.store.ready || s.started.elapsed() >= SECRET_GRACE);
        objects && self.namespaces.ready && self.mesh.ready && secrets
    }

    async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        snapshots: watch::Sender<Option<Snapshot>>,
    ) {
        let mut published: Option<ConfigSet> = None;
        loop {
            let Some(update) = updates.recv().await else {
                return;
            };
            self.apply(update);
            // Debounce: whatever else arrives within DEBOUNCE joins this snapshot.
            let deadline = Instant::now() + DEBOUNCE;
            while let Ok(Some(update)) = tokio::time::timeout_at(deadline, updates.recv()).await {
                self.apply(update);
            }
            let config = self.build();
            if !self.ready() {
                // Not complete yet: check again shortly even if nothing else arrives.
                let tx = self.updates.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(DEBOUNCE * 2).await;
                    let _ = tx.send(Update::Recheck).await;
                });
                continue;
            }
            if published.as_ref() == Some(&config) {
                continue;
            }
            published = Some(config.clone());
            snapshots.send_replace(Some(Snapshot {
                config,
                reason: "Kubernetes objects changed".to_owned(),
            }));
        }
    }

    /// The configuration the current objects make, and the Secret watchers it needs.
    fn build(&mut self) -> ConfigSet {
        let mut set = ConfigSet::default();
        let mut seen: BTreeSet<(Kind, Key)> = BTreeSet::new();

        for (key, map) in &self.mesh.items {
            let source = Source::object("ConfigMap", &key.0, &key.1);
            let value = json_of(map, "v1", "ConfigMap");
            if let Ok(mesh) = config::parse_object(&value, &source).map_err(|errors| {
                for error in &errors.0 {
                    warn!("{error}");
                }
            }) {
                set.merge(mesh);
            }
        }

        let v1_policies: BTreeSet<Key> = self.objects[&Kind::AuthorizationPolicy]
            .items
            .keys()
            .cloned()
            .collect();
        let mut results = Vec::new();
        for kind in Kind::ALL {
            for (key, object) in &self.objects[&kind].items {
                if kind == Kind::AuthorizationPolicyV1beta1 && v1_policies.contains(key) {
                    continue;
                }
                if kind == Kind::ServiceEntry && !self.bound(object) {
                    continue;
                }
                results.push((kind, key.clone(), object.clone()));
            }
        }
        for (kind, key, object) in results {
            seen.insert((kind, key.clone()));
            if let Ok(parsed) = self.parse(kind, &key, &object) {
                set.merge(parsed);
            }
        }
        self.parsed.retain(|k, _| seen.contains(k));
        self.resolve_credentials(&mut set);
        set
    }

    /// Validates one object, from the cache when its resourceVersion is unchanged. A rejected
    /// object is logged and counted once per version.
    fn parse(
        &mut self,
        kind: Kind,
        key: &Key,
        object: &DynamicObject,
    ) -> Result<ConfigSet, config::ConfigErrors> {
        let version = object.resource_version().unwrap_or_default();
        let cache_key = (kind, key.clone());
        if let Some(parsed) = self.parsed.get(&cache_key)
            && parsed.version == version
        {
            return parsed.result.clone();
        }
        let resource = kind.resource();
        let source = Source::object(kind.name(), &key.0, &key.1);
        let value = json_of(object, &resource.api_version, &resource.kind);
        let result = config::parse_object(&value, &source);
        if let Err(errors) = &result {
            warn!(
                errors = errors.0.len(),
                "{source} rejected; it is left out and the other objects keep serving"
            );
            for error in &errors.0 {
                warn!("{error}");
            }
            Metrics::global().add(REJECTED_OBJECTS, &Labels::new(&[("kind", kind.name())]), 1);
        }
        self.parsed.insert(
            cache_key,
            Parsed {
                version,
                result: result.clone(),
            },
        );
        result
    }

    /// Whether this agent captures `entry` (see [`bound`]).
    fn bound(&self, entry: &DynamicObject) -> bool {
        let namespace = entry.namespace().unwrap_or_default();
        let namespace_labels = self
            .namespaces
            .items
            .get(&(String::new(), namespace))
            .map(|ns| ns.labels());
        bound(
            self.options.service_entries,
            entry.labels(),
            namespace_labels,
        )
    }

    /// Builds the TLS of every `credentialName` from its Secret (in the rule's namespace), and
    /// watches exactly the Secrets named. A Secret missing or invalid leaves the settings
    /// without a client and with the reason: that service's requests are refused (503).
    fn resolve_credentials(&mut self, set: &mut ConfigSet) {
        let mut wanted: BTreeSet<Key> = BTreeSet::new();
        let mut unavailable = BTreeMap::new();
        for rule in &mut set.destination_rules {
            let namespace = rule.namespace.clone();
            let rule_name = format!("DestinationRule {}/{}", rule.namespace, rule.name);
            let settings = rule
                .tls
                .iter_mut()
                .chain(rule.port_tls.iter_mut().map(|(_, tls)| tls));
            for tls in settings {
                let Some(name) = tls.credential_name.clone() else {
                    continue;
                };
                let key = (namespace.clone(), name);
                wanted.insert(key.clone());
                if let Err(reason) = self.credential(tls, &key) {
                    let reason = format!("{rule_name}: {reason}");
                    tls.unavailable = Some(reason.clone());
                    unavailable.insert(rule_name.clone(), reason);
                }
            }
        }
        for (rule, reason) in &unavailable {
            if self.unavailable.get(rule) != Some(reason) {
                warn!(%reason, "DestinationRule TLS unavailable: its requests are refused (503)");
            }
        }
        for rule in self.unavailable.keys() {
            if !unavailable.contains_key(rule) {
                info!(rule = %rule, "DestinationRule TLS credentials available again");
            }
        }
        self.unavailable = unavailable;
        self.secrets.retain(|key, _| wanted.contains(key));
        for key in wanted {
            if !self.secrets.contains_key(&key) {
                let watched = self.watch_secret(&key);
                self.secrets.insert(key, watched);
            }
        }
    }

    fn credential(&self, tls: &mut ClientTlsSettings, key: &Key) -> Result<(), String> {
        let label = format!("{}/{}", key.0, key.1);
        let secret = match self.secrets.get(key) {
            None => return Err(format!("Secret {label} is not read yet")),
            Some(watched) if !watched.store.ready => {
                return Err(format!("Secret {label} is not read yet"));
            }
            Some(watched) => watched.store.items.get(&(key.0.clone(), key.1.clone())),
        };
        let Some(secret) = secret else {
            return Err(format!("Secret {label} not found"));
        };
        let data = secret.data.clone().unwrap_or_default();
        let get = |k: &str| data.get(k).map(|bytes| bytes.0.clone());
        let pem = SecretPem {
            name: label,
            cert: get("tls.crt"),
            key: get("tls.key"),
            ca: get("ca.crt"),
            crl: get("ca.crl"),
        };
        match TlsClient::build_from_secret(tls, &pem) {
            Ok(client) => {
                tls.client = Some(client);
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        }
    }

    fn watch_secret(&self, key: &Key) -> WatchedSecret {
        let api = Api::<Secret>::namespaced(self.client.clone(), &key.0);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
        let task_key = key.clone();
        let task = spawn_watch(
            api,
            config,
            self.updates.clone(),
            move |event| Update::Secret(task_key.clone(), event),
            "v1".into(),
            format!("secrets ({}/{})", key.0, key.1),
        );
        WatchedSecret {
            task,
            started: Instant::now(),
            store: Store::default(),
        }
    }
}

/// Istio's binding: `istio.io/use-waypoint` on the ServiceEntry (`none` opts it out), else on
/// its namespace (any value but `none`); [`Binding::All`] captures every ServiceEntry.
fn bound(
    binding: Binding,
    entry: &BTreeMap<String, String>,
    namespace: Option<&BTreeMap<String, String>>,
) -> bool {
    if binding == Binding::All {
        return true;
    }
    if let Some(value) = entry.get(USE_WAYPOINT_LABEL) {
        return value != "none";
    }
    namespace
        .and_then(|labels| labels.get(USE_WAYPOINT_LABEL))
        .is_some_and(|value| value != "none")
}

/// Runs a watcher until the receiver goes, retrying a broken watch with the watcher's backoff.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    updates: mpsc::Sender<Update>,
    wrap: impl Fn(watcher::Event<K>) -> Update + Send + 'static,
    api_version: String,
    what: String,
) -> JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        info!(resource = %what, api_version, "watch resumed");
                        failing = false;
                    }
                    if updates.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    if !failing {
                        warn!(resource = %what, api_version, %error, "watch failed; retrying with backoff, the last state keeps serving");
                    }
                    failing = true;
                }
            }
        }
    })
}

/// An object as the parser reads it: JSON with `apiVersion` and `kind` (list items may lack
/// them).
fn json_of<K: Serialize>(object: &K, api_version: &str, kind: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
        // Server-side bookkeeping the parser has no use for.
        if let Some(metadata) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("managedFields");
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> BTreeMap<String, String> {
        value
            .map(|v| (USE_WAYPOINT_LABEL.to_owned(), v.to_owned()))
            .into_iter()
            .collect()
    }

    #[test]
    fn service_entries_bind_as_istio_binds_them() {
        // (label on the ServiceEntry, label on its namespace, bound?)
        let cases = [
            (None, None, false),
            (None, Some("waypoint"), true),
            (None, Some("none"), false),
            (Some("waypoint"), None, true),
            (Some("egress"), Some("none"), true),
            (Some("none"), Some("waypoint"), false),
            (Some("none"), None, false),
        ];
        for (entry, namespace, want) in cases {
            let ns = labels(namespace);
            assert_eq!(
                bound(Binding::Bound, &labels(entry), Some(&ns)),
                want,
                "entry {entry:?}, namespace {namespace:?}"
            );
            assert!(bound(Binding::All, &labels(entry), Some(&ns)));
        }
        assert!(
            !bound(Binding::Bound, &labels(None), None),
            "unknown namespace"
        );
    }

    #[test]
    fn objects_reach_the_parser_with_their_kind_and_without_managed_fields() {
        let mut object = DynamicObject::new("httpbin", &Kind::ServiceEntry.resource());
        object.metadata.namespace = Some("istio-egress".into());
        object.metadata.managed_fields = Some(Vec::new());
        object.types = None;
        let value = json_of(&object, "networking.istio.io/v1", "ServiceEntry");
        assert_eq!(value["apiVersion"], "networking.istio.io/v1");
        assert_eq!(value["kind"], "ServiceEntry");
        assert!(value["metadata"].get("managedFields").is_none(), "{value}");
        assert_eq!(value["metadata"]["namespace"], "istio-egress");
    }
}
