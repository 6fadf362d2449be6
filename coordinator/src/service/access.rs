//! Who may do what. Every operator call first asks [`Coordinator::allow`]. Roles come from the caller's certificate
//! and the coordinator's config; the config also holds a deny-list and the agents' extra allow-lists. That part of
//! the config can change while the coordinator runs ([`Coordinator::set_access`]). Every refusal is audited.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use super::*;
use crate::identity::{Permission, Role};

/// The part of the config that says who may do what, replaceable at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Operator name → roles, on top of those its certificate gives.
    pub operator_roles: BTreeMap<String, Vec<Role>>,
    /// Agent name → target globs it may serve, on top of what its certificate allows.
    pub agent_targets: BTreeMap<String, Vec<String>>,
    /// Refused whatever their certificate says: `agent:NAME` or `operator:NAME` (as the audit log names them).
    pub deny: BTreeSet<String>,
    /// An operator may not approve the waves of a plan it submitted.
    pub approver_must_differ: bool,
}

impl Coordinator {
    /// Replaces who may do what; calls already admitted finish as they started. The assignment stream of an agent
    /// now on the deny-list is closed at once: it gets no more work, and its reconnection is refused.
    pub fn set_access(&self, access: Access) {
        let mut current = self.access.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == access {
            return;
        }
        info!(deny = access.deny.len(), operators = access.operator_roles.len(), "access rules replaced");
        *current = access;
        let deny = current.deny.clone();
        drop(current);
        for (name, entry) in self.inner().agents.iter_mut() {
            if deny.contains(&format!("agent:{name}")) && entry.sender.take().is_some() {
                warn!(agent = %name, "agent is on the deny-list now: its stream is closed");
            }
        }
    }

    pub(super) fn access(&self) -> Access {
        self.access.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether the deny-list names this caller.
    pub(super) fn denied(&self, who: &Identity) -> bool {
        self.access.read().unwrap_or_else(std::sync::PoisonError::into_inner).deny.contains(&who.actor())
    }

    /// An operator's roles: its certificate's and the config's; none at all makes it a viewer.
    pub(super) fn roles(&self, name: &str, from_certificate: &[Role]) -> Vec<Role> {
        let mut roles = from_certificate.to_vec();
        roles.extend(self.access().operator_roles.get(name).cloned().unwrap_or_default());
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            roles.push(Role::Viewer);
        }
        roles
    }

    /// Lets the call through, or audits the refusal and refuses: agents on operator calls, callers on the deny-list,
    /// operators whose roles do not give `permission`. `what` says what the call would do ("create a plan").
    pub(super) async fn allow(
        &self,
        who: &Identity,
        permission: Permission,
        what: &str,
        plan: Option<&str>,
    ) -> Result<()> {
        let refusal = match who {
            Identity::Insecure => return Ok(()),
            _ if self.denied(who) => format!("{} is on the coordinator's deny-list and may not {what}", who.actor()),
            Identity::Agent { name, .. } => {
                format!("agent `{name}` may not {what}: operator calls need an operator certificate")
            }
            Identity::Operator { name, roles } => {
                let roles = self.roles(name, roles);
                if roles.iter().any(|r| r.allows(permission)) {
                    return Ok(());
                }
                let held: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                format!(
                    "operator `{name}` ({}) may not {what}: that needs the {} role",
                    held.join(", "),
                    Role::needed_for(permission)
                )
            }
        };
        self.refuse(who, plan, refusal).await
    }

    /// Audits a refusal and returns it as the error.
    pub(super) async fn refuse<T>(&self, who: &Identity, plan: Option<&str>, refusal: String) -> Result<T> {
        warn!(caller = %who.actor(), refusal, "refused");
        self.audit(who, "refused", plan, refusal.clone()).await?;
        Err(ServiceError::NotAllowed(refusal))
    }

    /// With `approver_must_differ`, the plan's submitter may not approve its waves.
    pub(super) async fn check_approver(&self, who: &Identity, plan_id: &str) -> Result<()> {
        if !self.access().approver_must_differ || matches!(who, Identity::Insecure) {
            return Ok(());
        }
        let query = crate::store::AuditQuery { plan_id: Some(plan_id.to_string()), limit: 1, ..Default::default() };
        let submitter = self.store.audit_log(&query).await?.into_iter().find(|r| r.entry.action == "submit");
        if submitter.is_some_and(|r| r.entry.actor == who.actor()) {
            let refusal = format!(
                "{} submitted plan {plan_id} and may not approve its waves: another approver must (approver_must_differ)",
                who.actor()
            );
            return self.refuse(who, Some(plan_id), refusal).await;
        }
        Ok(())
    }
}

/// The most audit entries one read returns.
pub const AUDIT_PAGE_MAX: u32 = 1000;

impl Coordinator {
    /// A page of the audit log (admins may read it), and the id to continue after when more may follow.
    pub async fn audit_log(
        &self,
        who: &Identity,
        mut query: crate::store::AuditQuery,
    ) -> Result<(Vec<crate::store::AuditRecord>, Option<String>)> {
        self.allow(who, Permission::Administer, "read the audit log", query.plan_id.as_deref()).await?;
        query.limit = match query.limit {
            0 => 100,
            n => n.min(AUDIT_PAGE_MAX),
        };
        let page = self.store.audit_log(&query).await?;
        let next = (page.len() == query.limit as usize).then(|| page.last().map(|r| r.id.clone())).flatten();
        Ok((page, next))
    }
}
