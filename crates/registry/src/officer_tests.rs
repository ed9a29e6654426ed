use super::*;
use proptest::prelude::*;

const KEY: [u8; 32] = [9u8; 32];
const FP: &str = "fp-officers";
const PASS: &str = "correct horse battery";
const SOURCE: &str = "5555555555555555555555555555555555555555555555555555555555555555";

struct Unit {
    _dir: tempfile::TempDir,
    reg: Registry,
    smith: OfficerKey,
    jones: OfficerKey,
    brown: OfficerKey,
}

/// A registry with exporter PC Smith and approvers Insp. Jones and Sgt. Brown.
fn unit() -> Unit {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open_or_create(&dir.path().join("reg.db"), FP, &KEY, None).unwrap();
    let smith = OfficerKey::generate("PC Smith").unwrap();
    let jones = OfficerKey::generate("Insp. Jones").unwrap();
    let brown = OfficerKey::generate("Sgt. Brown").unwrap();
    reg.add_officer(&smith.public(), Role::Exporter, &KEY).unwrap();
    reg.add_officer(&jones.public(), Role::Approver, &KEY).unwrap();
    reg.add_officer(&brown.public(), Role::Approver, &KEY).unwrap();
    Unit { _dir: dir, reg, smith, jones, brown }
}

fn now() -> i64 {
    now_secs()
}

fn request(by: &OfficerKey, recipient: &str) -> Request {
    let t = now();
    Request::sign(
        RequestBody {
            registry: FP.into(),
            source_sha256: SOURCE.into(),
            source_name: "cam3.avi".into(),
            recipient: recipient.into(),
            case_ref: Some("CR-7".into()),
            reason: None,
            requested_at: t,
            expires_at: t + 3600,
            nonce: Request::new_nonce(),
            requester_id: by.id(),
            requester_name: by.name().into(),
        },
        by,
    )
    .unwrap()
}

fn record_for(a: &Approval, mark: &str) -> ExportRecord {
    let rq = &a.request.body;
    ExportRecord {
        mark_id: mark.into(),
        recipient: rq.recipient.clone(),
        officer: rq.requester_name.clone(),
        approved_by: a.body.approver_name.clone(),
        case_ref: rq.case_ref.clone(),
        reason: rq.reason.clone(),
        source_path: "/cam3.avi".into(),
        source_sha256: rq.source_sha256.clone(),
        output_path: "/out.mp4".into(),
        output_sha256: "bb".repeat(32),
        frames: 10,
        duration_s: Some(0.4),
        width: 64,
        height: 48,
        embed_params: "{}".into(),
        key_fingerprint: FP.into(),
        created_at: now_utc(),
        approval: Some(a.to_compact()),
    }
}

