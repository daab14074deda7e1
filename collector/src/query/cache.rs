//! Range query results, kept for the next query that asks again: a dashboard repeats its
//! queries every refresh over a window that has only moved on, so what it asked last time is
//! mostly still the answer.
//!
//! # What is kept, and when it is valid
//! A range query evaluates its expression at each step independently of the others, so the
//! points of steps that lie in *settled* time (more than [`SETTLED_AFTER_MS`] before the query
//! ran) can be kept and reused by a later query with the same expression, tenant, step phase
//! and lookback. Only the steps after the kept ones are evaluated again, and the two parts are
//! joined series by series.
//!
//! Settled time changes only when the store says so
//! ([`crate::store::Store::settled_epoch`]: a late sample became visible, or retention deleted
//! blocks); an entry records the epoch read before its points were computed and is dropped as
//! soon as the epoch differs. Expressions whose steps do not depend on their own time alone
//! are never kept: those with `@` (whose time is the query's start or end, or fixed) and those
//! with a negative offset (which read samples after the step, not settled yet).
//!
//! # Bounds
//! The entries hold at most `max_points` points together; the least recently used go first.
//! Each query may bypass the cache (`nocache=1`, as VictoriaMetrics spells it).
//!
//! Floating-point sums over several series may differ in their last bits from a fresh
//! evaluation: the order in which a query reads series depends on its start (PromQL does not
//! fix it either).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sonde_common::model::Sample;
use sonde_common::telemetry::{Counter, TextEncoder};

use super::eval::{self, EvalError, QueryLimits, RangeSeries, SeriesSource};
use crate::store::SETTLED_AFTER_MS;

/// What identifies a cached answer, besides its time range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub tenant: String,
    pub query: String,
    pub step: i64,
    /// The steps' position within the step: `start` modulo `step`.
    pub phase: i64,
    pub lookback_ms: i64,
}

#[derive(Debug)]
struct Entry {
    epoch: u64,
    /// First and last step held.
    first: i64,
    last: i64,
    series: Arc<Vec<RangeSeries>>,
    points: usize,
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    points: usize,
    clock: u64,
}

/// The results cache: cheap to share, safe to use from any thread.
#[derive(Debug)]
pub struct ResultsCache {
    max_points: usize,
    state: Mutex<State>,
    cached_steps: Counter,
    evaluated_steps: Counter,
}

/// How a query used the cache (for the self-metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Use {
    /// Steps answered from the cache.
    pub cached_steps: u64,
    /// Steps evaluated.
    pub evaluated_steps: u64,
}

