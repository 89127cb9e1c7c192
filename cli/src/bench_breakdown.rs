//! `nokv bench create|stat --breakdown`: where a run's time went, stage by
//! stage, on every node the client was given.
//!
//! Each replica keeps one histogram per stage of the write and read paths
//! (`nokv_meta_stage_seconds`, described in `nokv_meta_node::metrics::Stages`).
//! The bench reads them from every endpoint just before and just after the
//! timed run (`NodeStatus` with `stages`), subtracts, and prints per node and
//! shard the count, mean, p50 and p99 of each stage, beside the latency the
//! client measured. Percentiles come from the histogram buckets (each 1.5
//! times the one below), interpolated within the bucket: good to about a
//! quarter of the value, enough to see which stage dominates.

use std::collections::BTreeMap;

use anyhow::Context;
use hdrhistogram::Histogram;
use nokv_proto::pb;
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

/// One stage's histogram on one replica.
#[derive(Clone, Debug, Default)]
struct StageHist {
    count: u64,
    sum_seconds: f64,
    upper_bounds: Vec<f64>,
    cumulative: Vec<u64>,
}

impl StageHist {
    fn of(s: &pb::StageLatency) -> StageHist {
        StageHist {
            count: s.count,
            sum_seconds: s.sum_seconds,
            upper_bounds: s.upper_bounds.clone(),
            cumulative: s.cumulative_counts.clone(),
        }
    }

    /// `self - before` (the samples taken in between). A node that
    /// restarted in between has smaller counts: the difference saturates
    /// at zero.
    fn minus(&self, before: &StageHist) -> StageHist {
        let same_layout = before.upper_bounds == self.upper_bounds;
        StageHist {
            count: self.count.saturating_sub(before.count),
            sum_seconds: (self.sum_seconds - before.sum_seconds).max(0.0),
            upper_bounds: self.upper_bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let b = if same_layout {
                        before.cumulative.get(i).copied().unwrap_or(0)
                    } else {
                        0
                    };
                    c.saturating_sub(b)
                })
                .collect(),
        }
    }

    fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum_seconds * 1000.0 / self.count as f64
    }

    /// The `q` quantile in milliseconds, interpolated within its bucket;
    /// past the last bound, the last bound.
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = (q * self.count as f64).ceil().max(1.0);
        let mut below_count = 0u64;
        let mut below_bound = 0.0;
        for (bound, cumulative) in self.upper_bounds.iter().zip(&self.cumulative) {
            if *cumulative as f64 >= rank {
                let in_bucket = (cumulative - below_count).max(1) as f64;
                let fraction = (rank - below_count as f64) / in_bucket;
                return (below_bound + (bound - below_bound) * fraction) * 1000.0;
            }
            below_count = *cumulative;
            below_bound = *bound;
        }
        below_bound * 1000.0
    }
}

/// What one node answered: its id, and per shard its role and stages.
#[derive(Clone, Debug, Default)]
struct NodeStages {
    node_id: u64,
    shards: BTreeMap<u32, (pb::Role, Vec<(String, StageHist)>)>,
}

/// The stage histograms of every endpoint at one moment.
pub struct Snapshot {
    nodes: BTreeMap<String, NodeStages>,
}

/// Reads the stage histograms of every endpoint of `client`. An endpoint
/// that does not answer is left out (and said so on stderr).
pub async fn take(client: &nokv_client::Client) -> Snapshot {
    let mut nodes = BTreeMap::new();
    for endpoint in client.endpoints().to_vec() {
        match client.node_stages(&endpoint).await {
            Ok(status) => {
                let shards = status
                    .shards
                    .iter()
                    .map(|s| {
                        let stages = s
                            .stages
                            .iter()
                            .map(|st| (st.stage.clone(), StageHist::of(st)))
                            .collect();
                        (s.shard, (s.role(), stages))
                    })
                    .collect();
                nodes.insert(
                    endpoint,
                    NodeStages {
                        node_id: status.node_id,
                        shards,
                    },
                );
            }
            Err(e) => eprintln!("breakdown: {endpoint} did not answer: {e}"),
        }
    }
    Snapshot { nodes }
}

