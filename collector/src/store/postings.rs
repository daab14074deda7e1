//! Postings: the inverted index from (label name, value) to the sorted ids of the series that
//! carry it, with the metric name under `__name__`. The head indexes its slots here, and every
//! on-disk block the positions of its series. Ids are added in increasing order, so adding
//! keeps each list sorted.

use std::collections::HashMap;

use super::matcher::{MatchOp, Matcher};

/// A series' id in one index: a head slot, or a position in a block.
pub(crate) type Slot = u32;

#[derive(Debug, Default)]
pub(crate) struct Postings {
    map: HashMap<String, HashMap<String, Vec<Slot>>>,
}

impl Postings {
    pub(crate) fn add(&mut self, slot: Slot, name: &str, value: &str) {
        let values = match self.map.get_mut(name) {
            Some(v) => v,
            None => self.map.entry(name.to_owned()).or_default(),
        };
        let list = match values.get_mut(value) {
            Some(l) => l,
            None => values.entry(value.to_owned()).or_default(),
        };
        // Ids grow, so this is a push; the search only guards the invariant.
        if let Err(pos) = list.binary_search(&slot) {
            list.insert(pos, slot);
        }
    }

    /// Every value of label `name`, with its series.
    pub(crate) fn values_of(&self, name: &str) -> Option<&HashMap<String, Vec<Slot>>> {
        self.map.get(name)
    }

    /// Ids of the series matching every matcher, ascending (all `count` series for no
    /// matchers).
    pub(crate) fn matching(&self, matchers: &[Matcher], count: Slot) -> Vec<Slot> {
        let mut include: Option<Vec<Slot>> = None;
        // Matchers that accept the empty value also select series lacking the label, so they
        // are applied by removing the series whose value they reject.
        let (positive, negative): (Vec<&Matcher>, Vec<&Matcher>) =
            matchers.iter().partition(|m| !m.matches(""));
        for m in positive {
            let found = self.postings_for(m, true);
            let narrowed = match include {
                None => found,
                Some(prev) => intersect(&prev, &found),
            };
            if narrowed.is_empty() {
                return narrowed;
            }
            include = Some(narrowed);
        }
        let mut result = include.unwrap_or_else(|| (0..count).collect());
        for m in negative {
            let exclude = self.postings_for(m, false);
            if !exclude.is_empty() {
                result = subtract(&result, &exclude);
            }
        }
        result
    }

    /// Union of the postings of label `m.name` whose value `m` accepts (`accepted`) or
    /// rejects (`!accepted`).
    fn postings_for(&self, m: &Matcher, accepted: bool) -> Vec<Slot> {
        let Some(values) = self.map.get(&m.name) else {
            return Vec::new();
        };
        if let (MatchOp::Equal(v), true) = (&m.op, accepted) {
            return values.get(v).cloned().unwrap_or_default();
        }
        let mut lists: Vec<&[Slot]> = values
            .iter()
            .filter(|(v, _)| m.matches(v) == accepted)
            .map(|(_, l)| l.as_slice())
            .collect();
        union(&mut lists)
    }
}

/// Sorted union of sorted lists.
fn union(lists: &mut [&[Slot]]) -> Vec<Slot> {
    match lists {
        [] => Vec::new(),
        [one] => one.to_vec(),
        _ => {
            let mut out: Vec<Slot> = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
            for l in lists.iter() {
                out.extend_from_slice(l);
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

/// Sorted intersection of two sorted lists.
fn intersect(a: &[Slot], b: &[Slot]) -> Vec<Slot> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (small.get(i), large.get(j)) {
        match x.cmp(&y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(x);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Sorted `a` minus sorted `b`.
fn subtract(a: &[Slot], b: &[Slot]) -> Vec<Slot> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while b.get(j).is_some_and(|&y| y < x) {
            j += 1;
        }
        if b.get(j) != Some(&x) {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 7, 9]), [3, 7]);
        assert_eq!(subtract(&[1, 3, 5, 7], &[0, 3, 7, 9]), [1, 5]);
        assert_eq!(
            union(&mut [&[1, 5][..], &[2, 5, 9][..], &[][..]]),
            [1, 2, 5, 9]
        );
    }
}
