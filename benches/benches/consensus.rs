//! Consensus throughput: three in-process nodes with in-memory storage,
//! empty proposals, and 1, 64 or 256 proposers that each wait for their
//! proposal to be applied on the leader before proposing again. All three
//! nodes run on the calling thread; messages pass as values. This is the
//! workload of openraft's `benchmarks/minimal` (in-memory log store, empty
//! state machine, in-process network).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loomcache_consensus::{ConfState, Config, EntryKind, MemStorage, Message, Raft, Role, Storage};

const COMPACT_EVERY: u64 = 100_000;

struct Cluster {
    nodes: Vec<Raft<MemStorage>>,
    inbox: Vec<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let nodes = (1..=3u64)
            .map(|id| {
                let mut cfg = Config::new(id, 0);
                cfg.max_inflight_messages = 1024;
                cfg.max_message_bytes = 4 << 20;
                cfg.max_uncommitted_bytes = 1 << 30;
                Raft::new(cfg, MemStorage::new_with_conf(ConfState::with_voters([1, 2, 3]))).unwrap()
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            inbox: Vec::new(),
        };
        // Pass the start-up vote promise, then elect node 1.
        for _ in 0..10 {
            for n in &mut cluster.nodes {
                n.tick();
            }
        }
        cluster.pump();
        cluster.inbox.clear();
        cluster.nodes[0].campaign();
        while cluster.nodes[0].role() != Role::Leader {
            cluster.pump();
        }
        // Let the term's first entry commit everywhere.
        for _ in 0..4 {
            cluster.pump();
        }
        cluster
    }

    /// Drains every node's Ready and delivers what they sent; answers how
    /// many normal entries the leader applied.
    fn pump(&mut self) -> u64 {
        let mut applied = 0;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            while node.has_ready() {
                let mut rd = node.ready();
                let storage = node.storage_mut();
                storage.append(&rd.entries);
                if let Some(hs) = rd.hard_state {
                    storage.set_hard_state(hs);
                }
                if i == 0 {
                    applied += rd
                        .committed_entries
                        .iter()
                        .filter(|e| e.kind == EntryKind::Normal)
                        .count() as u64;
                }
                self.inbox.append(&mut rd.messages);
                self.inbox.append(&mut rd.persisted_messages);
                node.advance();
            }
            // Bound memory as a real node would: snapshot (here empty) and
            // compact once enough entries are applied.
            let applied = node.applied();
            if applied >= node.storage().first_index() + COMPACT_EVERY {
                let conf = node.conf_state().clone();
                node.storage_mut().create_snapshot(applied, conf, Arc::from(&[][..]));
            }
        }
        for m in self.inbox.drain(..) {
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m).unwrap();
        }
        applied
    }

    /// Runs until `total` proposals are applied with `proposers` in flight.
    fn run(&mut self, proposers: u64, total: u64) -> Duration {
        let payload: Arc<[u8]> = Arc::from(&[][..]);
        let (mut proposed, mut done) = (0u64, 0u64);
        let start = Instant::now();
        while done < total {
            while proposed - done < proposers && proposed < total {
                black_box(self.nodes[0].propose(payload.clone(), 0).unwrap());
                proposed += 1;
            }
            done += self.pump();
        }
        start.elapsed()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("consensus_3_nodes");
    for proposers in [1u64, 64, 256] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("proposers", proposers), &proposers, |b, &p| {
            let mut cluster = Cluster::new();
            b.iter_custom(|iters| cluster.run(p, iters));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
