//! Authorization at the waypoint: the engine's attributes from what the kernel attested and
//! the client sent, and what to say about the verdict. The verdict itself is
//! [`PolicySet::evaluate`]'s; this file only feeds it and reports it.
//!
//! Both callers evaluate against the policies of the same [`ServiceTable`] generation they took
//! the service from, so a reload is seen whole: never new services with old policies.
//!
//! [`ServiceTable`]: crate::model::ServiceTable
use std::borrow::Cow;

use http::StatusCode;
use tracing::{debug, info};

use super::{
    Inbound,
    phases::{self, Caller, HttpRequest},
    reply::LocalReply,
};
use crate::{
    model::Service,
    policy::{Decision, PolicySet},
};

/// Envoy's answer to an HTTP request its RBAC filter denies (`rbac_filter.cc`: 403, this body,
/// details `rbac_access_denied_matched_policy[...]`, no response flag). The connection stays
/// open for the next request, as in Envoy.
pub(super) fn denied(decision: &Decision) -> LocalReply {
    LocalReply {
        status: StatusCode::FORBIDDEN,
        body: Cow::Borrowed("RBAC: access denied"),
        flag: None,
        details: decision
            .denied_details()
            .unwrap_or_else(|| "rbac_access_denied".to_owned())
            .into(),
        close: false,
    }
}

/// Who is asking: the client's socket as accepted, the address it dialled (the kernel's origin
/// record), and its kernel-attested principal.
fn caller(inbound: &Inbound) -> Caller<'_> {
    Caller {
        principal: inbound.principal.as_ref(),
        source_ip: Some(inbound.peer.ip()),
        destination_ip: Some(inbound.original_dst.ip()),
    }
}

/// The verdict for one HTTP request to `service` (the authorize phase, see [`phases`]).
pub(super) fn authorize_request(
    policies: &PolicySet,
    generation: u64,
    inbound: &Inbound,
    service: &Service,
    request: &HttpRequest<'_>,
) -> Decision {
    let decision = phases::authorize(policies, service, &caller(inbound), Some(request), None);
    report(&decision, generation);
    learn(inbound, service, &decision, generation);
    decision
}

/// The verdict for a TLS or TCP connection to `service`, before anything is sent upstream.
/// Rules are applied as Envoy applies them to a TCP filter chain (see `policy/compile.rs`);
/// `sni` is the ClientHello's server name, read on TLS ports only.
pub(super) fn authorize_connection(
    policies: &PolicySet,
    generation: u64,
    inbound: &Inbound,
    service: &Service,
    sni: Option<&str>,
) -> Decision {
    let decision = phases::authorize(policies, service, &caller(inbound), None, sni);
    report(&decision, generation);
    learn(inbound, service, &decision, generation);
    decision
}

/// An L4-decidable deny is handed to the kernel verdict cache: the next connect of this
/// identity to this service is refused before it reaches us.
fn learn(inbound: &Inbound, service: &Service, decision: &Decision, generation: u64) {
    if decision.allowed || !decision.l4_decidable {
        return;
    }
    if let Some(learner) = &inbound.learner {
        learner
            .sink
            .deny(learner.identity_id, service.id, service.port, generation);
    }
}

/// The verdict at debug (the access log carries denies), AUDIT matches and dry-run policies
/// that would have denied at info. Neither of the latter ever changes the verdict.
fn report(decision: &Decision, generation: u64) {
    // Fields are evaluated only when the event is enabled: no String per request at `warn`.
    debug!(
        allowed = decision.allowed,
        policy = %decision.matched_policy(),
        l4_decidable = decision.l4_decidable,
        generation,
        "authorization decided"
    );
    if let Some(rule) = &decision.audit {
        info!(%rule, allowed = decision.allowed, "audit");
    }
    if let Some(shadow_allowed) = decision.dry_run_allowed {
        let matched: Vec<String> = decision
            .dry_run_matches
            .iter()
            .map(|m| format!("{}:{}", m.action, m.matched))
            .collect();
        let matched = matched.join(",");
        if shadow_allowed {
            debug!(%matched, allowed = decision.allowed, "shadow allow");
        } else {
            info!(%matched, allowed = decision.allowed, "shadow deny");
        }
    }
}
