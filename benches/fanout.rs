//! Micro-benchmarks of the fan-out path: envelope encoding, frame encoding, and the registry's
//! broadcast loop. Run with `cargo bench`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wshub::envelope::{self, Kind};
use wshub::frame::{self, Frame, OpCode};
use wshub::manager::{ConnInfo, ConnectionManager, Sink};
use wshub::outbox::{Outbox, Queued, SendError};
use wshub::CloseReason;

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in [64usize, 1024, 64 * 1024] {
        let text: String = "héllo \"world\"\n".chars().cycle().take(size).collect();
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("envelope", size), &text, |b, t| {
            b.iter(|| envelope::encode(Kind::Message, Some("a1b2c3d4"), black_box(t)))
        });
        g.bench_with_input(BenchmarkId::new("binary_frame", size), &text, |b, t| {
            b.iter(|| frame::encode(OpCode::Binary, black_box(t.as_bytes())))
        });
    }
    g.finish();
}

/// One compression of a chat message (what a publication costs once, whatever the
/// recipients) and one inflation (what a compressed client message costs), by level.
fn deflate(c: &mut Criterion) {
    use wshub::frame::deflate;
    let mut g = c.benchmark_group("deflate");
    for size in [300usize, 1500] {
        let mut text = String::from(r#"{"type":"message","group":"general","message":{"lines":["#);
        let mut i = 0;
        while text.len() < size {
            text.push_str(&format!(
                r#"{{"user":"user-{}","text":"the deploy after lunch looks good, thanks {i}"}},"#,
                i % 13
            ));
            i += 1;
        }
        text.push_str("{}]}}");
        g.throughput(Throughput::Bytes(text.len() as u64));
        for level in [1u32, 3, 6] {
            let s = deflate::Settings {
                threshold: 1,
                level,
            };
            g.bench_with_input(
                BenchmarkId::new(format!("compress_level{level}"), size),
                &text,
                |b, t| b.iter(|| deflate::compress(OpCode::Text, black_box(t.as_bytes()), &s, 15)),
            );
        }
        let s = deflate::Settings::default();
        let f = deflate::compress(OpCode::Text, text.as_bytes(), &s, 15).unwrap();
        let (_, packed) = frame::split_server_frame(&f).unwrap();
        let packed = packed.to_vec();
        g.bench_with_input(BenchmarkId::new("inflate", size), &packed, |b, p| {
            b.iter(|| deflate::inflate(black_box(p), 1 << 20))
        });
    }
    g.finish();
}

/// A sink that only counts: isolates the registry's own cost.
#[derive(Default)]
struct Counting(AtomicU64);

impl Sink for Counting {
    fn try_send(&self, _frame: &Frame) -> Result<Queued, SendError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Queued::Done)
    }
    fn close(&self, _reason: CloseReason) {}
    fn is_open(&self) -> bool {
        true
    }
}

fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast");
    let frame = envelope::encode(
        Kind::Message,
        Some("a1b2c3d4"),
        "a 64-byte message, more or less, as a chat line would be",
    );
    for n in [1_000usize, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        let m = ConnectionManager::new();
        for _ in 0..n {
            m.add(Arc::new(Counting::default()), ConnInfo::now(None));
        }
        g.bench_function(BenchmarkId::new("registry", n), |b| {
            b.iter(|| m.broadcast(black_box(&frame)))
        });

        // Real outboxes (no socket attached: frames queue for the writer task), drained by
        // taking each queue between rounds.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let m = ConnectionManager::new();
        let boxes: Vec<Arc<Outbox>> = (0..n).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for o in &boxes {
            m.add(o.clone(), ConnInfo::now(None));
        }
        g.bench_function(BenchmarkId::new("outboxes_16_frames", n), |b| {
            b.iter(|| {
                for _ in 0..16 {
                    m.broadcast(black_box(&frame));
                }
                rt.block_on(async {
                    let mut batch = std::collections::VecDeque::new();
                    for o in &boxes {
                        o.take(&mut batch).await;
                        o.release();
                        batch.clear();
                    }
                });
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encoding, deflate, broadcast);
criterion_main!(benches);
