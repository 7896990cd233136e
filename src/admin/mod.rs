//! The Python service's admin API (`/api/admin/...`) on top of the index and the Kubernetes
//! client. Reads come from the proxy's [`Snapshot`]; writes go to Kubernetes objects (the admin
//! API's own ChatflowAccess per chatflow, see [`access`]; Chatflow deletion, see [`chatflows`])
//! and take effect through the index's normal watch.
//!
//! Authorization: the global admin claim, or `role: Admin` on the chatflow concerned. Listing and
//! stats show a per-chatflow admin only the chatflows they administer; `sync`, the credits
//! usage log (`GET /api/admin/credits/usage`, flowgate's own) and credit adjustments
//! (`POST /api/admin/credits/adjustments`, [`credits`]) need the global admin claim; a policy's
//! balances (`GET /api/admin/credits/balances`) also the admins of every chatflow it applies to.
//!
//! Choices, stated once:
//! - A `user_id` is a subject `user:` value, matched against the caller's user claims (`sub`,
//!   `email`, … as configured); an email is the same kind of subject.
//! - Removing a user the admin API does not grant: 409 naming the ChatflowAccess objects that
//!   still grant them when GitOps does, otherwise 404 (no such link). Removing twice is
//!   therefore 404 the second time: the API keeps no record of former links.
//! - Adding a user who already has access through the admin API is a success ("already has
//!   access"); adding one who is granted by GitOps adds the admin-api grant as well.

pub mod access;
pub mod chatflows;
pub mod credits;
pub mod models;
pub mod openapi;
pub mod routes;
pub mod shapes;
pub mod users;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::controller::SyncState;
use crate::crd::Role;
use crate::identity::Identity;
use crate::index::{Caller, ChatflowEntry, Snapshot};
use crate::ledger::CreditLedger;
use crate::proxy::buffers::{Buffers, Held};
use crate::proxy::{ProxyError, error, usage_log};
use crate::server::Body;
use models::{ChatflowSyncResult, string_field, string_list};
pub use routes::AdminRoute;

/// What the admin API needs beyond the proxy's snapshot.
pub struct Admin {
    /// The proxy's own Kubernetes client (its identity writes the objects).
    pub client: kube::Client,
    /// Runs a Flowise sync pass on demand.
    pub sync: SyncState,
    /// The credits ledger, for its usage log and adjustments.
    pub ledger: Arc<dyn CreditLedger>,
    /// Where adjustments are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// One admin request after authentication.
pub struct Call<'a> {
    pub identity: &'a Identity,
    pub caller: &'a Caller<'a>,
    pub snapshot: &'a Snapshot,
    pub now: jiff::Timestamp,
    /// The process's body memory, which request bodies count in.
    pub buffers: &'a Buffers,
}

/// The largest admin request body: 1,000 subjects of 512 bytes, with room to spare.
pub const MAX_BODY: usize = 1024 * 1024;

