//! The exact Pareto front of designs, every objective minimised.
//!
//! A design is on the front when no other design is at least as good in every
//! objective and better in one. Designs with exactly the same objectives are
//! *ties*: the front keeps one of them, the one with the smallest design index
//! (so the result does not depend on the order designs were visited, on
//! threads or on shards), and counts how many designs share its objectives.
//! Fronts merge ([`Front::merge`]): merging the fronts of parts of a set of
//! designs gives the front of the whole set, ties counted.

use serde::{Deserialize, Serialize};

/// One design on the front.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point<T> {
    /// The objectives, in the order they were given.
    pub objectives: Vec<i128>,
    /// The design's index in its space (the smallest among its ties).
    pub index: u128,
    /// Designs with exactly these objectives (1 = no tie).
    pub ties: u64,
    pub data: T,
}

/// `a` dominates `b`: no worse anywhere, better somewhere.
pub(crate) fn dominates(a: &[i128], b: &[i128]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        better |= x < y;
    }
    better
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Front<T> {
    points: Vec<Point<T>>,
}

impl<T> Default for Front<T> {
    fn default() -> Self {
        Front { points: Vec::new() }
    }
}

impl<T> Front<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offer a design (or, when merging, a front point standing for `ties` designs).
    pub(crate) fn insert(&mut self, p: Point<T>) {
        for q in self.points.iter_mut() {
            if q.objectives == p.objectives {
                q.ties += p.ties;
                if p.index < q.index {
                    q.index = p.index;
                    q.data = p.data;
                }
                return;
            }
            if dominates(&q.objectives, &p.objectives) {
                return;
            }
        }
        self.points.retain(|q| !dominates(&p.objectives, &q.objectives));
        self.points.push(p);
    }

    /// Offer one design.
    pub fn offer(&mut self, objectives: Vec<i128>, index: u128, data: T) {
        self.insert(Point { objectives, index, ties: 1, data });
    }

    pub fn merge(&mut self, other: Front<T>) {
        for p in other.points {
            self.insert(p);
        }
    }

    /// The points in a canonical order: by objectives (first objective first),
    /// then by index.
    pub fn into_sorted(mut self) -> Vec<Point<T>> {
        self.points.sort_by(|a, b| a.objectives.cmp(&b.objectives).then(a.index.cmp(&b.index)));
        self.points
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl<T> FromIterator<Point<T>> for Front<T> {
    fn from_iter<I: IntoIterator<Item = Point<T>>>(iter: I) -> Self {
        let mut f = Front::new();
        for p in iter {
            f.insert(p);
        }
        f
    }
}

/// The front by brute force (every pair compared): the reference the tests
/// hold [`Front`] to. Returns (objectives, smallest index, ties), sorted as
/// [`Front::into_sorted`].
pub fn brute_force(designs: &[(Vec<i128>, u128)]) -> Vec<(Vec<i128>, u128, u64)> {
    let mut out: Vec<(Vec<i128>, u128, u64)> = Vec::new();
    for (o, i) in designs {
        if designs.iter().any(|(p, _)| dominates(p, o)) {
            continue;
        }
        match out.iter_mut().find(|e| &e.0 == o) {
            Some(e) => {
                e.1 = e.1.min(*i);
                e.2 += 1;
            }
            None => out.push((o.clone(), *i, 1)),
        }
    }
    out.sort();
    out
}