fn role_name(role: pb::Role) -> &'static str {
    match role {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Candidate => "candidate",
        pb::Role::Learner => "learner",
        pb::Role::Shutdown => "shut down",
        pb::Role::Unknown => "unknown",
    }
}

/// One printed row.
struct Row {
    node_id: u64,
    endpoint: String,
    shard: u32,
    role: &'static str,
    stage: String,
    hist: StageHist,
}

/// Every (node, shard, stage) with samples taken between `before` and
/// `after`, as the difference of the two histograms.
fn rows_between(before: &Snapshot, after: &Snapshot) -> Vec<Row> {
    let mut rows = Vec::new();
    for (endpoint, node) in &after.nodes {
        let old = before.nodes.get(endpoint);
        for (shard, (role, stages)) in &node.shards {
            let old_stages = old.and_then(|n| n.shards.get(shard)).map(|(_, s)| s);
            for (stage, hist) in stages {
                let prior = old_stages
                    .and_then(|s| s.iter().find(|(name, _)| name == stage))
                    .map(|(_, h)| h.clone())
                    .unwrap_or_default();
                let delta = hist.minus(&prior);
                if delta.count == 0 {
                    continue;
                }
                rows.push(Row {
                    node_id: node.node_id,
                    endpoint: endpoint.clone(),
                    shard: *shard,
                    role: role_name(*role),
                    stage: stage.clone(),
                    hist: delta,
                });
            }
        }
    }
    rows
}

/// Prints what happened between `before` and `after`, beside the client's
/// own latency histogram (microseconds) of the run.
pub fn print(
    before: &Snapshot,
    after: &Snapshot,
    client_hist: &Histogram<u64>,
    g: &GlobalArgs,
) -> anyhow::Result<()> {
    let rows = rows_between(before, after);
    let client_ms = |q: f64| client_hist.value_at_quantile(q) as f64 / 1000.0;
    if g.json {
        let stages: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "node_id": r.node_id,
                    "endpoint": r.endpoint,
                    "shard": r.shard,
                    "role": r.role,
                    "stage": r.stage,
                    "count": r.hist.count,
                    "mean_ms": r.hist.mean_ms(),
                    "p50_ms": r.hist.quantile_ms(0.5),
                    "p99_ms": r.hist.quantile_ms(0.99),
                })
            })
            .collect();
        print_json(&json!({
            "breakdown": {
                "client": {
                    "count": client_hist.len(),
                    "mean_ms": client_hist.mean() / 1000.0,
                    "p50_ms": client_ms(0.5),
                    "p99_ms": client_ms(0.99),
                },
                "stages": stages,
            }
        }));
        return Ok(());
    }
    outln!("breakdown (server stages from each node's histograms; percentiles within a bucket of 1.5x):");
    outln!(
        "  {:<34} {:>9} {:>9} {:>9} {:>9}",
        "where",
        "count",
        "mean ms",
        "p50 ms",
        "p99 ms"
    );
    outln!(
        "  {:<34} {:>9} {:>9.3} {:>9.3} {:>9.3}",
        "client (request to answer)",
        client_hist.len(),
        client_hist.mean() / 1000.0,
        client_ms(0.5),
        client_ms(0.99)
    );
    let mut last = None;
    for r in &rows {
        let key = (r.node_id, r.shard);
        if last != Some(key) {
            outln!(
                "  node {} ({}), shard {}, {}:",
                r.node_id,
                r.endpoint,
                r.shard,
                r.role
            );
            last = Some(key);
        }
        outln!(
            "    {:<32} {:>9} {:>9.3} {:>9.3} {:>9.3}",
            r.stage,
            r.hist.count,
            r.hist.mean_ms(),
            r.hist.quantile_ms(0.5),
            r.hist.quantile_ms(0.99)
        );
    }
    let served: Option<&Row> = rows
        .iter()
        .find(|r| r.stage == "write_total" || r.stage == "read_total");
    if let Some(total) = served {
        let outside = client_hist.mean() / 1000.0 - total.hist.mean_ms();
        outln!("  outside the leader's handler (client, network, gRPC) mean: {outside:.3} ms");
    }
    Ok(())
}

