//! A [`Formula`] compiled to slot indices: the form a search evaluates per design.

use super::schedule::{schedule_values, SCHEDULE_SYMBOLS};
use super::{Cost, Formula, Poly};
use crate::spec::ScheduleSpec;
use std::collections::HashMap;

impl Formula {
    /// A form evaluated from a slice of values, one slot per symbol.
    pub fn compile(&self) -> Compiled {
        let slot: HashMap<&str, u32> = self.symbols.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
        let mut factors = Vec::new();
        let mut compile = |p: &Poly| -> Vec<CTerm> {
            p.ordered_terms()
                .into_iter()
                .map(|(m, c)| {
                    let start = factors.len() as u32;
                    for (s, pow) in m.factors() {
                        factors.push((slot[s.as_str()], *pow));
                    }
                    CTerm { coef: c, start, end: factors.len() as u32 }
                })
                .collect()
        };
        let polys = [compile(&self.params), compile(&self.forward_macs), compile(&self.sample_macs)];
        let sched = SCHEDULE_SYMBOLS.map(|s| slot.get(s).copied());
        Compiled { symbols: self.symbols.clone(), polys, factors, sched }
    }
}

#[derive(Clone, Copy, Debug)]
struct CTerm {
    coef: i128,
    start: u32,
    end: u32,
}

/// A [`Formula`] with symbols replaced by slot indices: evaluating a design is
/// a few hundred integer multiplications, no hashing and no allocation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Slot `i` holds the value of `symbols[i]`.
    pub symbols: Vec<String>,
    polys: [Vec<CTerm>; 3],
    factors: Vec<(u32, u32)>,
    sched: [Option<u32>; 12],
}

impl Compiled {
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.symbols.iter().position(|s| s == name)
    }
    /// Slot values from a map (e.g. [`Formula::values`]).
    pub fn slots(&self, values: &HashMap<String, i128>) -> Result<Vec<i128>, String> {
        self.symbols
            .iter()
            .map(|s| values.get(s).copied().ok_or_else(|| format!("no value for symbol `{s}`")))
            .collect()
    }
    /// Set the schedule symbols this formula uses from a schedule.
    pub fn set_schedule(&self, slots: &mut [i128], schedule: &ScheduleSpec) {
        let v = schedule_values(schedule);
        for (slot, value) in self.sched.iter().zip(v) {
            if let Some(i) = slot {
                slots[*i as usize] = value;
            }
        }
    }
    #[inline]
    fn poly(&self, k: usize, v: &[i128]) -> Option<i128> {
        let mut acc: i128 = 0;
        for t in &self.polys[k] {
            let mut x = t.coef;
            for &(s, p) in &self.factors[t.start as usize..t.end as usize] {
                let y = v[s as usize];
                for _ in 0..p {
                    x = x.checked_mul(y)?;
                }
            }
            acc = acc.checked_add(x)?;
        }
        Some(acc)
    }
    /// Evaluate one design; `None` on overflow.
    #[inline]
    pub fn eval(&self, slots: &[i128]) -> Option<Cost> {
        assert_eq!(slots.len(), self.symbols.len(), "one value per symbol");
        Some(Cost {
            params: self.poly(0, slots)?,
            forward_macs: self.poly(1, slots)?,
            sample_macs: self.poly(2, slots)?,
        })
    }
}