impl ResultsCache {
    /// A cache of at most `max_points` points (0: nothing is kept).
    pub fn new(max_points: usize) -> Self {
        Self {
            max_points,
            state: Mutex::new(State::default()),
            cached_steps: Counter::default(),
            evaluated_steps: Counter::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Points held.
    pub fn points(&self) -> usize {
        self.lock().points
    }

    /// The self-metrics: steps answered from the cache and evaluated, points held.
    pub fn render_metrics(&self, e: &mut TextEncoder) {
        e.counter(
            "sonde_query_cache_steps_cached_total",
            "Steps of range queries answered from the results cache.",
            &self.cached_steps,
        );
        e.counter(
            "sonde_query_cache_steps_evaluated_total",
            "Steps of range queries evaluated (with the cache on or bypassed).",
            &self.evaluated_steps,
        );
        e.gauge(
            "sonde_query_cache_points",
            "Points held by the range query results cache (at most --query-cache-points).",
            self.points() as f64,
        );
    }

    /// Counts a query's steps in the self-metrics.
    fn count(&self, cached_steps: u64, evaluated_steps: u64) -> Use {
        self.cached_steps.add(cached_steps);
        self.evaluated_steps.add(evaluated_steps);
        Use {
            cached_steps,
            evaluated_steps,
        }
    }

    /// The entry for `key` if it is valid at `epoch` and holds `start`: its last step and
    /// series.
    fn get(&self, key: &Key, epoch: u64, start: i64) -> Option<(i64, Arc<Vec<RangeSeries>>)> {
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(key)?;
        if entry.epoch != epoch {
            let points = entry.points;
            state.entries.remove(key);
            state.points -= points;
            return None;
        }
        if !(entry.first..=entry.last).contains(&start) {
            return None;
        }
        entry.used = clock;
        Some((entry.last, entry.series.clone()))
    }

    fn put(&self, key: Key, epoch: u64, (first, last): (i64, i64), series: Vec<RangeSeries>) {
        let points: usize = series.iter().map(|s| s.points.len()).sum();
        if points > self.max_points {
            return;
        }
        let mut state = self.lock();
        state.clock += 1;
        let entry = Entry {
            epoch,
            first,
            last,
            series: Arc::new(series),
            points,
            used: state.clock,
        };
        if let Some(old) = state.entries.insert(key, entry) {
            state.points -= old.points;
        }
        state.points += points;
        while state.points > self.max_points {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = state.entries.remove(&oldest) {
                state.points -= e.points;
            }
        }
    }

    /// [`eval::range_query`] through the cache: the steps a valid entry holds are taken from
    /// it, the rest evaluated, and the settled steps of the answer kept. `epoch` is the
    /// store's [`crate::store::Store::settled_epoch`] read before this call; `now` the time
    /// the query runs at.
    #[allow(clippy::too_many_arguments)]
    pub fn range_query(
        &self,
        reader: &dyn SeriesSource,
        tenant: &str,
        query: &str,
        (start, end, step): (i64, i64, i64),
        lookback_ms: i64,
        limits: QueryLimits,
        (epoch, now): (u64, i64),
    ) -> Result<(Vec<RangeSeries>, Use), EvalError> {
        let evaluate =
            |from: i64| eval::range_query(reader, query, from, end, step, lookback_ms, limits);
        let steps_in = |a: i64, b: i64| {
            if b < a {
                0
            } else {
                ((b - a) / step + 1) as u64
            }
        };
        if self.max_points == 0 || step <= 0 || !eval::step_invariant(query) {
            let answer = evaluate(start)?;
            let used = self.count(0, steps_in(start, end));
            return Ok((answer, used));
        }
        let key = Key {
            tenant: tenant.to_owned(),
            query: query.to_owned(),
            step,
            phase: start.rem_euclid(step),
            lookback_ms,
        };
        // The last step of the query, and the last one in settled time.
        let last_step = start + (end - start) / step * step;
        let settled = now.saturating_sub(SETTLED_AFTER_MS);
        let last_settled = if settled < start {
            None
        } else {
            Some(start + (settled.min(end) - start) / step * step)
        };
        let hit = self.get(&key, epoch, start);
        let (cached, from) = match &hit {
            Some((last, series)) => (
                Some((series.as_slice(), (*last).min(last_step))),
                last + step,
            ),
            None => (None, start),
        };
        let fresh = if from <= end {
            evaluate(from)?
        } else {
            Vec::new()
        };
        let used = self.count(
            cached.map_or(0, |(_, last)| steps_in(start, last)),
            steps_in(from, end),
        );
        let answer = join(cached.map(|(s, last)| (s, (start, last))), fresh);
        if let Some(last_settled) = last_settled
            && hit.as_ref().is_none_or(|(last, _)| *last < last_settled)
        {
            self.put(
                key,
                epoch,
                (start, last_settled),
                within(&answer, start, last_settled),
            );
        }
        Ok((answer, used))
    }
}

/// `series`' points at steps in `[first, last]`, without the series left with none.
fn within(series: &[RangeSeries], first: i64, last: i64) -> Vec<RangeSeries> {
    series
        .iter()
        .filter_map(|s| {
            let points: Vec<Sample> = s
                .points
                .iter()
                .filter(|p| (first..=last).contains(&p.timestamp_ms))
                .copied()
                .collect();
            (!points.is_empty()).then(|| RangeSeries {
                labels: s.labels.clone(),
                points,
            })
        })
        .collect()
}

/// The cached series' points in `range`, followed by the fresh ones (all later), series by
/// series, sorted by labels as an evaluation answers.
fn join(cached: Option<(&[RangeSeries], (i64, i64))>, fresh: Vec<RangeSeries>) -> Vec<RangeSeries> {
    let Some((cached, (first, last))) = cached else {
        return fresh;
    };
    let mut by_labels: std::collections::BTreeMap<eval::Labels, Vec<Sample>> =
        within(cached, first, last)
            .into_iter()
            .map(|s| (s.labels, s.points))
            .collect();
    for s in fresh {
        by_labels.entry(s.labels).or_default().extend(s.points);
    }
    by_labels
        .into_iter()
        .map(|(labels, points)| RangeSeries { labels, points })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::eval::Reader;
    use crate::store::{Store, StoreConfig};
    use sonde_common::model::{MetricKind, Series, now_ms};
    use sonde_common::wire::{BatchBuilder, BatchHeader};
    use std::time::Duration;

    const STEP: i64 = 60_000;

    async fn push(store: &Store, samples: &[(&str, i64, f64)]) {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: String::new(),
            sequence: 0,
            sent_at_ms: 0,
        });
        for &(a, t, v) in samples {
            let s = Series::new("x", [("a", a.to_string())]);
            b.push(&s, MetricKind::Counter, None, vec![Sample::new(t, v)]);
        }
        store.append(&b.build()).await.unwrap();
    }

