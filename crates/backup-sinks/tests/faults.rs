//! The fault-injection layer does what its plan says, and nothing else.

use std::io;
use std::time::{Duration, Instant};

use backup_sinks::{
    put_bytes, read_object, sha256_of_object, AnySink, Fault, FaultPlan, FaultRule, FaultySink,
    IoOp, MemorySink, Op, Sink, SinkError,
};
use backup_testing::sink::{sha256, test_data};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn put_fails_after_bytes_like_a_full_disk_then_recovers() {
    let sink = FaultySink::new(
        MemorySink::new("mem"),
        FaultPlan::new().once(Fault::PutFailsAfter {
            after_bytes: 1000,
            error: io::ErrorKind::StorageFull,
        }),
    );
    let cancel = CancellationToken::new();
    let data = test_data(5000, 1);
    let err = put_bytes(&sink, "k/1", data.clone(), &cancel)
        .await
        .unwrap_err();
    match &err {
        SinkError::Io { op, source, .. } => {
            assert_eq!(*op, IoOp::Write);
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(
        sink.inner().is_empty(),
        "the inner sink kept a partial object"
    );
    assert_eq!(sink.faults_fired(), 1);
    // The rule fired its one time; the retry succeeds.
    put_bytes(&sink, "k/1", data, &cancel).await.unwrap();
}

#[tokio::test]
async fn put_shorter_than_the_limit_is_unaffected() {
    let sink = FaultySink::new(
        MemorySink::new("mem"),
        FaultPlan::new().always(Fault::PutFailsAfter {
            after_bytes: 1000,
            error: io::ErrorKind::StorageFull,
        }),
    );
    let cancel = CancellationToken::new();
    put_bytes(&sink, "k/exact", test_data(1000, 2), &cancel)
        .await
        .unwrap();
}

#[tokio::test]
async fn get_faults_corrupt_truncate_or_fail_the_stream() {
    let memory = MemorySink::new("mem");
    let cancel = CancellationToken::new();
    let data = test_data(3 << 20, 3);
    put_bytes(&memory, "k/obj", data.clone(), &cancel)
        .await
        .unwrap();

    let flipped = FaultySink::new(
        memory.clone(),
        FaultPlan::new().always(Fault::GetCorruptAt {
            offset: (1 << 20) + 5,
            mask: 0x10,
        }),
    );
    let read = read_object(&flipped, "k/obj", &cancel).await.unwrap();
    assert_eq!(read.len(), data.len());
    let diffs: Vec<_> = (0..data.len()).filter(|&i| read[i] != data[i]).collect();
    assert_eq!(diffs, [(1 << 20) + 5]);
    assert_eq!(read[(1 << 20) + 5], data[(1 << 20) + 5] ^ 0x10);

    let truncated = FaultySink::new(
        memory.clone(),
        FaultPlan::new().always(Fault::GetTruncatedAt { at: 1_234_567 }),
    );
    let (size, hash) = sha256_of_object(&truncated, "k/obj", &cancel)
        .await
        .unwrap();
    assert_eq!(size, 1_234_567);
    assert_eq!(hash, sha256(&data[..1_234_567]));

    let failing = FaultySink::new(
        memory.clone(),
        FaultPlan::new().always(Fault::GetFailsAfter {
            after_bytes: 10,
            error: io::ErrorKind::ConnectionReset,
        }),
    );
    match read_object(&failing, "k/obj", &cancel).await {
        Err(SinkError::Io { op, source, .. }) => {
            assert_eq!(op, IoOp::Read);
            assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn failures_match_operation_and_key_prefix() {
    let sink = FaultySink::new(
        MemorySink::new("mem"),
        FaultPlan::new().with(
            FaultRule::new(Fault::Fails {
                op: Op::Head,
                error: io::ErrorKind::PermissionDenied,
            })
            .for_prefix("secret/")
            .times(2),
        ),
    );
    let cancel = CancellationToken::new();
    assert!(sink.head("public/x", &cancel).await.unwrap().is_none());
    for _ in 0..2 {
        let err = sink.head("secret/x", &cancel).await.unwrap_err();
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }
    assert!(sink.head("secret/x", &cancel).await.unwrap().is_none());
    assert_eq!(sink.faults_fired(), 2);
}

#[tokio::test]
async fn stalls_delay_and_yield_to_cancellation() {
    let sink = FaultySink::new(
        MemorySink::new("mem"),
        FaultPlan::new()
            .always(Fault::Stall {
                op: Op::List,
                duration: Duration::from_millis(50),
            })
            .always(Fault::Stall {
                op: Op::Get,
                duration: Duration::from_secs(3600),
            }),
    );
    let cancel = CancellationToken::new();
    let start = Instant::now();
    sink.list("", &cancel).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(50));

    let start = Instant::now();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        canceller.cancel();
    });
    let result = sink.get("k/x", &cancel).await;
    assert!(matches!(result, Err(SinkError::Cancelled)), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn any_sink_nests_the_fault_layer() {
    let sink = AnySink::from(FaultySink::new(
        AnySink::from(MemorySink::new("mem")),
        FaultPlan::new().always(Fault::Fails {
            op: Op::Delete,
            error: io::ErrorKind::TimedOut,
        }),
    ));
    let cancel = CancellationToken::new();
    put_bytes(&sink, "k/x", &b"data"[..], &cancel)
        .await
        .unwrap();
    let err = sink.delete("k/x", &cancel).await.unwrap_err();
    assert_eq!(err.kind(), backup_sinks::ErrorKind::Temporary);
    assert_eq!(read_object(&sink, "k/x", &cancel).await.unwrap(), b"data");
    assert_eq!(sink.name(), "mem");
}
