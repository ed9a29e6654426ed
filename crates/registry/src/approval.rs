//! The four-eyes flow's documents: a signed export request (by the exporting officer) and
//! a signed approval of it (by a senior officer), plus the registry's signed checkpoints.
//!
//! Each document is JSON. What is signed is the compact serialisation of its `body`, in
//! the field order below, after a context string that names the kind of document, so a
//! signature on one kind can never pass as another. Parsing is strict: unknown fields,
//! other versions and malformed ids are refused, and every signature is checked on parse.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::officer::{hex, parse_officer_id, verify_signature, OfficerError, OfficerKey, OfficerResult};
use crate::{format_utc, names};

const REQUEST_FORMAT: &str = "tracemark-export-request";
const APPROVAL_FORMAT: &str = "tracemark-export-approval";
const CHECKPOINT_FORMAT: &str = "tracemark-registry-checkpoint";
const REQUEST_CONTEXT: &str = "tracemark export request v1";
const APPROVAL_CONTEXT: &str = "tracemark export approval v1";
const CHECKPOINT_CONTEXT: &str = "tracemark registry checkpoint v1";
/// Longest validity a request may ask for (30 days).
pub const MAX_VALID_HOURS: u32 = 24 * 30;

/// What the exporting officer asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    /// Fingerprint of the unit key of the registry the export is for.
    pub registry: String,
    /// SHA-256 (hex) of the source clip.
    pub source_sha256: String,
    /// The source's file name, for people to read (the hash decides).
    pub source_name: String,
    /// Who is to receive the copy.
    pub recipient: String,
    /// Case reference.
    pub case_ref: Option<String>,
    /// Why the clip is to leave.
    pub reason: Option<String>,
    /// When it was signed (seconds since 1970, UTC).
    pub requested_at: i64,
    /// When it stops being usable (seconds since 1970, UTC).
    pub expires_at: i64,
    /// 128 random bits (hex): makes every request unique.
    pub nonce: String,
    /// The requesting officer's id.
    pub requester_id: String,
    /// The requesting officer's name.
    pub requester_name: String,
}

/// A request file: body and the requester's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    format: String,
    version: u32,
    /// What is asked.
    pub body: RequestBody,
    /// Ed25519 signature (hex) by `body.requester_id`.
    pub signature: String,
}

/// What the approving officer signs: the request (by hash) and who approves when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// SHA-256 (hex) of the request's signed bytes and signature.
    pub request_sha256: String,
    /// The approving officer's id.
    pub approver_id: String,
    /// The approving officer's name.
    pub approver_name: String,
    /// When it was signed (seconds since 1970, UTC).
    pub approved_at: i64,
}

/// An approval file: the whole request, the approval body and the approver's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    format: String,
    version: u32,
    /// The request approved (signed by the requester).
    pub request: Request,
    /// What the approver signed.
    pub body: ApprovalBody,
    /// Ed25519 signature (hex) by `body.approver_id`.
    pub signature: String,
}

fn refused(why: impl Into<String>) -> OfficerError {
    OfficerError::Refused(why.into())
}

fn malformed(what: &'static str, why: impl Into<String>) -> OfficerError {
    OfficerError::Malformed { what, why: why.into() }
}

fn compact<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serialises")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_text(field: &'static str, v: &str) -> OfficerResult<()> {
    names::normalise(v).map(|_| ()).map_err(|e| malformed("request", format!("{field} {e}")))
}

impl RequestBody {
    fn check(&self) -> OfficerResult<()> {
        const W: &str = "request";
        if !is_hex(&self.source_sha256, 64) {
            return Err(malformed(W, "source_sha256 is not a SHA-256"));
        }
        if !is_hex(&self.nonce, 32) {
            return Err(malformed(W, "nonce is not 128 bits of hex"));
        }
        parse_officer_id(&self.requester_id)?;
        check_text("recipient", &self.recipient)?;
        check_text("requester_name", &self.requester_name)?;
        for (f, v) in [("case_ref", &self.case_ref), ("reason", &self.reason)] {
            if let Some(v) = v {
                check_text(f, v)?;
            }
        }
        if self.expires_at <= self.requested_at
            || self.expires_at - self.requested_at > i64::from(MAX_VALID_HOURS) * 3600
        {
            return Err(malformed(W, format!("validity must be between 0 and {MAX_VALID_HOURS} hours")));
        }
        Ok(())
    }
}

impl Request {
    /// Signs `body` with the requesting officer's key (whose id and name it must carry).
    pub fn sign(body: RequestBody, key: &OfficerKey) -> OfficerResult<Self> {
        if body.requester_id != key.id() {
            return Err(refused("the request names another officer than the key signing it"));
        }
        body.check()?;
        let signature = key.sign(REQUEST_CONTEXT, &compact(&body));
        Ok(Self { format: REQUEST_FORMAT.into(), version: 1, body, signature })
    }

    /// A fresh 128-bit nonce (hex).
    pub fn new_nonce() -> String {
        use rand_core::{OsRng, RngCore};
        let mut n = [0u8; 16];
        OsRng.fill_bytes(&mut n);
        hex(&n)
    }

