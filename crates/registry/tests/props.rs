//! Property tests: mark id parsing and export rows (whatever the names, a row is either
//! refused with a typed error or stored, read back and verified exactly as given).

use proptest::prelude::*;
use tracemark_registry::{now_utc, parse_mark_id, Error, ExportRecord, ExportStatus, Registry};

const KEY: [u8; 32] = [9u8; 32];

fn record(
    mark: u64,
    recipient: String,
    officer: String,
    approved_by: String,
    case: Option<String>,
) -> ExportRecord {
    ExportRecord {
        mark_id: format!("{mark:016x}"),
        recipient,
        officer,
        approved_by,
        case_ref: case,
        reason: Some("property test".into()),
        source_path: "/src.avi".into(),
        source_sha256: "aa".repeat(32),
        output_path: "/out.mp4".into(),
        output_sha256: "bb".repeat(32),
        frames: 10,
        duration_s: Some(0.4),
        width: 64,
        height: 48,
        embed_params: "{}".into(),
        key_fingerprint: "fp".into(),
        created_at: now_utc(),
        approval: None,
    }
}

/// Plain names most of the time (so rows are stored), any text otherwise.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[A-Za-z][A-Za-z .'-]{0,20}", 1 => "\\PC{0,24}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Exactly 16 lowercase hex digits parse, to the value they spell; nothing else does.
    #[test]
    fn mark_ids_parse_strictly(s in "\\PC{0,20}", id in any::<u64>()) {
        let strict = s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        prop_assert_eq!(parse_mark_id(&s).is_ok(), strict);
        let (lower, upper) = (format!("{id:016x}"), format!("{id:016X}"));
        prop_assert_eq!(parse_mark_id(&lower).unwrap(), id);
        // Upper-case digits are refused (an id has one spelling), unless there are none.
        prop_assert_eq!(parse_mark_id(&upper).is_ok(), upper == lower);
    }

    /// Any names: refused with a typed field error, or stored and read back unchanged, and
    /// the registry still verifies.
    #[test]
    fn rows_round_trip_or_are_refused(
        mark in 1u64.., recipient in name(), officer in name(), approved_by in name(),
        case in proptest::option::of("\\PC{0,12}"),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.db");
        let mut reg = Registry::open_or_create(&path, "fp", &KEY, None).unwrap();
        let rec = record(mark, recipient, officer, approved_by, case);
        match reg.record_pending(&rec, &KEY) {
            Err(Error::InvalidField { .. } | Error::SelfApproval { .. }) => {
                prop_assert!(reg.exports().unwrap().is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
            Ok(()) => {
                reg.mark_delivered(&rec.mark_id, &KEY).unwrap();
                let back = reg.find(&rec.mark_id).unwrap().expect("stored");
                prop_assert_eq!(&back.record, &rec);
                prop_assert_eq!(back.status, ExportStatus::Delivered);
                let rep = reg.verify(Some(&KEY)).unwrap();
                prop_assert!(rep.is_ok(), "{:?}", rep.problems);
            }
        }
    }
}
