//! Which pods this agent serves, by Istio's ambient labels (design §10): pod
//! `istio.io/dataplane-mode=<mode>`, or namespace `=<mode>` and the pod not labelled otherwise;
//! `none` on the pod opts it out; hostNetwork pods never (they have no network namespace of
//! their own, and their connects are the node's). `<mode>` is a setting (`--dataplane-mode`,
//! default `ambient`), so the agent can run beside Istio's ztunnel on a value of its own.
use std::collections::BTreeMap;

/// The label Istio enrolls pods and namespaces with.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The enrollment value the agent serves unless told otherwise.
pub const DEFAULT_DATAPLANE_MODE: &str = "ambient";
/// The pod label value that opts a pod out of its namespace's enrollment.
pub const OPT_OUT: &str = "none";

/// Why a pod is or is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// The pod carries the label with this agent's value.
    Pod,
    /// Its namespace does, and the pod does not say otherwise.
    Namespace,
    /// Not enrolled: no label with this agent's value on it or its namespace.
    NotLabelled,
    /// The pod's label says `none`, or another dataplane's value.
    OptedOut,
    /// A hostNetwork pod shares the node's network namespace: never enrolled.
    HostNetwork,
    /// The pod has finished (phase Succeeded or Failed): nothing left to serve.
    Finished,
}

impl Enrollment {
    pub fn enrolled(self) -> bool {
        matches!(self, Enrollment::Pod | Enrollment::Namespace)
    }
}

/// What enrollment looks at on a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts<'a> {
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub host_network: bool,
    /// `status.phase`, when known.
    pub phase: Option<&'a str>,
}

/// Decides whether the agent serving `mode` enrolls a pod.
pub fn enrollment(pod: &PodFacts<'_>, mode: &str) -> Enrollment {
    if pod.host_network {
        return Enrollment::HostNetwork;
    }
    if matches!(pod.phase, Some("Succeeded" | "Failed")) {
        return Enrollment::Finished;
    }
    let label = |labels: Option<&BTreeMap<String, String>>| {
        labels.and_then(|l| l.get(DATAPLANE_MODE_LABEL)).cloned()
    };
    match label(pod.labels) {
        Some(value) if value == mode => Enrollment::Pod,
        Some(_) => Enrollment::OptedOut,
        None if label(pod.namespace_labels).as_deref() == Some(mode) => Enrollment::Namespace,
        None => Enrollment::NotLabelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> Option<BTreeMap<String, String>> {
        value.map(|v| BTreeMap::from([(DATAPLANE_MODE_LABEL.to_owned(), v.to_owned())]))
    }

    #[test]
    fn istio_labels_decide_as_in_ambient() {
        use Enrollment::*;
        // (pod label, namespace label, hostNetwork, phase, expected)
        let table: &[(Option<&str>, Option<&str>, bool, Option<&str>, Enrollment)] = &[
            (None, Some("ambient"), false, Some("Running"), Namespace),
            (Some("ambient"), None, false, None, Pod),
            (Some("ambient"), Some("ambient"), false, None, Pod),
            (Some("none"), Some("ambient"), false, None, OptedOut),
            (Some("egress"), Some("ambient"), false, None, OptedOut),
            (None, None, false, None, NotLabelled),
            (None, Some("none"), false, None, NotLabelled),
            (None, Some("egress"), false, None, NotLabelled),
            (Some("ambient"), Some("ambient"), true, None, HostNetwork),
            (None, Some("ambient"), false, Some("Succeeded"), Finished),
            (None, Some("ambient"), false, Some("Failed"), Finished),
            (None, Some("ambient"), false, Some("Pending"), Namespace),
        ];
        for (pod, ns, host_network, phase, want) in table {
            let (pod_labels, ns_labels) = (labels(*pod), labels(*ns));
            let facts = PodFacts {
                labels: pod_labels.as_ref(),
                namespace_labels: ns_labels.as_ref(),
                host_network: *host_network,
                phase: *phase,
            };
            let got = enrollment(&facts, DEFAULT_DATAPLANE_MODE);
            assert_eq!(
                got, *want,
                "pod {pod:?} ns {ns:?} hostNetwork {host_network}"
            );
            assert_eq!(got.enrolled(), matches!(want, Pod | Namespace));
        }
    }

    #[test]
    fn the_value_is_a_setting() {
        let (pod, ns) = (labels(Some("egress")), labels(Some("ambient")));
        let facts = PodFacts {
            labels: pod.as_ref(),
            namespace_labels: ns.as_ref(),
            ..PodFacts::default()
        };
        assert_eq!(enrollment(&facts, "egress"), Enrollment::Pod);
        assert_eq!(enrollment(&facts, "ambient"), Enrollment::OptedOut);
        let facts = PodFacts {
            namespace_labels: ns.as_ref(),
            ..PodFacts::default()
        };
        assert_eq!(enrollment(&facts, "egress"), Enrollment::NotLabelled);
    }
}
