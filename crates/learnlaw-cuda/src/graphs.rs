//! Which recorded step sequences become CUDA graphs: the bookkeeping of `Engine::run_steps`,
//! apart from the driver calls (lib.rs), so it is unit-tested without a GPU.
//!
//! A sequence is keyed by its exact launches (every kernel parameter: pointers and scalars,
//! compared as bytes), so replaying a cached graph issues exactly the launches it replaces and
//! results are bit-identical to launching them one by one. A sequence is launched directly the
//! first time it is seen, captured into a graph the second time, and replayed from then on.

/// Recorded step sequences shorter than this are launched directly (a graph would not pay).
pub(crate) const GRAPH_MIN_STEPS: usize = 8;
/// Graphs kept (an unroll has a few distinct sequences: the forward pass and the adjoint pass,
/// each in one or two buffer parities), and sequences remembered as seen once.
const GRAPH_CACHE: usize = 8;
const SEEN_CACHE: usize = 32;

/// What happened to the step sequences `run_steps` recorded (for benchmarks and diagnosis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Sequences replayed from a cached graph (the capture launches included).
    pub replays: u64,
    /// Graphs captured and instantiated.
    pub captures: u64,
    /// Sequences launched step by step (first sightings, short ones).
    pub direct: u64,
    /// Captures the driver refused; those sequences were launched step by step instead.
    pub capture_failures: u64,
}

/// What to do with a recorded sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Launch its steps one by one.
    Direct,
    /// Capture it into a graph, launch that, then `insert` it (or `capture_failed`).
    Capture,
    /// Launch the cached graph `front()`.
    Replay,
}

/// The cached graphs (`G`: the driver's graph; anything in tests), most recently used first.
pub(crate) struct GraphCache<G> {
    graphs: Vec<(Vec<u8>, G)>,
    /// Hashes of sequences launched directly once.
    seen: Vec<u64>,
    pub(crate) stats: GraphStats,
}

impl<G> Default for GraphCache<G> {
    fn default() -> Self {
        GraphCache { graphs: Vec::new(), seen: Vec::new(), stats: GraphStats::default() }
    }
}

fn hash(key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl<G> GraphCache<G> {
    /// Decides for a sequence of `steps` launches whose parameters are the bytes `key`, and counts
    /// it (a capture counts when `insert`ed). On `Replay`, the graph is moved to the front.
    pub(crate) fn plan(&mut self, steps: usize, key: &[u8]) -> Plan {
        if steps < GRAPH_MIN_STEPS {
            self.stats.direct += 1;
            return Plan::Direct;
        }
        if let Some(i) = self.graphs.iter().position(|(k, _)| k == key) {
            let entry = self.graphs.remove(i);
            self.graphs.insert(0, entry);
            self.stats.replays += 1;
            return Plan::Replay;
        }
        let h = hash(key);
        if self.seen.contains(&h) {
            return Plan::Capture;
        }
        self.seen.insert(0, h);
        self.seen.truncate(SEEN_CACHE);
        self.stats.direct += 1;
        Plan::Direct
    }

    /// The graph to launch after `Plan::Replay`.
    pub(crate) fn front(&self) -> Option<&G> {
        self.graphs.first().map(|(_, g)| g)
    }

    /// Caches the graph captured after `Plan::Capture` (evicting the least recently used).
    pub(crate) fn insert(&mut self, key: Vec<u8>, graph: G) {
        self.stats.captures += 1;
        self.stats.replays += 1;
        self.graphs.insert(0, (key, graph));
        self.graphs.truncate(GRAPH_CACHE);
    }

    /// After `Plan::Capture` failed (the steps were then launched directly): counted, and the
    /// sequence starts over as unseen.
    pub(crate) fn capture_failed(&mut self, key: &[u8]) {
        let h = hash(key);
        self.seen.retain(|&s| s != h);
        self.stats.capture_failures += 1;
        self.stats.direct += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u8) -> Vec<u8> {
        vec![tag; 64]
    }

    /// Runs `plan` like the engine does, with graphs that are just the key's tag.
    fn run(cache: &mut GraphCache<u8>, steps: usize, tag: u8) -> Plan {
        let k = key(tag);
        let plan = cache.plan(steps, &k);
        match plan {
            Plan::Capture => cache.insert(k, tag),
            Plan::Replay => assert_eq!(cache.front(), Some(&tag), "replayed the wrong graph"),
            Plan::Direct => {}
        }
        plan
    }

    #[test]
    fn a_sequence_is_direct_then_captured_then_replayed() {
        let mut c = GraphCache::default();
        // Two sequences alternating (an unroll whose buffers swap parity every call).
        let got: Vec<Plan> = [1, 2, 1, 2, 1, 2, 1].iter().map(|&t| run(&mut c, 100, t)).collect();
        use Plan::*;
        assert_eq!(got, [Direct, Direct, Capture, Capture, Replay, Replay, Replay]);
        assert_eq!(c.stats, GraphStats { replays: 5, captures: 2, direct: 2, capture_failures: 0 });
    }

    #[test]
    fn short_sequences_stay_direct() {
        let mut c = GraphCache::default();
        for _ in 0..5 {
            assert_eq!(run(&mut c, GRAPH_MIN_STEPS - 1, 7), Plan::Direct);
        }
        assert_eq!(c.stats.captures, 0);
        assert_eq!(run(&mut c, GRAPH_MIN_STEPS, 7), Plan::Direct);
        assert_eq!(run(&mut c, GRAPH_MIN_STEPS, 7), Plan::Capture);
    }

    #[test]
    fn the_least_recently_used_graph_is_evicted() {
        let mut c = GraphCache::default();
        let tags: Vec<u8> = (0..=GRAPH_CACHE as u8).collect();
        for &t in &tags {
            run(&mut c, 100, t);
            assert_eq!(run(&mut c, 100, t), Plan::Capture);
        }
        // GRAPH_CACHE + 1 graphs were captured: the first one is gone, the last ones replay.
        assert_eq!(run(&mut c, 100, tags[GRAPH_CACHE]), Plan::Replay);
        assert_eq!(run(&mut c, 100, tags[1]), Plan::Replay);
        assert_eq!(run(&mut c, 100, tags[0]), Plan::Capture, "evicted, still remembered as seen");
    }

    #[test]
    fn a_failed_capture_starts_over() {
        let mut c: GraphCache<u8> = GraphCache::default();
        assert_eq!(c.plan(100, &key(3)), Plan::Direct);
        assert_eq!(c.plan(100, &key(3)), Plan::Capture);
        c.capture_failed(&key(3));
        assert_eq!(c.plan(100, &key(3)), Plan::Direct);
        assert_eq!(c.plan(100, &key(3)), Plan::Capture);
        assert_eq!(c.stats, GraphStats { replays: 0, captures: 0, direct: 3, capture_failures: 1 });
    }
}