    /// Labels and timestamps exactly, values within rounding (sums may add in another order).
    fn assert_same(got: &[RangeSeries], want: &[RangeSeries], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: series");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.labels, w.labels, "{what}");
            let ts = |s: &RangeSeries| s.points.iter().map(|p| p.timestamp_ms).collect::<Vec<_>>();
            assert_eq!(ts(g), ts(w), "{what}: {:?}", g.labels);
            for (p, q) in g.points.iter().zip(&w.points) {
                let close = (p.value - q.value).abs() <= 1e-9 * q.value.abs().max(1.0)
                    || (p.value.is_nan() && q.value.is_nan());
                assert!(
                    close,
                    "{what}: {:?} at {}: {} != {}",
                    g.labels, p.timestamp_ms, p.value, q.value
                );
            }
        }
    }

    /// An empty store without maintenance (kept with its directory).
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig {
            retention: Duration::ZERO,
            maintenance_interval: Duration::ZERO,
            ..StoreConfig::new(dir.path())
        })
        .unwrap();
        (dir, store)
    }

    const QUERIES: [&str; 5] = [
        "sum by (a) (rate(x[5m]))",
        "x",
        "sum(increase(x[2m] offset 3m))",
        "count(x > 100) or vector(0)",
        "x @ end()",
    ];

    #[tokio::test]
    async fn repeated_queries_take_settled_steps_from_the_cache_and_answer_as_fresh_ones() {
        let (_dir, store) = store();
        let t0 = now_ms() / STEP * STEP;
        // Two counters over the last two hours, every 10 s.
        let mut t = t0 - 2 * 3_600_000;
        while t <= t0 {
            let v = ((t - t0) / 10_000 + 720) as f64;
            push(&store, &[("1", t, v), ("2", t, 3.0 * v)]).await;
            t += 10_000;
        }
        let reader = Reader {
            store: &store,
            tenant: "",
        };
        let cache = ResultsCache::new(1_000_000);
        let run = |q: &str, (start, end): (i64, i64), now: i64| {
            let cached = cache
                .range_query(
                    &reader,
                    "",
                    q,
                    (start, end, STEP),
                    300_000,
                    QueryLimits::default(),
                    (store.settled_epoch(), now),
                )
                .unwrap();
            let fresh = eval::range_query(
                &reader,
                q,
                start,
                end,
                STEP,
                300_000,
                QueryLimits::default(),
            )
            .unwrap();
            assert_same(&cached.0, &fresh, q);
            cached.1
        };
        let hour = (t0 - 3_600_000, t0);
        for q in QUERIES {
            let first = run(q, hour, t0);
            assert_eq!(first.cached_steps, 0, "{q}");
            assert_eq!(first.evaluated_steps, 61, "{q}");
        }
        // A minute later, with a minute more of samples: the window moved on by one step.
        for t in (t0 + 10_000..=t0 + STEP).step_by(10_000) {
            let v = ((t - t0) / 10_000 + 720) as f64;
            push(&store, &[("1", t, v), ("2", t, 3.0 * v)]).await;
        }
        let later = (hour.0 + STEP, hour.1 + STEP);
        for q in QUERIES {
            let used = run(q, later, t0 + STEP);
            if q.contains('@') {
                assert_eq!(used.cached_steps, 0, "{q}");
            } else {
                // Kept: the steps up to five minutes before the first query ran.
                assert_eq!(used.cached_steps, 55, "{q}");
                assert_eq!(used.evaluated_steps, 6, "{q}");
            }
        }
        // A late sample (a new series half an hour back) changes settled time: nothing kept
        // before it is used, and the answer has it.
        let epoch = store.settled_epoch();
        push(&store, &[("3", t0 - 1_800_000, 500.0)]).await;
        assert_ne!(store.settled_epoch(), epoch);
        for q in QUERIES {
            let used = run(q, later, t0 + STEP);
            assert_eq!(used.cached_steps, 0, "{q}");
        }
        let x = cache
            .range_query(
                &reader,
                "",
                "x",
                (later.0, later.1, STEP),
                300_000,
                QueryLimits::default(),
                (store.settled_epoch(), t0 + STEP),
            )
            .unwrap();
        assert!(x.0.iter().any(|s| s.labels.get("a") == "3"));
        // Samples on time leave it valid: the steps up to five minutes before the last query.
        push(&store, &[("1", t0 + STEP + 10_000, 1e6)]).await;
        let used = run("x", later, t0 + STEP);
        assert_eq!(used.cached_steps, 56);
        assert!(cache.points() > 0);
    }

    #[tokio::test]
    async fn answers_larger_than_the_bound_are_not_kept() {
        let (_dir, store) = store();
        let t0 = now_ms() / STEP * STEP;
        for t in (t0 - 3_600_000..=t0).step_by(10_000) {
            push(&store, &[("1", t, 1.0), ("2", t, 2.0)]).await;
        }
        let reader = Reader {
            store: &store,
            tenant: "",
        };
        // 2 series x 56 settled steps do not fit in 100 points; one series does.
        let cache = ResultsCache::new(100);
        let query = |q: &str| {
            cache
                .range_query(
                    &reader,
                    "",
                    q,
                    (t0 - 3_600_000, t0, STEP),
                    300_000,
                    QueryLimits::default(),
                    (store.settled_epoch(), t0),
                )
                .unwrap()
                .1
        };
        for q in ["x", "x{a=\"1\"}"] {
            query(q);
        }
        assert_eq!(query("x").cached_steps, 0);
        assert_eq!(query("x{a=\"1\"}").cached_steps, 56);
        assert!(cache.points() <= 100);
    }
}
