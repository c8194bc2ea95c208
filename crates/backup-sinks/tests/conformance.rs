//! Every sink in this crate must pass the shared contract.

use backup_sinks::{AnySink, FaultPlan, FaultySink, LocalSink, MemorySink};
use backup_testing::sink::sink_conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_sink() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::create("local-conformance", dir.path().join("repo")).unwrap();
    sink_conformance(&sink).await;
}

/// The single-threaded runtime catches blocking calls on the executor (they would hang).
#[tokio::test(flavor = "current_thread")]
async fn local_sink_on_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::open("local-conformance", dir.path()).unwrap();
    sink_conformance(&sink).await;
}

#[tokio::test]
async fn memory_sink() {
    sink_conformance(&MemorySink::new("memory-conformance")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sink_with_fault_layer_without_faults() {
    let dir = tempfile::tempdir().unwrap();
    let local = AnySink::from(LocalSink::open("any-local", dir.path()).unwrap());
    let sink = AnySink::from(FaultySink::new(local, FaultPlan::new()));
    sink_conformance(&sink).await;
    sink_conformance(&AnySink::from(MemorySink::new("any-memory"))).await;
}