impl Call<'_> {
    /// The request's JSON object body, at most [`MAX_BODY`] bytes, counted as the caller's in
    /// the body memory while the hold lives. Read only once the caller is known to be allowed
    /// the route: a body costs memory, and any caller with a token can send one.
    pub async fn read_json(
        &self,
        req: Request<Incoming>,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Held), ProxyError> {
        let mut held = self.buffers.hold_for(&self.identity.key);
        let body = crate::proxy::read_json(req, MAX_BODY, &mut held).await?;
        Ok((body, held))
    }

    /// Whether the caller administers `cf`.
    pub fn administers(&self, cf: &ChatflowEntry) -> bool {
        self.identity.admin || self.snapshot.role(self.caller, cf, self.now) == Some(Role::Admin)
    }

    /// The chatflow with this Flowise id (or `namespace/name`, the `id` of the listing), if the
    /// caller administers it. Unknown ids are 404 for global admins and 403 for everyone else (a
    /// non-admin learns nothing).
    pub fn chatflow(&self, flowise_id: &str) -> Result<Arc<ChatflowEntry>, ProxyError> {
        let found = match flowise_id.split_once('/') {
            Some((ns, name)) => self.snapshot.chatflow_by_name(ns, name),
            None => self.snapshot.chatflow_by_flowise_id(flowise_id),
        };
        match found {
            Some(cf) if self.administers(cf) => Ok(cf.clone()),
            Some(_) => Err(ProxyError::AdminRequired),
            None if self.identity.admin => Err(ProxyError::ChatflowNotFound(flowise_id.into())),
            None => Err(ProxyError::AdminRequired),
        }
    }

    /// The chatflow (`namespace/name`) a usage query may read, from its `chatflow` parameter: a
    /// global admin reads any, or all — a `namespace/name` no longer in the index included, since
    /// its usage outlives it; anyone else only one they administer, named.
    pub fn usage_chatflow(&self, named: Option<String>) -> Result<Option<String>, ProxyError> {
        match named {
            None if self.identity.admin => Ok(None),
            None => Err(ProxyError::AdminRequired),
            Some(key) if self.identity.admin && key.contains('/') => Ok(Some(key)),
            Some(id) => {
                let cf = self.chatflow(&id)?;
                Ok(Some(format!("{}/{}", cf.rule.namespace, cf.rule.name)))
            }
        }
    }

    /// The chatflows the caller administers; 403 when none.
    pub fn administered(&self) -> Result<Vec<&Arc<ChatflowEntry>>, ProxyError> {
        let list: Vec<_> = self
            .snapshot
            .chatflows()
            .iter()
            .filter(|cf| self.administers(cf))
            .collect();
        if list.is_empty() && !self.identity.admin {
            return Err(ProxyError::AdminRequired);
        }
        Ok(list)
    }
}

impl Admin {
    /// `add-user` and `add-user-by-email`: one user (`kind`) added to `chatflow`, answered as
    /// the Python service did, the entry's own answer.
    async fn add_one(
        &self,
        call: &Call<'_>,
        chatflow: &str,
        value: String,
        kind: users::Kind,
    ) -> Result<Response<Body>, ProxyError> {
        let cf = call.chatflow(chatflow)?;
        let out = users::add(&self.client, call, &cf, &[value], kind).await?;
        Ok(error::json(
            StatusCode::OK,
            &to_json(&out.into_iter().next()),
        ))
    }

    /// Answers one admin request.
    pub async fn handle(
        &self,
        route: AdminRoute,
        req: Request<Incoming>,
        call: &Call<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let ok = |value: serde_json::Value| Ok(error::json(StatusCode::OK, &value));
        match route {
            AdminRoute::AddUsers
            | AdminRoute::BulkAddUsers(_)
            | AdminRoute::AddUsersByEmail
            | AdminRoute::BulkAddUsersByEmail(_) => {
                // The caller may use the route before its body is read: the chatflow in the
                // path, or some chatflow when the body names it.
                let in_path = match &route {
                    AdminRoute::BulkAddUsers(id) | AdminRoute::BulkAddUsersByEmail(id) => {
                        Some(call.chatflow(id)?)
                    }
                    _ => {
                        call.administered()?;
                        None
                    }
                };
                let (list, kind) = match route {
                    AdminRoute::AddUsers | AdminRoute::BulkAddUsers(_) => {
                        ("user_ids", users::Kind::Id)
                    }
                    _ => ("emails", users::Kind::Email),
                };
                let (body, _held) = call.read_json(req).await?;
                let subjects = string_list(&body, list)?;
                let cf = match in_path {
                    Some(cf) => cf,
                    None => call.chatflow(&string_field(&body, "chatflow_id")?)?,
                };
                // Nothing to add, as the Python service answered it.
                if subjects.is_empty() {
                    return ok(serde_json::json!([]));
                }
                let out = users::add(&self.client, call, &cf, &subjects, kind).await?;
                ok(to_json(&out))
            }
            AdminRoute::AddUser { chatflow, user } => {
                self.add_one(call, &chatflow, user, users::Kind::Id).await
            }
            AdminRoute::AddUserByEmail { chatflow, email } => {
                self.add_one(call, &chatflow, email, users::Kind::Email)
                    .await
            }
            AdminRoute::RemoveUser {
                chatflow,
                user: subject,
            }
            | AdminRoute::RemoveUserByEmail {
                chatflow,
                email: subject,
            } => {
                let cf = call.chatflow(&chatflow)?;
                ok(to_json(
                    &users::remove(&self.client, call, &cf, &subject).await?,
                ))
            }
            AdminRoute::ListUsers(id) => {
                let cf = call.chatflow(&id)?;
                ok(to_json(&users::list(call, &cf)))
            }
            AdminRoute::Sync => {
                if !call.identity.admin {
                    return Err(ProxyError::AdminRequired);
                }
                let result: ChatflowSyncResult = self.sync.sync_now().await.into();
                ok(to_json(&result))
            }
            AdminRoute::ListChatflows => {
                let include_deleted = include_deleted(req.uri().query())?;
                let list = call.administered()?;
                ok(to_json(&chatflows::list(&list, include_deleted)))
            }
            AdminRoute::Stats => {
                let list = call.administered()?;
                ok(to_json(&chatflows::stats(&list, self.sync.last())))
            }
            AdminRoute::GetChatflow(id) => {
                let cf = call.chatflow(&id)?;
                ok(to_json(&chatflows::model(&cf)))
            }
            AdminRoute::DeleteChatflow(id) => {
                let cf = call.chatflow(&id)?;
                let reimported = self.sync.would_import(cf.rule.flowise_name.as_deref());
                let out = chatflows::delete(&self.client, &cf, reimported).await?;
                audit(call, &cf, "Chatflow deleted", &[]);
                ok(to_json(&out))
            }
            AdminRoute::CreditUsage => {
                let mut filter = usage_log::usage_filter(req.uri().query())?;
                filter.chatflow = call.usage_chatflow(filter.chatflow.take())?;
                ok(to_json(
                    &usage_log::usage_records(&*self.ledger, filter).await?,
                ))
            }
            AdminRoute::AdjustCredits => ok(to_json(&credits::adjust(self, req, call).await?)),
            AdminRoute::CreditBalances => ok(to_json(
                &credits::balances(self, req.uri().query(), call).await?,
            )),
        }
    }
}

