//! The roster: which officer keys may request and approve exports, replayed from the audit
//! chain (each change is an entry there, under the registry's authority key).

use serde_json::{json, Value};

use crate::approval::Approval;
use crate::officer::short_id;
use crate::{format_utc, names};

/// Clock difference tolerated between the registry's machine and an officer's when
/// checking that a key was on the roster when it signed.
pub const CLOCK_SKEW_S: i64 = 300;

/// What an officer may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// May request exports.
    Exporter,
    /// May request and approve exports (a senior officer).
    Approver,
}

impl Role {
    /// `exporter` or `approver`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exporter => "exporter",
            Self::Approver => "approver",
        }
    }

    /// Parses `exporter` or `approver`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exporter" => Some(Self::Exporter),
            "approver" => Some(Self::Approver),
            _ => None,
        }
    }
}

/// One officer on the roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterEntry {
    /// The officer id (public key, hex).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When added (seconds since 1970, UTC, the registry's clock).
    pub added_at: i64,
    /// When revoked, if revoked.
    pub revoked_at: Option<i64>,
}

impl RosterEntry {
    /// Whether the key was on the roster at time `t` (with [`CLOCK_SKEW_S`] of slack at
    /// the start).
    pub fn active_at(&self, t: i64) -> bool {
        self.added_at - CLOCK_SKEW_S <= t && self.revoked_at.is_none_or(|r| t < r)
    }

    /// Whether currently revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// The roster as replayed from the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// Every officer ever added, in order.
    pub entries: Vec<RosterEntry>,
}

impl Roster {
    /// Whether any officer was ever added (from then on only signed approvals count).
    pub fn exists(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The officer with this id.
    pub fn get(&self, id: &str) -> Option<&RosterEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The one officer whose id starts with `prefix` (at least 8 digits).
    pub fn find(&self, prefix: &str) -> Result<&RosterEntry, String> {
        if prefix.len() < 8 {
            return Err(format!("officer id {prefix:?} is too short: give at least 8 digits"));
        }
        let hits: Vec<_> = self.entries.iter().filter(|e| e.id.starts_with(prefix)).collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no officer with id {prefix} on the roster (see `tracemark officer list`)")),
            _ => Err(format!("{} officers have ids starting with {prefix}; give more digits", hits.len())),
        }
    }

    /// Applies a roster audit entry (`officer_add` / `officer_revoke`) recorded at `at`.
    /// Returns what is wrong with it, if anything.
    pub(crate) fn apply(&mut self, action: &str, payload: &Value, at: i64) -> Result<(), String> {
        let id = payload["officer_id"].as_str().unwrap_or_default().to_string();
        if crate::officer::parse_officer_id(&id).is_err() {
            return Err(format!("a roster entry holds a malformed officer id {id:?}"));
        }
        match action {
            "officer_add" => {
                let name = payload["name"].as_str().unwrap_or_default().to_string();
                let role = Role::parse(payload["role"].as_str().unwrap_or_default())
                    .ok_or_else(|| format!("roster entry for {} has no valid role", short_id(&id)))?;
                if self.get(&id).is_some() {
                    return Err(format!("officer {} is added a second time", short_id(&id)));
                }
                self.entries.push(RosterEntry { id, name, role, added_at: at, revoked_at: None });
            }
            "officer_revoke" => match self.entries.iter_mut().find(|e| e.id == id) {
                Some(e) if e.revoked_at.is_none() => e.revoked_at = Some(at),
                _ => return Err(format!("officer {} is revoked without being active", short_id(&id))),
            },
            other => return Err(format!("unknown roster action {other:?}")),
        }
        Ok(())
    }

    /// Audit payload adding an officer.
    pub(crate) fn add_payload(id: &str, name: &str, role: Role) -> Value {
        json!({"officer_id": id, "name": name, "role": role.as_str()})
    }

    /// Checks a parsed approval against the roster as it stands at time `now` (when the
    /// export is recorded): both keys on the roster when they signed and still now, the
    /// requester an exporter or approver, the approver an approver, not expired.
    pub fn check(&self, a: &Approval, now: i64) -> Result<(), String> {
        let (rq, ap) = (&a.request.body, &a.body);
        let who = |id: &str, t: i64, what: &str| -> Result<&RosterEntry, String> {
            let e = self
                .get(id)
                .ok_or_else(|| format!("the {what} key {} is not on this registry's roster", short_id(id)))?;
            if let Some(r) = e.revoked_at.filter(|&r| r <= now) {
                return Err(format!(
                    "the {what} {} was revoked at {}",
                    names::escape_for_terminal(&e.name),
                    format_utc(r)
                ));
            }
            if !e.active_at(t) {
                return Err(format!(
                    "the {what} {} was not on the roster when signing at {}",
                    names::escape_for_terminal(&e.name),
                    format_utc(t)
                ));
            }
            Ok(e)
        };
        let requester = who(&rq.requester_id, rq.requested_at, "requesting officer")?;
        let approver = who(&ap.approver_id, ap.approved_at, "approving officer")?;
        // The names recorded are the roster's: a key cannot sign under another's name.
        for (e, signed) in [(requester, &rq.requester_name), (approver, &ap.approver_name)] {
            if !names::same_name(&e.name, signed) {
                return Err(format!(
                    "key {} signed as {:?} but is on the roster as {:?}",
                    short_id(&e.id),
                    names::escape_for_terminal(signed),
                    names::escape_for_terminal(&e.name)
                ));
            }
        }
        if approver.role != Role::Approver {
            return Err(format!(
                "{} is an {} on the roster, not an approver",
                names::escape_for_terminal(&approver.name),
                approver.role.as_str()
            ));
        }
        if ap.approver_id == rq.requester_id {
            return Err("the approver is the requester (same key): an export cannot approve itself".into());
        }
        if ap.approved_at < rq.requested_at - CLOCK_SKEW_S || ap.approved_at >= rq.expires_at {
            return Err("the approval was signed outside the request's validity".into());
        }
        if now >= rq.expires_at {
            return Err(format!("the request expired at {}; ask for a new one", format_utc(rq.expires_at)));
        }
        Ok(())
    }
}

/// Parses the registry's own RFC 3339 UTC times (`YYYY-MM-DDTHH:MM:SSZ`) back to seconds.
pub fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), the inverse of `format_utc`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss)
}
