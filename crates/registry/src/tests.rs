use super::*;

const KEY: [u8; 32] = [7u8; 32];
const FP: &str = "fp-test";

fn record(mark: &str, recipient: &str) -> ExportRecord {
    ExportRecord {
        mark_id: mark.into(),
        recipient: recipient.into(),
        officer: "PC Smith".into(),
        approved_by: "Insp. Jones".into(),
        case_ref: Some("CR-1".into()),
        reason: None,
        source_path: "/src.avi".into(),
        source_sha256: "aa".repeat(32),
        output_path: "/out.mp4".into(),
        output_sha256: "bb".repeat(32),
        frames: 10,
        duration_s: Some(0.4),
        width: 64,
        height: 48,
        embed_params: "{}".into(),
        key_fingerprint: FP.into(),
        created_at: now_utc(),
        approval: None,
    }
}

fn filled(dir: &Path) -> PathBuf {
    let path = dir.join("reg.db");
    let mut reg = Registry::open_or_create(&path, FP, &KEY, None).unwrap();
    for (m, r) in [("00000000000000a1", "A"), ("00000000000000b2", "B")] {
        reg.record_pending(&record(m, r), &KEY).unwrap();
        reg.mark_delivered(m, &KEY).unwrap();
    }
    reg.record_pending(&record("00000000000000c3", "C"), &KEY).unwrap();
    reg.mark_failed("00000000000000c3", "output exists", &KEY).unwrap();
    path
}

/// Applies `sql` to a copy of the registry with the triggers dropped and returns the
/// verification of the copy.
fn tampered(path: &Path, sql: &str) -> VerifyReport {
    let copy = path.with_file_name(format!("t{}.db", sql.len()));
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    std::fs::copy(path, &copy).unwrap();
    let c = Connection::open(&copy).unwrap();
    c.execute_batch(
        "DROP TRIGGER exports_no_update; DROP TRIGGER exports_no_delete; \
         DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;",
    )
    .unwrap();
    c.execute_batch(sql).unwrap();
    drop(c);
    Registry::open_read_only(&copy).unwrap().verify(Some(&KEY)).unwrap()
}

#[test]
fn a_clean_registry_verifies_with_statuses_from_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path());
    let reg = Registry::open_read_only(&path).unwrap();
    let rep = reg.verify(Some(&KEY)).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    let st: Vec<_> = rep.exports.iter().map(|e| (e.record.recipient.as_str(), e.status)).collect();
    assert_eq!(
        st,
        [("A", ExportStatus::Delivered), ("B", ExportStatus::Delivered), ("C", ExportStatus::Failed)]
    );
    assert_eq!(rep.audit_entries, 7);
    // Without the key: same result, not authenticated.
    let rep = reg.verify(None).unwrap();
    assert!(rep.is_ok() && !rep.authenticated);
    assert!(reg.verify(Some(&[8u8; 32])).unwrap().problems.iter().any(|p| p.contains("not authentic")));
}

#[test]
fn attacks_from_the_issue_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path());
    // A copied mark id with a leading space / upper case under another recipient.
    for id in ["' 00000000000000a1'", "'00000000000000A1'"] {
        let rep = tampered(
            &path,
            &format!(
                "CREATE TABLE x AS SELECT * FROM exports; DROP TABLE exports; CREATE TABLE exports AS SELECT * FROM x; \
                 INSERT INTO exports SELECT 99, {id}, 'innocent', officer, approved_by, case_ref, reason, source_path, \
                 source_sha256, output_path, output_sha256, frames, duration_s, width, height, embed_params, \
                 key_fingerprint, created_at, approval FROM x LIMIT 1;"
            ),
        );
        assert!(rep.problems.iter().any(|p| p.contains("malformed mark id")), "{:?}", rep.problems);
        assert!(rep.exports.iter().all(|e| e.record.recipient != "innocent"));
    }
    // An edited recipient column.
    let rep = tampered(&path, "UPDATE exports SET recipient = 'innocent' WHERE recipient = 'A';");
    assert!(rep.problems.iter().any(|p| p.contains("edited")), "{:?}", rep.problems);
    assert!(rep.exports.iter().all(|e| e.record.recipient != "innocent" && e.record.recipient != "A"));
    // A duplicated row (unique constraint dropped).
    let rep = tampered(
        &path,
        "CREATE TABLE x AS SELECT * FROM exports; DROP TABLE exports; CREATE TABLE exports AS SELECT * FROM x; \
         INSERT INTO exports SELECT * FROM x WHERE recipient = 'B';",
    );
    assert!(rep.problems.iter().any(|p| p.contains("more than one export row")), "{:?}", rep.problems);
    // Everything deleted, head included: not "OK, 0 exports".
    let rep =
        tampered(&path, "DELETE FROM exports; DELETE FROM audit; DELETE FROM meta WHERE key LIKE 'head_%';");
    assert!(!rep.is_ok());
    assert!(rep.problems.iter().any(|p| p.contains("creation entry is missing")), "{:?}", rep.problems);
    // A forged delivery of the failed export.
    let rep = tampered(
        &path,
        "DELETE FROM audit WHERE seq = 7; UPDATE meta SET value = '6' WHERE key = 'head_seq';",
    );
    assert!(!rep.is_ok(), "{:?}", rep.problems);
}

