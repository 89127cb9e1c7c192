//! Known-answer tests for the history builder and the linearizability
//! checker.

use nokv_checker::{
    check, check_keyed, check_single, Event, History, HistoryBuilder, HistoryError, Keyed,
    Operation, Outcome, Register, RegisterInput, RegisterOutput, SearchBudget, Verdict,
};

type RegOp = Operation<RegisterInput, RegisterOutput>;

fn v(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn op(
    process: u64,
    call: u64,
    ret: u64,
    input: RegisterInput,
    outcome: Outcome<RegisterOutput>,
) -> RegOp {
    Operation {
        process,
        call_ns: call,
        return_ns: ret,
        input,
        outcome,
    }
}

fn write(p: u64, call: u64, ret: u64, value: &str) -> RegOp {
    op(
        p,
        call,
        ret,
        RegisterInput::Write(v(value)),
        Outcome::Ok(RegisterOutput::Ok),
    )
}

fn read(p: u64, call: u64, ret: u64, value: Option<&str>) -> RegOp {
    op(
        p,
        call,
        ret,
        RegisterInput::Read,
        Outcome::Ok(RegisterOutput::Value(value.map(str::to_string))),
    )
}

fn cas(p: u64, call: u64, ret: u64, from: Option<&str>, to: &str, applied: bool) -> RegOp {
    let output = if applied {
        RegisterOutput::Ok
    } else {
        RegisterOutput::CasFailed
    };
    op(
        p,
        call,
        ret,
        RegisterInput::Cas {
            from: from.map(str::to_string),
            to: v(to),
        },
        Outcome::Ok(output),
    )
}

fn with_outcome(mut o: RegOp, outcome: Outcome<RegisterOutput>) -> RegOp {
    o.outcome = outcome;
    o
}

fn linearizable(ops: Vec<RegOp>) -> bool {
    let history = History::new(ops).expect("valid history");
    let result = check(&Register, &history, &SearchBudget::unlimited());
    assert!(!matches!(result, nokv_checker::CheckResult::Unknown(_)));
    result.is_linearizable()
}

#[test]
fn empty_history_is_linearizable() {
    assert!(linearizable(vec![]));
}

#[test]
fn sequential_history_is_linearizable() {
    assert!(linearizable(vec![
        read(1, 0, 1, None),
        write(1, 2, 3, "a"),
        read(2, 4, 5, Some("a")),
        write(2, 6, 7, "b"),
        read(1, 8, 9, Some("b")),
    ]));
}

#[test]
fn concurrent_writes_and_reads_that_can_be_ordered() {
    // Two overlapping writes; reads during and after see a consistent order
    // (b then a).
    assert!(linearizable(vec![
        write(1, 0, 100, "a"),
        write(2, 10, 50, "b"),
        read(3, 20, 60, Some("b")),
        read(4, 70, 80, Some("a")),
        read(5, 110, 120, Some("a")),
    ]));
    // A read overlapping a write may see either value.
    assert!(linearizable(vec![
        write(1, 0, 10, "a"),
        write(2, 20, 40, "b"),
        read(3, 25, 30, Some("a")),
        read(4, 26, 35, Some("b")),
    ]));
}

#[test]
fn cas_chain_is_linearizable() {
    assert!(linearizable(vec![
        cas(1, 0, 10, None, "a", true),
        cas(2, 5, 15, Some("a"), "b", true),
        cas(3, 6, 16, Some("a"), "c", false),
        cas(1, 20, 30, Some("b"), "c", true),
        read(2, 40, 50, Some("c")),
    ]));
}

#[test]
fn stale_read_after_completed_write_is_not_linearizable() {
    let history = History::new(vec![
        write(1, 0, 10, "a"),
        write(1, 20, 30, "b"),
        read(2, 40, 50, Some("a")),
    ])
    .expect("valid");
    let summary = check_single(&Register, &history, &SearchBudget::unlimited());
    assert_eq!(summary.verdict, Verdict::NotLinearizable);
    let anomaly = &summary.anomalies[0];
    assert_eq!(anomaly.linearized_prefix.len(), 2);
    assert_eq!(anomaly.state_after_prefix, format!("{:?}", v("b")));
    assert_eq!(
        anomaly.blocked_by.as_ref().map(|o| o.input.clone()),
        Some(RegisterInput::Read)
    );
    let text = summary.to_string();
    assert!(text.contains("NOT LINEARIZABLE"), "{text}");
    assert!(text.contains("Read"), "{text}");
}

#[test]
fn reads_observing_impossible_order_are_not_linearizable() {
    // Writes of a and b overlap, so either order is fine, but one reader
    // sees a then b while another sees b then a, after both writes ended.
    assert!(!linearizable(vec![
        write(1, 0, 10, "a"),
        write(2, 0, 10, "b"),
        read(3, 20, 30, Some("a")),
        read(3, 40, 50, Some("b")),
    ]));
    assert!(!linearizable(vec![
        write(1, 0, 100, "a"),
        write(2, 0, 100, "b"),
        read(3, 10, 20, Some("a")),
        read(3, 30, 40, Some("b")),
        read(4, 10, 20, Some("b")),
        read(4, 30, 40, Some("a")),
    ]));
}

#[test]
fn lost_write_is_not_linearizable() {
    // A CAS chain where an acknowledged write vanishes.
    assert!(!linearizable(vec![
        write(1, 0, 10, "a"),
        cas(2, 20, 30, Some("a"), "b", true),
        read(3, 40, 50, Some("a")),
    ]));
    assert!(!linearizable(vec![
        write(1, 0, 10, "a"),
        write(2, 20, 30, "b"),
        read(3, 40, 50, None),
    ]));
}

#[test]
fn unknown_write_later_read_is_linearizable() {
    assert!(linearizable(vec![
        write(1, 0, 10, "a"),
        with_outcome(write(2, 20, 30, "b"), Outcome::Unknown),
        read(3, 1000, 1010, Some("b")),
        read(3, 1020, 1030, Some("b")),
    ]));
}

#[test]
fn unknown_write_never_observed_is_linearizable() {
    assert!(linearizable(vec![
        write(1, 0, 10, "a"),
        with_outcome(write(2, 20, 30, "b"), Outcome::Unknown),
        read(3, 1000, 1010, Some("a")),
        read(3, 1020, 1030, Some("a")),
    ]));
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call() {
    assert!(!linearizable(vec![
        read(3, 0, 10, Some("b")),
        with_outcome(write(2, 20, 30, "b"), Outcome::Unknown),
    ]));
}

#[test]
fn read_of_value_never_written_is_not_linearizable() {
    assert!(!linearizable(vec![
        write(1, 0, 10, "a"),
        with_outcome(write(2, 20, 30, "b"), Outcome::Unknown),
        read(3, 40, 50, Some("zzz")),
    ]));
}

#[test]
fn fail_ops_are_ignored() {
    let history = History::new(vec![
        write(1, 0, 10, "a"),
        with_outcome(write(2, 20, 30, "b"), Outcome::Fail),
        read(3, 40, 50, Some("a")),
    ])
    .expect("valid");
    let summary = check_single(&Register, &history, &SearchBudget::unlimited());
    assert_eq!(summary.verdict, Verdict::Linearizable);
    assert_eq!(
        (
            summary.counts.ok,
            summary.counts.fail,
            summary.counts.unknown
        ),
        (2, 1, 0)
    );
    // A Fail op whose value is read is an anomaly: it must not have happened.
    assert!(!linearizable(vec![
        write(1, 0, 10, "a"),
        with_outcome(write(2, 20, 30, "b"), Outcome::Fail),
        read(3, 40, 50, Some("b")),
    ]));
}

#[test]
fn keyed_history_is_checked_per_key() {
    let keyed = |key: &str, o: RegOp| Operation {
        process: o.process,
        call_ns: o.call_ns,
        return_ns: o.return_ns,
        input: Keyed {
            key: key.to_string(),
            input: o.input,
        },
        outcome: o.outcome,
    };
    // Per key both are fine; as one register, "/y" reading None after the
    // "/x" write would be a violation.
    let history = History::new(vec![
        keyed("/x", write(1, 0, 10, "a")),
        keyed("/y", read(2, 20, 30, None)),
        keyed("/x", read(2, 40, 50, Some("a"))),
        keyed("/z", write(3, 0, 10, "q")),
        keyed("/z", read(3, 20, 30, Some("stale"))),
    ])
    .expect("valid");
    let summary = check_keyed(&Register, &history, &SearchBudget::unlimited());
    assert_eq!(summary.keys_checked, 3);
    assert_eq!(summary.verdict, Verdict::NotLinearizable);
    assert_eq!(summary.anomalies.len(), 1);
    assert_eq!(summary.anomalies[0].key.as_deref(), Some("/z"));
    // The summary round-trips through JSON.
    let json = serde_json::to_string(&summary).expect("serialize");
    let back: nokv_checker::Summary<RegisterInput, RegisterOutput> =
        serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, summary);
}

#[test]
fn budget_exhaustion_reports_unknown() {
    let mut ops = Vec::new();
    for p in 0..12 {
        ops.push(write(p, 0, 100, &format!("v{p}")));
    }
    ops.push(read(99, 200, 210, Some("never")));
    let history = History::new(ops).expect("valid");
    let budget = SearchBudget {
        max_steps: Some(50),
        max_duration: None,
    };
    let summary = check_single(&Register, &history, &budget);
    assert_eq!(summary.verdict, Verdict::Unknown);
    assert_eq!(summary.undecided.len(), 1);
}

#[test]
fn builder_pairs_events() {
    let mut b = HistoryBuilder::new();
    b.invoke(1, 0, RegisterInput::Write(v("a")))
        .expect("invoke");
    b.invoke(2, 5, RegisterInput::Read).expect("invoke");
    b.complete(2, 8, Outcome::Ok(RegisterOutput::Value(None)))
        .expect("complete");
    b.complete(1, 10, Outcome::Ok(RegisterOutput::Ok))
        .expect("complete");
    b.invoke(3, 12, RegisterInput::Read).expect("invoke"); // never completes
    let history = b.finish().expect("finish");
    assert_eq!(history.len(), 3);
    assert_eq!(history.ops()[0].process, 1);
    assert_eq!(history.ops()[2].outcome, Outcome::Unknown);
    assert!(check(&Register, &history, &SearchBudget::default()).is_linearizable());
}

#[test]
fn builder_rejects_completion_without_invoke() {
    let mut b: HistoryBuilder<RegisterInput, RegisterOutput> = HistoryBuilder::new();
    let err = b.complete(7, 3, Outcome::Fail).expect_err("must reject");
    assert!(matches!(
        err,
        HistoryError::CompletionWithoutInvoke { process: 7, .. }
    ));
    assert!(err.to_string().contains("without an open invoke"));
}

#[test]
fn builder_rejects_double_invoke() {
    let mut b: HistoryBuilder<RegisterInput, RegisterOutput> = HistoryBuilder::new();
    b.invoke(1, 0, RegisterInput::Read).expect("first invoke");
    let err = b
        .invoke(1, 5, RegisterInput::Read)
        .expect_err("must reject");
    assert!(matches!(
        err,
        HistoryError::DoubleInvoke {
            process: 1,
            open_since_ns: 0,
            time_ns: 5,
            ..
        }
    ));
}

#[test]
fn history_rejects_return_before_call() {
    let err = History::new(vec![write(1, 10, 5, "a")]).expect_err("must reject");
    assert!(matches!(err, HistoryError::ReturnBeforeCall { .. }));
    let mut b: HistoryBuilder<RegisterInput, RegisterOutput> = HistoryBuilder::new();
    b.invoke(1, 10, RegisterInput::Read).expect("invoke");
    assert!(b.complete(1, 5, Outcome::Unknown).is_err());
}

#[test]
fn jsonl_events_round_trip_and_errors() {
    let events: Vec<Event<RegisterInput, RegisterOutput>> = vec![
        Event::Invoke {
            process: 1,
            time_ns: 0,
            input: RegisterInput::Cas {
                from: None,
                to: v("a"),
            },
        },
        Event::Complete {
            process: 1,
            time_ns: 4,
            outcome: Outcome::Ok(RegisterOutput::Ok),
        },
        Event::Invoke {
            process: 2,
            time_ns: 5,
            input: RegisterInput::Read,
        },
        Event::Complete {
            process: 2,
            time_ns: 9,
            outcome: Outcome::Ok(RegisterOutput::Value(v("a"))),
        },
    ];
    let mut text = String::new();
    for e in &events {
        text.push_str(&serde_json::to_string(e).expect("serialize"));
        text.push('\n');
    }
    let history: History<RegisterInput, RegisterOutput> =
        History::from_jsonl_events(text.as_bytes()).expect("parse");
    assert_eq!(history, History::from_events(events).expect("build"));
    assert!(check(&Register, &history, &SearchBudget::default()).is_linearizable());

    let bad = format!("{text}{{\"type\":\"bogus\"}}\n");
    let err = History::<RegisterInput, RegisterOutput>::from_jsonl_events(bad.as_bytes())
        .expect_err("must reject");
    assert!(matches!(err, HistoryError::Parse { line: 5, .. }), "{err}");

    // A serialized history with return < call is rejected on load.
    let json =
        r#"[{"process":1,"call_ns":9,"return_ns":1,"input":"read","outcome":{"status":"fail"}}]"#;
    assert!(serde_json::from_str::<History<RegisterInput, RegisterOutput>>(json).is_err());
}

#[test]
fn anomaly_display_shows_prefix_and_failure_point() {
    let history = History::new(vec![
        write(1, 0, 10, "a"),
        write(2, 0, 10, "b"),
        read(3, 20, 30, Some("a")),
        read(3, 40, 50, Some("b")),
    ])
    .expect("valid");
    let summary = check_single(&Register, &history, &SearchBudget::unlimited());
    let text = summary.to_string();
    assert!(text.contains("linearized 3 operation(s)"), "{text}");
    assert!(text.contains("state after prefix: Some(\"a\")"), "{text}");
    assert!(
        text.contains("cannot linearize before this return: p3 [40 .. 50]"),
        "{text}"
    );
}
