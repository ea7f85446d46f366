//! The cost of the audit trail: Encrypt of 1 KiB under concurrency (64 encrypts in flight on a
//! multi-thread runtime) with a null sink and with the file sink (hash chain, group commit, one
//! fsync per batch). The ratio of the two throughputs is what auditing costs.
//!
//! The trail is written under the target directory (a real disk), not /tmp, which may be a
//! memory file system where fsync costs nothing.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kagi::audit::{AuditConfig, AuditSink, FileSink, NullSink};
use kagi::crypto::BackendKind;
use kagi::keystore::clock::SystemClock;
use kagi::keystore::operations::EncryptionAlgorithm;
use kagi::keystore::{
    CreateKeyRequest, EncryptionContext, Keystore, OpContext, Partition, RootKeySource,
};

const IN_FLIGHT: usize = 64;

fn bench_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is set for benches: a directory inside the target directory.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn audit_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let backend = BackendKind::AwsLc.backend();
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for sink_name in ["null", "file"] {
        let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
        Keystore::init(backend, dir.path(), &RootKeySource::File).expect("init");
        let file_sink = (sink_name == "file").then(|| {
            Arc::new(FileSink::open(dir.path(), &AuditConfig::default(), backend).expect("trail"))
        });
        let sink: Arc<dyn AuditSink> = match &file_sink {
            Some(sink) => Arc::clone(sink) as Arc<dyn AuditSink>,
            None => Arc::new(NullSink),
        };
        let keystore = Arc::new(
            Keystore::open(
                backend,
                dir.path(),
                &RootKeySource::File,
                Arc::new(SystemClock),
                sink,
                Partition::default(),
            )
            .expect("open"),
        );
        let ctx = Arc::new(OpContext {
            principal: "bench".into(),
            source: "bench".into(),
            request_id: "b".into(),
        });
        let key = runtime
            .block_on(keystore.create_key(&ctx, CreateKeyRequest::default()))
            .expect("create")
            .record
            .id;
        let key = Arc::new(key);
        let context: Arc<EncryptionContext> =
            Arc::new([("tenant".to_owned(), "acme".to_owned())].into_iter().collect());
        let plaintext = Arc::new(vec![0x42u8; 1024]);
        group.bench_function(format!("encrypt_1k_x{IN_FLIGHT}_{sink_name}_sink"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..IN_FLIGHT {
                        let (keystore, ctx, key, context, plaintext) = (
                            Arc::clone(&keystore),
                            Arc::clone(&ctx),
                            Arc::clone(&key),
                            Arc::clone(&context),
                            Arc::clone(&plaintext),
                        );
                        tasks.spawn(async move {
                            keystore
                                .encrypt(
                                    &ctx,
                                    &key,
                                    &plaintext,
                                    &context,
                                    EncryptionAlgorithm::SymmetricDefault,
                                )
                                .await
                                .expect("encrypt")
                        });
                    }
                    while let Some(result) = tasks.join_next().await {
                        result.expect("task");
                    }
                })
            })
        });
        if let Some(sink) = file_sink {
            let stats = sink.stats();
            println!(
                "file sink: {} records in {} batches ({:.1} records per fsync)",
                stats.records,
                stats.batches,
                stats.records as f64 / stats.batches.max(1) as f64
            );
        }
    }
    group.finish();
}

criterion_group!(benches, audit_benches);
criterion_main!(benches);