#[test]
fn read_only_opening_never_changes_a_file() {
    let dir = tempfile::tempdir().unwrap();
    // A foreign database in rollback-journal mode with its own `exports` table.
    let foreign = dir.path().join("other.db");
    let c = Connection::open(&foreign).unwrap();
    c.execute_batch("CREATE TABLE exports (a TEXT); INSERT INTO exports VALUES ('x');").unwrap();
    drop(c);
    let before = std::fs::read(&foreign).unwrap();
    assert!(matches!(Registry::open_read_only(&foreign), Err(Error::NotARegistry { .. })));
    assert!(matches!(Registry::open_or_create(&foreign, FP, &KEY, None), Err(Error::NotARegistry { .. })));
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // A real registry, cleanly closed: reading it leaves every byte as it was.
    let path = filled(dir.path());
    let before = std::fs::read(&path).unwrap();
    let reg = Registry::open_read_only(&path).unwrap();
    assert_eq!(reg.exports().unwrap().len(), 3);
    assert!(reg.verify(None).unwrap().is_ok());
    drop(reg);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!dir.path().join("reg.db-wal").exists() && !dir.path().join("reg.db-shm").exists());
}

#[test]
fn wrong_key_schema_and_bad_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path());
    assert!(matches!(Registry::open_or_create(&path, "other", &KEY, None), Err(Error::WrongKey { .. })));
    let mut reg = Registry::open_or_create(&path, FP, &KEY, None).unwrap();
    assert!(matches!(
        reg.record_pending(&record("00000000000000a1", "Z"), &KEY),
        Err(Error::DuplicateMarkId(_))
    ));
    assert!(matches!(reg.record_pending(&record("00000000000000A9", "Z"), &KEY), Err(Error::BadMarkId(_))));
    let mut r = record("00000000000000d4", "Z");
    r.approved_by = "pc\u{a0} SMITH".into();
    assert!(matches!(reg.record_pending(&r, &KEY), Err(Error::SelfApproval { .. })));
    r.approved_by = "PC\u{200b}Smith".into();
    assert!(matches!(reg.record_pending(&r, &KEY), Err(Error::InvalidField { field: "approved_by", .. })));
    assert!(matches!(reg.mark_delivered("00000000000000c3", &KEY), Err(Error::NotPending(_))));
    assert_eq!(reg.exports().unwrap().len(), 3);
    assert!(matches!(reg.find("0000"), Err(Error::AmbiguousPrefix { count: 3, .. })));
    assert_eq!(reg.find("00000000000000B2").unwrap().unwrap().record.recipient, "B");
}