fn refused(r: Result<()>) -> String {
    match r {
        Err(Error::ApprovalRefused(w)) => w,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn key_files_open_only_with_their_passphrase_and_unaltered() {
    let k = OfficerKey::generate("Insp. Jones").unwrap();
    let sealed = k.seal(PASS).unwrap();
    assert!(!sealed.contains(&hex(&k.signing_bytes_for_test())), "the secret is stored in clear");
    let back = OfficerKey::open(&sealed, PASS).unwrap();
    assert_eq!(back.id(), k.id());
    assert_eq!(back.name(), "Insp. Jones");
    assert!(matches!(OfficerKey::open(&sealed, "wrong passphrase"), Err(OfficerError::WrongPassphrase)));
    assert!(matches!(k.seal("short"), Err(OfficerError::BadPassphrase(_))));
    // Swapping in another officer's id (so the key would sign under a forged identity).
    let other = OfficerKey::generate("X").unwrap().id();
    let forged = sealed.replace(&k.id(), &other);
    assert!(OfficerKey::open(&forged, PASS).is_err());
    // A hostile cost parameter is refused before any work.
    let costly = sealed.replace("\"memory_kib\": 19456", "\"memory_kib\": 4000000000");
    assert!(matches!(OfficerKey::open(&costly, PASS), Err(OfficerError::Malformed { .. })));
    let public = OfficerPublic::from_file_text(&k.public().to_file_text()).unwrap();
    assert_eq!(public, k.public());
    assert!(OfficerPublic::from_file_text(&sealed).is_err());
}

#[test]
fn a_signed_four_eyes_export_verifies_without_a_secret() {
    let mut u = unit();
    let a = Approval::sign(&request(&u.smith, "Channel 4"), &u.jones, now()).unwrap();
    let text = a.to_file_text();
    let parsed = u.reg.check_approval(&text, SOURCE).unwrap();
    assert_eq!(parsed, a);
    u.reg.record_pending(&record_for(&a, "00000000000000a1"), &KEY).unwrap();
    u.reg.mark_delivered("00000000000000a1", &KEY).unwrap();
    let rep = u.reg.verify(None).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert!(rep.head_signed && rep.authority_key.is_some());
    assert_eq!(rep.signed_approvals, 1);
    assert_eq!(rep.roster.entries.len(), 3);
    assert_eq!(rep.exports[0].record.approval_kind(), "signed approval");
    // One approval, one export.
    let again = record_for(&a, "00000000000000b2");
    assert!(refused(u.reg.record_pending(&again, &KEY)).contains("used for an export already"));
    assert!(matches!(u.reg.check_approval(&text, SOURCE), Err(Error::ApprovalRefused(_))));
}

#[test]
fn approvals_are_refused_for_every_reason_in_the_contract() {
    let mut u = unit();
    // Self-approval: refused at signing, and a hand-made one is refused on parse.
    let own = request(&u.jones, "Channel 4");
    assert!(matches!(Approval::sign(&own, &u.jones, now()), Err(OfficerError::Refused(_))));
    // An exporter cannot approve.
    let by_exporter = Approval::sign(&request(&u.brown, "Channel 4"), &u.smith, now()).unwrap();
    assert!(refused(u.reg.record_pending(&record_for(&by_exporter, "00000000000000c1"), &KEY))
        .contains("not an approver"));
    // Another source clip.
    let a = Approval::sign(&request(&u.smith, "Channel 4"), &u.jones, now()).unwrap();
    let other_source = "6".repeat(64);
    assert!(matches!(u.reg.check_approval(&a.to_file_text(), &other_source), Err(Error::ApprovalRefused(_))));
    // The recipient changed after approval.
    let mut rec = record_for(&a, "00000000000000c2");
    rec.recipient = "Channel 5".into();
    assert!(refused(u.reg.record_pending(&rec, &KEY)).contains("recipient"));
    // Editing the approved request breaks the signatures.
    let edited = a.to_file_text().replace("Channel 4", "Channel 5");
    assert!(matches!(Approval::from_file_text(&edited), Err(OfficerError::BadSignature(_))));
    // Swapping the approver's id for another approver's: the signature no longer holds.
    let swapped = a.to_file_text().replace(&u.jones.id(), &u.brown.id());
    assert!(Approval::from_file_text(&swapped).is_err());
    // A key that is not on the roster.
    let stranger = OfficerKey::generate("Supt. Nobody").unwrap();
    let b = Approval::sign(&request(&u.smith, "Channel 4"), &stranger, now()).unwrap();
    assert!(refused(u.reg.record_pending(&record_for(&b, "00000000000000c3"), &KEY)).contains("not on"));
    // A roster key signing under another officer's name.
    let fake = {
        // Brown's real key, but a key file claiming the name "Insp. Jones".
        let text = u.brown.seal("a long passphrase").unwrap().replace("Sgt. Brown", "Insp. Jones");
        OfficerKey::open(&text, "a long passphrase").unwrap()
    };
    let d = Approval::sign(&request(&u.smith, "Channel 4"), &fake, now()).unwrap();
    assert!(
        refused(u.reg.record_pending(&record_for(&d, "00000000000000c6"), &KEY)).contains("on the roster as")
    );
    // A revoked approver.
    let c = Approval::sign(&request(&u.smith, "Channel 4"), &u.brown, now()).unwrap();
    u.reg.revoke_officer(&u.brown.id()[..12], &KEY).unwrap();
    assert!(refused(u.reg.record_pending(&record_for(&c, "00000000000000c4"), &KEY)).contains("revoked"));
    // Signed before the request existed / after it expired.
    let rq = request(&u.smith, "Channel 4");
    assert!(matches!(Approval::sign(&rq, &u.jones, rq.body.expires_at), Err(OfficerError::Refused(_))));
    // With a roster, a declared approval is refused.
    let mut declared = record_for(&a, "00000000000000c5");
    declared.approval = None;
    assert!(matches!(u.reg.record_pending(&declared, &KEY), Err(Error::SignedApprovalRequired)));
    assert_eq!(u.reg.exports().unwrap().len(), 0);
    let rep = u.reg.verify(None).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
}

#[test]
fn a_signed_approval_without_a_roster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open_or_create(&dir.path().join("reg.db"), FP, &KEY, None).unwrap();
    let (s, j) = (OfficerKey::generate("PC Smith").unwrap(), OfficerKey::generate("Insp. Jones").unwrap());
    let a = Approval::sign(&request(&s, "Channel 4"), &j, now()).unwrap();
    assert!(matches!(reg.record_pending(&record_for(&a, "00000000000000d1"), &KEY), Err(Error::NoRoster)));
    assert!(matches!(reg.check_approval(&a.to_file_text(), SOURCE), Err(Error::NoRoster)));
}

#[test]
fn roster_changes_need_the_unit_key_and_refuse_duplicates() {
    let mut u = unit();
    let smith = u.smith.public();
    assert!(matches!(u.reg.add_officer(&smith, Role::Approver, &KEY), Err(Error::Roster(_))));
    let twin = OfficerKey::generate("pc  SMITH").unwrap();
    assert!(matches!(u.reg.add_officer(&twin.public(), Role::Exporter, &KEY), Err(Error::Roster(_))));
    let other = OfficerKey::generate("DC Green").unwrap();
    assert!(matches!(
        u.reg.add_officer(&other.public(), Role::Exporter, &[1u8; 32]),
        Err(Error::WrongKey { .. })
    ));
    assert!(matches!(u.reg.revoke_officer("0000", &KEY), Err(Error::Roster(_))));
    u.reg.revoke_officer(&u.smith.id(), &KEY).unwrap();
    assert!(matches!(u.reg.revoke_officer(&u.smith.id(), &KEY), Err(Error::Roster(_))));
    let roster = u.reg.verify(None).unwrap().roster;
    assert!(roster.get(&u.smith.id()).unwrap().is_revoked());
}

/// Copy of the registry (checkpointed WAL) with `sql` applied behind the tool's back.
fn altered(reg: &Registry, name: &str, sql: &str) -> Registry {
    let path = reg.path().to_path_buf();
    let c = Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    let copy = path.with_file_name(name);
    std::fs::copy(&path, &copy).unwrap();
    let c = Connection::open(&copy).unwrap();
    c.execute_batch(
        "DROP TRIGGER audit_no_delete; DROP TRIGGER exports_no_delete; DROP TRIGGER exports_no_update;",
    )
    .unwrap();
    c.execute_batch(sql).unwrap();
    drop(c);
    Registry::open_read_only(&copy).unwrap()
}

#[test]
fn checkpoints_catch_truncation_rollback_and_rewrites() {
    let mut u = unit();
    let a = Approval::sign(&request(&u.smith, "Channel 4"), &u.jones, now()).unwrap();
    u.reg.record_pending(&record_for(&a, "00000000000000e1"), &KEY).unwrap();
    u.reg.mark_delivered("00000000000000e1", &KEY).unwrap();
    let cp = Checkpoint::from_file_text(&u.reg.checkpoint(&KEY).unwrap().to_file_text()).unwrap();
    assert!(matches!(u.reg.checkpoint(&[3u8; 32]), Err(Error::WrongKey { .. })));
    // Growing past the checkpoint is fine.
    let b = Approval::sign(&request(&u.smith, "Channel 5"), &u.brown, now()).unwrap();
    u.reg.record_pending(&record_for(&b, "00000000000000e2"), &KEY).unwrap();
    let mut rep = u.reg.verify(None).unwrap();
    u.reg.verify_checkpoint(&cp, &mut rep).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    // Cut back to before the checkpoint, head rows rewritten to match: plain verify cannot
    // tell without the key, the checkpoint can.
    let n = cp.body.entries;
    let cut = altered(
        &u.reg,
        "cut.db",
        &format!(
            "DELETE FROM audit WHERE seq >= {n}; DELETE FROM exports; \
             UPDATE meta SET value = (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1) WHERE key = 'head_hash'; \
             UPDATE meta SET value = '{}' WHERE key = 'head_seq';",
            n - 1
        ),
    );
    let mut rep = cut.verify(None).unwrap();
    cut.verify_checkpoint(&cp, &mut rep).unwrap();
    assert!(rep.problems.iter().any(|p| p.contains("fewer than")), "{:?}", rep.problems);
    // A checkpoint edited to hide it no longer verifies.
    let forged = cp.to_file_text().replace(&format!("\"entries\": {n}"), &format!("\"entries\": {}", n - 3));
    assert!(matches!(Checkpoint::from_file_text(&forged), Err(OfficerError::BadSignature(_))));
}

#[test]
fn a_forged_head_or_roster_entry_fails_verification_without_the_key() {
    let u = unit();
    // An extra approver slipped into the roster behind the tool's back, chained correctly
    // and the head moved to it: only the authority's signature on the head gives it away.
    let mallory = OfficerKey::generate("Mallory").unwrap();
    let (seq, prev): (i64, String) = u
        .reg
        .conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let payload = Roster::add_payload(&mallory.id(), "Mallory", Role::Approver).to_string();
    let at = now_utc();
    let hash = chain_hash(&prev, seq + 1, &at, "officer_add", &payload);
    let sql = format!(
        "INSERT INTO audit (seq, at, action, payload, prev_hash, hash) VALUES ({}, '{at}', 'officer_add', '{payload}', '{prev}', '{hash}'); \
         UPDATE meta SET value = '{}' WHERE key = 'head_seq'; UPDATE meta SET value = '{hash}' WHERE key = 'head_hash';",
        seq + 1,
        seq + 1
    );
    let forged = altered(&u.reg, "forged.db", &sql);
    let rep = forged.verify(None).unwrap();
    assert_eq!(rep.problems.len(), 1, "{:?}", rep.problems);
    assert!(rep.problems[0].contains("not signed by the registry's authority"), "{:?}", rep.problems);
    assert!(rep.roster.get(&mallory.id()).is_some());
    // ... and the forged roster entry authorises nothing.
    let a = Approval::sign(&request(&u.smith, "Channel 4"), &mallory, now()).unwrap();
    assert!(matches!(forged.check_approval(&a.to_file_text(), SOURCE), Err(Error::Unverified { .. })));
    // The untouched registry verifies.
    assert!(u.reg.verify(None).unwrap().is_ok());
}

#[test]
fn times_round_trip() {
    for t in [0, 86_399, 951_782_400, 1_764_000_000, 4_102_444_800] {
        assert_eq!(roster::parse_utc(&format_utc(t)), Some(t));
    }
    assert_eq!(roster::parse_utc("2026-13-01T00:00:00Z"), None);
    assert_eq!(roster::parse_utc("2026-12-01 00:00:00Z"), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Any change to an approval file either makes it unreadable or leaves what it says
    /// exactly as signed (white space, say): never a different approval that verifies.
    #[test]
    fn a_mutated_approval_never_verifies_as_something_else(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        thread_local! {
            static BASE: (String, Approval) = {
                let s = OfficerKey::generate("PC Smith").unwrap();
                let j = OfficerKey::generate("Insp. Jones").unwrap();
                let a = Approval::sign(&request(&s, "Channel 4"), &j, now()).unwrap();
                (a.to_file_text(), a)
            };
        }
        BASE.with(|(text, a)| {
            let mut bytes = text.clone().into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            if let Ok(t) = String::from_utf8(bytes) {
                if let Ok(b) = Approval::from_file_text(&t) {
                    prop_assert_eq!(&b, a);
                }
            }
            Ok(())
        })?;
    }

    /// Same for request files and checkpoints' parsers on arbitrary text: no panic.
    #[test]
    fn parsers_never_panic(text in ".{0,400}") {
        let _ = Request::from_file_text(&text);
        let _ = Approval::from_file_text(&text);
        let _ = Checkpoint::from_file_text(&text);
        let _ = OfficerPublic::from_file_text(&text);
        let _ = OfficerKey::open(&text, PASS);
    }
}