/// Logs an admin's change to who may use `cf`, naming the admin: the Kubernetes audit log shows
/// only flowgate's own ServiceAccount as the writer. (Credit adjustments are recorded in the
/// ledger and as Events, with their reason.)
fn audit(call: &Call<'_>, cf: &ChatflowEntry, change: &str, subjects: &[String]) {
    tracing::info!(
        admin = %call.identity.key,
        chatflow = %format_args!("{}/{}", cf.rule.namespace, cf.rule.name),
        ?subjects,
        "admin API: {change}"
    );
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// `include_deleted` (default false), with the words pydantic reads as booleans (`true`/`false`,
/// `1`/`0`, `yes`/`no`, `on`/`off`, `t`/`f`, `y`/`n`, any case); anything else is a 400 naming
/// the parameter.
fn include_deleted(query: Option<&str>) -> Result<bool, ProxyError> {
    let mut value = false;
    for (key, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "include_deleted" {
            value = match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" | "t" | "y" => true,
                "false" | "0" | "no" | "off" | "f" | "n" => false,
                _ => {
                    return Err(ProxyError::BadRequest(
                        "query parameter 'include_deleted' must be true or false".into(),
                    ));
                }
            };
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_deleted_is_a_boolean() {
        assert_eq!(include_deleted(None).ok(), Some(false));
        assert_eq!(
            include_deleted(Some("include_deleted=true")).ok(),
            Some(true)
        );
        assert_eq!(
            include_deleted(Some("x=1&include_deleted=False")).ok(),
            Some(false)
        );
        assert!(include_deleted(Some("include_deleted=maybe")).is_err());
        assert!(include_deleted(Some("include_deleted=")).is_err());
        for (word, value) in [("Yes", true), ("on", true), ("T", true), ("y", true)]
            .into_iter()
            .chain([("NO", false), ("off", false), ("f", false), ("n", false)])
        {
            assert_eq!(
                include_deleted(Some(&format!("include_deleted={word}"))).ok(),
                Some(value),
                "pydantic reads {word:?} as {value}"
            );
        }
        assert_eq!(
            include_deleted(Some("include%5Fdeleted=%74rue")).ok(),
            Some(true),
            "percent-decoded like every other query parameter"
        );
    }
}
