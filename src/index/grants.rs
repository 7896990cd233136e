//! The grant tables of a [`super::Snapshot`]: who is granted a chatflow (or, by `"*"`, a
//! namespace), by subject, and how a caller's grants combine into its [`Access`].

use std::borrow::Cow;

use foldhash::HashMap as FastMap;
use foldhash::HashSet as FastSet;
use jiff::Timestamp;

use super::{Caller, SubjectRule};
use crate::crd::access::user_key;
use crate::crd::{RateLimit, Role};

/// A grant of access to one chatflow or a whole namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) role: Role,
    pub(super) expires_at: Option<Timestamp>,
    pub(super) limit: Option<Limit>,
    /// Without a limit of its own, it takes the caller's other grants' (the admin API's
    /// objects: they grant access, not a rate a GitOps grant limits).
    pub(super) inherits_limit: bool,
}

/// The rate limit of one ChatflowAccess, carried by each of its grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Position of the ChatflowAccess in [`super::Snapshot::access_rules`]: whose allowance is counted.
    pub rule: u32,
    pub rate: RateLimit,
}

impl Limit {
    /// Whether this limit is more generous than `other`: a higher rate; at the same rate, the
    /// larger burst (more `requests` per longer period); then the earlier ChatflowAccess. A total
    /// order, so the union of a caller's grants does not depend on the order it is read in.
    pub(super) fn more_than(&self, other: &Limit) -> bool {
        let per = |l: &Limit| l.rate.per.duration().as_secs();
        let rate = |l: &Limit, by: &Limit| u64::from(l.rate.requests) * per(by);
        (
            rate(self, other),
            self.rate.requests,
            std::cmp::Reverse(self.rule),
        ) > (
            rate(other, self),
            other.rate.requests,
            std::cmp::Reverse(other.rule),
        )
    }
}

/// What a caller may do with a chatflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The strongest role of the caller's live grants.
    pub role: Role,
    /// The most generous rate limit among them; `None` when any of them has none (but for an
    /// admin-API grant, which takes the others').
    pub limit: Option<Limit>,
}

impl Grant {
    pub(super) fn live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// Who is granted one chatflow, or (by `"*"`) every chatflow of one namespace, by subject.
///
/// Kept per chatflow and per namespace, not per subject: a decision then looks the caller up in
/// maps as large as the chatflow's own audience, however many objects the index holds.
///
/// The maps hash with foldhash, not SipHash: their keys are subjects written in the cluster's
/// own ChatflowAccess objects, and callers only look up (a caller's claim values never become
/// keys). foldhash is seeded per map, which is the resistance that setting needs; the token
/// cache, whose keys callers choose, keeps SipHash.
#[derive(Debug, Default)]
pub(super) struct Holders {
    users: FastMap<Box<str>, Vec<Grant>>,
    groups: FastMap<Box<str>, Vec<Grant>>,
    service_accounts: FastMap<Box<str>, Vec<Grant>>,
}

impl Holders {
    pub(super) fn grant(&mut self, subject: &SubjectRule, grant: Grant) {
        // A caller names an address in lower case too ([`crate::crd::access::user_key`]).
        let (map, key) = match subject {
            SubjectRule::User(u) => (&mut self.users, user_key(u)),
            SubjectRule::Group(g) => (&mut self.groups, Cow::Borrowed(g.as_str())),
            SubjectRule::ServiceAccount(sa) => {
                (&mut self.service_accounts, Cow::Borrowed(sa.as_str()))
            }
        };
        match map.get_mut(key.as_ref()) {
            Some(grants) => grants.push(grant),
            None => {
                map.insert(key.as_ref().into(), vec![grant]);
            }
        }
    }

    /// Folds each subject's grants that never expire into one that the union of
    /// [`super::Snapshot::access`] reads as it read them all, keeping those that expire apart: a
    /// caller named by many objects on one chatflow (a group in a hundred of them) is then
    /// decided in a few steps, not one per object.
    pub(super) fn fold_lasting(&mut self) {
        for grants in self
            .users
            .values_mut()
            .chain(self.groups.values_mut())
            .chain(self.service_accounts.values_mut())
        {
            if grants.iter().filter(|g| g.expires_at.is_none()).count() < 2 {
                continue;
            }
            let (lasting, mut expiring): (Vec<Grant>, Vec<Grant>) =
                grants.drain(..).partition(|g| g.expires_at.is_none());
            let role = lasting.iter().map(|g| g.role).max();
            let unlimited = lasting
                .iter()
                .any(|g| g.limit.is_none() && !g.inherits_limit);
            let limit = lasting
                .iter()
                .filter_map(|g| g.limit)
                .reduce(
                    |held, other| {
                        if other.more_than(&held) { other } else { held }
                    },
                );
            if let Some(role) = role {
                grants.push(Grant {
                    role,
                    expires_at: None,
                    // Unlimited wins the union; else the most generous limit; else none, taking
                    // the caller's other grants' (every one of these took them).
                    limit: limit.filter(|_| !unlimited),
                    inherits_limit: !unlimited && limit.is_none(),
                });
            }
            grants.append(&mut expiring);
        }
    }

    /// The grants this holds for `caller`, live or not.
    pub(super) fn of<'s>(&'s self, caller: &Caller<'_>) -> impl Iterator<Item = &'s Grant> {
        let users = caller
            .users
            .iter()
            .filter_map(|u| self.users.get(u.as_str()));
        let groups = caller
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g.as_str()));
        let sa = caller
            .service_account
            .and_then(|sa| self.service_accounts.get(sa));
        users.chain(groups).chain(sa).flatten()
    }
}

/// Every subject some grant names, whatever it grants.
#[derive(Debug, Default)]
pub(super) struct Granted {
    users: FastSet<Box<str>>,
    groups: FastSet<Box<str>>,
    service_accounts: FastSet<Box<str>>,
}

impl Granted {
    pub(super) fn add(&mut self, subject: &SubjectRule) {
        let (set, key) = match subject {
            SubjectRule::User(u) => (&mut self.users, user_key(u)),
            SubjectRule::Group(g) => (&mut self.groups, Cow::Borrowed(g.as_str())),
            SubjectRule::ServiceAccount(sa) => {
                (&mut self.service_accounts, Cow::Borrowed(sa.as_str()))
            }
        };
        if !set.contains(key.as_ref()) {
            set.insert(key.as_ref().into());
        }
    }

    pub(super) fn names(&self, caller: &Caller<'_>) -> bool {
        caller.users.iter().any(|u| self.users.contains(u.as_str()))
            || caller
                .groups
                .iter()
                .any(|g| self.groups.contains(g.as_str()))
            || caller
                .service_account
                .is_some_and(|sa| self.service_accounts.contains(sa))
    }
}