    /// Parses a request file and checks its signature.
    pub fn from_file_text(text: &str) -> OfficerResult<Self> {
        let r: Self = serde_json::from_str(text).map_err(|e| malformed("request file", e.to_string()))?;
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> OfficerResult<()> {
        if self.format != REQUEST_FORMAT || self.version != 1 {
            return Err(malformed("request file", "not a tracemark export request (version 1)"));
        }
        self.body.check()?;
        verify_signature(
            &self.body.requester_id,
            REQUEST_CONTEXT,
            &compact(&self.body),
            &self.signature,
            "request",
        )
    }

    /// The file text.
    pub fn to_file_text(&self) -> String {
        format!("{:#}\n", serde_json::to_value(self).expect("plain data serialises"))
    }

    /// SHA-256 (hex) over the signed bytes and the signature: what an approval refers to.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(REQUEST_CONTEXT.as_bytes());
        h.update([0]);
        h.update(compact(&self.body));
        h.update([0]);
        h.update(self.signature.as_bytes());
        hex(&h.finalize())
    }

    /// What is asked, in lines for a person to read before approving.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let b = &self.body;
        let mut out = vec![
            ("recipient", names::escape_for_terminal(&b.recipient)),
            (
                "requested by",
                format!("{} ({})", names::escape_for_terminal(&b.requester_name), &b.requester_id[..16]),
            ),
            (
                "source",
                format!("{} (SHA-256 {})", names::escape_for_terminal(&b.source_name), b.source_sha256),
            ),
        ];
        if let Some(c) = &b.case_ref {
            out.push(("case", names::escape_for_terminal(c)));
        }
        if let Some(r) = &b.reason {
            out.push(("reason", names::escape_for_terminal(r)));
        }
        out.push(("requested at", format_utc(b.requested_at)));
        out.push(("expires at", format_utc(b.expires_at)));
        out
    }
}

impl Approval {
    /// The approving officer signs `request` at time `now`. Refuses a request this key
    /// made itself, an expired one, or one that does not verify.
    pub fn sign(request: &Request, key: &OfficerKey, now: i64) -> OfficerResult<Self> {
        request.check()?;
        if key.id() == request.body.requester_id {
            return Err(refused(
                "you made this request yourself: another officer (an approver) must approve it",
            ));
        }
        if now >= request.body.expires_at {
            return Err(refused(format!("the request expired at {}", format_utc(request.body.expires_at))));
        }
        let body = ApprovalBody {
            request_sha256: request.digest(),
            approver_id: key.id(),
            approver_name: key.name().to_string(),
            approved_at: now,
        };
        let signature = key.sign(APPROVAL_CONTEXT, &compact(&body));
        Ok(Self { format: APPROVAL_FORMAT.into(), version: 1, request: request.clone(), body, signature })
    }

    /// Parses an approval file and checks both signatures, that it approves exactly the
    /// request it holds, and that approver and requester are different keys.
    pub fn from_file_text(text: &str) -> OfficerResult<Self> {
        let a: Self = serde_json::from_str(text).map_err(|e| malformed("approval file", e.to_string()))?;
        if a.format != APPROVAL_FORMAT || a.version != 1 {
            return Err(malformed("approval file", "not a tracemark export approval (version 1)"));
        }
        a.request.check()?;
        parse_officer_id(&a.body.approver_id)?;
        check_text("approver_name", &a.body.approver_name)?;
        verify_signature(&a.body.approver_id, APPROVAL_CONTEXT, &compact(&a.body), &a.signature, "approval")?;
        if a.body.request_sha256 != a.request.digest() {
            return Err(OfficerError::BadSignature("approval (it approves another request)"));
        }
        if a.body.approver_id == a.request.body.requester_id {
            return Err(refused(
                "the approval is signed by the requesting officer's own key (self-approval)",
            ));
        }
        Ok(a)
    }

    /// The file text.
    pub fn to_file_text(&self) -> String {
        format!("{:#}\n", serde_json::to_value(self).expect("plain data serialises"))
    }

    /// Compact JSON, as stored with the export.
    pub fn to_compact(&self) -> String {
        String::from_utf8(compact(self)).expect("JSON is UTF-8")
    }
}

/// A signed statement "the registry had `entries` audit entries ending in `head`", by the
/// registry's authority key, for an auditor to keep elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    format: String,
    version: u32,
    /// What is signed.
    pub body: CheckpointBody,
    /// Ed25519 signature (hex) by `body.authority_key`.
    pub signature: String,
}

/// What a checkpoint states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    /// Fingerprint of the unit key.
    pub registry: String,
    /// The registry's authority public key (hex).
    pub authority_key: String,
    /// Number of audit entries.
    pub entries: i64,
    /// Hash of the last of them.
    pub head: String,
    /// When it was made (seconds since 1970, UTC).
    pub made_at: i64,
}

impl Checkpoint {
    pub(crate) fn sign(body: CheckpointBody, authority: &OfficerKey) -> Self {
        let signature = authority.sign(CHECKPOINT_CONTEXT, &compact(&body));
        Self { format: CHECKPOINT_FORMAT.into(), version: 1, body, signature }
    }

    /// Parses a checkpoint file and checks its signature against the key it names (the
    /// caller compares that key with the registry's).
    pub fn from_file_text(text: &str) -> OfficerResult<Self> {
        let c: Self = serde_json::from_str(text).map_err(|e| malformed("checkpoint file", e.to_string()))?;
        if c.format != CHECKPOINT_FORMAT || c.version != 1 {
            return Err(malformed("checkpoint file", "not a tracemark registry checkpoint (version 1)"));
        }
        if !is_hex(&c.body.head, 64) || c.body.entries < 1 {
            return Err(malformed("checkpoint file", "head or entry count malformed"));
        }
        verify_signature(
            &c.body.authority_key,
            CHECKPOINT_CONTEXT,
            &compact(&c.body),
            &c.signature,
            "checkpoint",
        )?;
        Ok(c)
    }

    /// The file text.
    pub fn to_file_text(&self) -> String {
        format!("{:#}\n", serde_json::to_value(self).expect("plain data serialises"))
    }
}