#[test]
fn strict_mark_ids() {
    assert_eq!(parse_mark_id("00000000000000a1").unwrap(), 0xa1);
    for bad in [
        " 00000000000000a1",
        "00000000000000A1",
        "0000000000000a1",
        "00000000000000a1 ",
        "+0000000000000a1",
        "",
    ] {
        assert!(parse_mark_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn waiting_for_the_lock_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path());
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, Ordering::SeqCst);
    });
    let t0 = Instant::now();
    let r = Registry::open_or_create(&path, FP, &KEY, Some(cancel));
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    t.join().unwrap();
    holder.execute_batch("ROLLBACK").unwrap();
    // With a short timeout and no cancel: Locked.
    let mut reg = Registry::open_or_create(&path, FP, &KEY, None).unwrap();
    reg.set_lock_timeout(Duration::from_millis(200));
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(matches!(reg.record_pending(&record("00000000000000e5", "E"), &KEY), Err(Error::Locked { .. })));
    holder.execute_batch("ROLLBACK").unwrap();
    reg.record_pending(&record("00000000000000e5", "E"), &KEY).unwrap();
}

#[test]
fn awkward_floats_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reg.db");
    let mut reg = Registry::open_or_create(&path, FP, &KEY, None).unwrap();
    // Values whose JSON text does not parse back to the same bits without float_roundtrip.
    for (i, d) in
        [0.1 + 0.2, 12.345_678_901_234_567, 2.0 / 3.0, 1e-300 / 3.0, 4.004_004_004_004].iter().enumerate()
    {
        let mut r = record(&format!("{:016x}", 0xf0 + i), "A");
        r.duration_s = Some(*d);
        reg.record_pending(&r, &KEY).unwrap();
    }
    let rep = Registry::open_read_only(&path).unwrap().verify(Some(&KEY)).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert_eq!(rep.exports.len(), 5);
}

#[test]
fn concurrent_creators_all_open_the_same_registry() {
    // What a creator leaves visible before its first commit: a schema-less WAL database.
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half.db");
    let c = Connection::open(&half).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    drop(c);
    assert!(std::fs::metadata(&half).unwrap().len() > 0);
    Registry::open_or_create(&half, FP, &KEY, None).unwrap();
    Registry::open_read_only(&half).unwrap();

    for round in 0..20 {
        let path = dir.path().join(format!("race{round}.db"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Registry::open_or_create(&path, FP, &KEY, None).map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let reg = Registry::open_read_only(&path).unwrap();
        assert!(reg.verify(Some(&KEY)).unwrap().is_ok());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, .. Default::default() })]

    /// Whatever text a caller puts in a row's names, case and reason, the registry either
    /// refuses it with a typed error or stores it so that it verifies and reads back as
    /// written (never a half-written row, never a panic).
    #[test]
    fn any_row_text_is_refused_or_round_trips(
        recipient in "\\PC{0,40}", officer in "\\PC{0,20}", case_ref in proptest::option::of("\\PC{0,30}"),
        reason in proptest::option::of(".{0,60}"), frames in 0i64..1_000_000, dur in proptest::option::of(0.0f64..1e5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.db");
        let mut reg = Registry::open_or_create(&path, FP, &KEY, None).unwrap();
        let mut r = record("00000000000000a1", &recipient);
        r.officer = officer;
        r.case_ref = case_ref;
        r.reason = reason;
        r.frames = frames;
        r.duration_s = dur;
        match reg.record_pending(&r, &KEY) {
            Ok(()) => {
                let rep = reg.verify(Some(&KEY)).unwrap();
                proptest::prop_assert!(rep.is_ok(), "{:?}", rep.problems);
                proptest::prop_assert_eq!(&rep.exports[0].record, &r);
            }
            Err(Error::InvalidField { .. } | Error::SelfApproval { .. }) => {
                proptest::prop_assert_eq!(reg.exports().unwrap().len(), 0);
                proptest::prop_assert!(reg.verify(Some(&KEY)).unwrap().is_ok());
            }
            Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn devices_and_directories_are_not_registries() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    for p in [Path::new("/dev/zero"), Path::new("/dev/null"), dir.path()] {
        let e = Registry::open_or_create(p, FP, &KEY, None).expect_err("refused");
        assert!(matches!(e, Error::NotARegistry { .. }), "{p:?}: {e}");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(matches!(Registry::open_read_only(p), Err(Error::NotARegistry { .. })), "{p:?}");
    }
    assert!(t0.elapsed().as_secs() < 5);
}