/// Per stage, the highest p99 (ms) any node recorded between `before` and
/// `after`, in the order the stages appear on the nodes; stages with no
/// sample are left out. One number per stage is what a long run can print
/// each minute: the slowest replica is the one a stall waits on.
pub fn worst_p99s(before: &Snapshot, after: &Snapshot) -> Vec<(String, f64)> {
    let mut worst: Vec<(String, f64)> = Vec::new();
    for row in rows_between(before, after) {
        let p99 = row.hist.quantile_ms(0.99);
        match worst.iter_mut().find(|(name, _)| *name == row.stage) {
            Some((_, w)) => *w = w.max(p99),
            None => worst.push((row.stage, p99)),
        }
    }
    worst
}

/// Reads the histograms, with the reason when none answered.
pub async fn must_take(client: &nokv_client::Client) -> anyhow::Result<Snapshot> {
    let s = take(client).await;
    if s.nodes.is_empty() {
        return Err(anyhow::anyhow!("no endpoint answered NodeStatus"))
            .context("--breakdown needs the stage histograms of at least one node");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::StageHist;

    fn hist(counts: &[u64]) -> StageHist {
        let bounds = [0.001, 0.002, 0.004, 0.008];
        let mut cumulative = Vec::new();
        let mut total = 0;
        let mut sum = 0.0;
        for (c, b) in counts.iter().zip(bounds) {
            total += c;
            sum += *c as f64 * b;
            cumulative.push(total);
        }
        StageHist {
            count: total,
            sum_seconds: sum,
            upper_bounds: bounds.to_vec(),
            cumulative,
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 100 samples, all in (1 ms, 2 ms].
        let h = hist(&[0, 100, 0, 0]);
        assert!((h.quantile_ms(0.5) - 1.5).abs() < 1e-9);
        assert!((h.quantile_ms(0.99) - 1.99).abs() < 1e-9);
        // 90 in the first bucket, 10 in (4 ms, 8 ms].
        let h = hist(&[90, 0, 0, 10]);
        assert!(h.quantile_ms(0.5) <= 1.0);
        assert!(h.quantile_ms(0.99) > 4.0 && h.quantile_ms(0.99) <= 8.0);
        assert_eq!(hist(&[0, 0, 0, 0]).quantile_ms(0.5), 0.0);
    }

    #[test]
    fn the_worst_p99_of_a_stage_is_the_slowest_node_in_between() {
        use super::{NodeStages, Snapshot};
        use nokv_proto::pb::Role;
        let node = |id: u64, h: StageHist| NodeStages {
            node_id: id,
            shards: [(0, (Role::Leader, vec![("log_append".to_string(), h)]))].into(),
        };
        let snap = |a: StageHist, b: StageHist| Snapshot {
            nodes: [
                ("n1".to_string(), node(1, a)),
                ("n2".to_string(), node(2, b)),
            ]
            .into(),
        };
        let before = snap(hist(&[10, 0, 0, 0]), hist(&[0, 0, 0, 0]));
        // n1 had 100 more in (4, 8] ms; n2 100 in (1, 2] ms; n1's old
        // samples in the first bucket do not count.
        let after = snap(hist(&[10, 0, 0, 100]), hist(&[0, 100, 0, 0]));
        let worst = super::worst_p99s(&before, &after);
        assert_eq!(worst.len(), 1);
        assert_eq!(worst[0].0, "log_append");
        assert!(worst[0].1 > 4.0 && worst[0].1 <= 8.0, "{worst:?}");
        // Nothing in between: nothing to report.
        assert!(super::worst_p99s(&after, &after).is_empty());
    }

    #[test]
    fn a_run_is_the_difference_of_two_snapshots() {
        let before = hist(&[10, 0, 0, 0]);
        let after = hist(&[10, 5, 0, 0]);
        let run = after.minus(&before);
        assert_eq!(run.count, 5);
        assert_eq!(run.cumulative, vec![0, 5, 5, 5]);
        assert!((run.mean_ms() - 2.0).abs() < 1e-9);
        // A node that restarted (counts went down) gives nothing, not an underflow.
        let restarted = hist(&[1, 0, 0, 0]).minus(&after);
        assert_eq!(restarted.count, 0);
    }
}
