//! Polynomials over named symbols with exact integer coefficients: the
//! algebra the formulas are written in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// A monomial: symbols with their powers (>= 1), sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Mono(Vec<(String, u32)>);

impl Mono {
    pub(crate) fn degree(&self) -> u32 {
        self.0.iter().map(|(_, p)| p).sum()
    }
    pub(crate) fn factors(&self) -> &[(String, u32)] {
        &self.0
    }
    fn mul(&self, o: &Mono) -> Mono {
        let mut m: BTreeMap<&str, u32> = BTreeMap::new();
        for (s, p) in self.0.iter().chain(&o.0) {
            *m.entry(s).or_default() += p;
        }
        Mono(m.into_iter().map(|(s, p)| (s.to_string(), p)).collect())
    }
    /// `self / o` when every power of `o` is covered.
    fn div(&self, o: &Mono) -> Option<Mono> {
        let mut m: BTreeMap<&str, u32> = self.0.iter().map(|(s, p)| (s.as_str(), *p)).collect();
        for (s, p) in &o.0 {
            let have = m.get_mut(s.as_str())?;
            if *have < *p {
                return None;
            }
            *have -= p;
        }
        Some(Mono(m.into_iter().filter(|(_, p)| *p > 0).map(|(s, p)| (s.to_string(), p)).collect()))
    }
    fn power_of(&self, s: &str) -> u32 {
        self.0.iter().find(|(n, _)| n == s).map_or(0, |(_, p)| *p)
    }
    fn without(&self, names: &[&str]) -> Mono {
        Mono(self.0.iter().filter(|(n, _)| !names.contains(&n.as_str())).cloned().collect())
    }
}

/// A polynomial over named symbols with exact `i128` coefficients, kept in
/// canonical form (no zero coefficients), so equal polynomials compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Poly(BTreeMap<Mono, i128>);

impl Poly {
    pub fn zero() -> Poly {
        Poly(BTreeMap::new())
    }
    pub fn constant(c: i128) -> Poly {
        let mut m = BTreeMap::new();
        if c != 0 {
            m.insert(Mono::default(), c);
        }
        Poly(m)
    }
    pub fn var(name: &str) -> Poly {
        Poly(BTreeMap::from([(Mono(vec![(name.to_string(), 1)]), 1)]))
    }
    /// The value when the polynomial has no symbols.
    pub(crate) fn as_const(&self) -> Option<i128> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&Mono::default()).copied(),
            _ => None,
        }
    }
    /// Terms, monomial -> coefficient.
    pub(crate) fn terms(&self) -> impl Iterator<Item = (&Mono, i128)> {
        self.0.iter().map(|(m, &c)| (m, c))
    }
    pub fn degree(&self) -> u32 {
        self.0.keys().map(Mono::degree).max().unwrap_or(0)
    }
    /// Every symbol the polynomial mentions.
    pub fn symbols(&self) -> BTreeSet<String> {
        self.0.keys().flat_map(|m| m.0.iter().map(|(s, _)| s.clone())).collect()
    }
    pub fn add(&self, o: &Poly) -> Poly {
        let mut m = self.0.clone();
        for (k, v) in &o.0 {
            *m.entry(k.clone()).or_insert(0) += v;
        }
        m.retain(|_, v| *v != 0);
        Poly(m)
    }
    pub fn sub(&self, o: &Poly) -> Poly {
        self.add(&o.scale(-1))
    }
    pub fn scale(&self, c: i128) -> Poly {
        if c == 0 {
            return Poly::zero();
        }
        Poly(self.0.iter().map(|(k, v)| (k.clone(), v * c)).collect())
    }
    pub fn mul(&self, o: &Poly) -> Poly {
        let mut m: BTreeMap<Mono, i128> = BTreeMap::new();
        for (a, x) in &self.0 {
            for (b, y) in &o.0 {
                *m.entry(a.mul(b)).or_insert(0) += x * y;
            }
        }
        m.retain(|_, v| *v != 0);
        Poly(m)
    }
    /// `self / d` when it is exact as a polynomial: `d` a nonzero constant or a
    /// single term dividing every term of `self`.
    pub fn div_exact(&self, d: &Poly) -> Option<Poly> {
        if d.0.len() != 1 {
            return None;
        }
        let (dm, &dc) = d.0.iter().next()?;
        let mut out = BTreeMap::new();
        for (m, &c) in &self.0 {
            if c % dc != 0 {
                return None;
            }
            out.insert(m.div(dm)?, c / dc);
        }
        Some(Poly(out))
    }
    /// Replace symbol `s` by the polynomial `by`.
    pub(crate) fn substitute(&self, s: &str, by: &Poly) -> Poly {
        let mut out = Poly::zero();
        for (m, &c) in &self.0 {
            let p = m.power_of(s);
            let mut t = Poly(BTreeMap::from([(m.without(&[s]), c)]));
            for _ in 0..p {
                t = t.mul(by);
            }
            out = out.add(&t);
        }
        out
    }
    /// Split by the powers of `names`: (powers, coefficient without them).
    pub(super) fn split(&self, names: &[&str]) -> BTreeMap<Vec<u32>, Poly> {
        let mut out: BTreeMap<Vec<u32>, Poly> = BTreeMap::new();
        for (m, &c) in &self.0 {
            let key: Vec<u32> = names.iter().map(|n| m.power_of(n)).collect();
            let e = out.entry(key).or_default();
            *e = e.add(&Poly(BTreeMap::from([(m.without(names), c)])));
        }
        out
    }
    /// Evaluate with every symbol's value; checked arithmetic.
    pub fn eval(&self, values: &HashMap<String, i128>) -> Result<i128, String> {
        let mut acc: i128 = 0;
        for (m, &c) in &self.0 {
            let mut t = c;
            for (s, p) in &m.0 {
                let v = *values.get(s).ok_or_else(|| format!("no value for symbol `{s}`"))?;
                for _ in 0..*p {
                    t = t.checked_mul(v).ok_or("overflow")?;
                }
            }
            acc = acc.checked_add(t).ok_or("overflow")?;
        }
        Ok(acc)
    }
    pub(super) fn eval_map(&self, values: &BTreeMap<String, i128>) -> Result<i128, String> {
        let h: HashMap<String, i128> = self
            .symbols()
            .into_iter()
            .map(|s| values.get(&s).map(|v| (s.clone(), *v)).ok_or_else(|| format!("no value for symbol `{s}`")))
            .collect::<Result<_, _>>()?;
        self.eval(&h)
    }
    /// Terms in display order: higher degree first, then by symbol names.
    pub(crate) fn ordered_terms(&self) -> Vec<(&Mono, i128)> {
        let mut t: Vec<(&Mono, i128)> = self.terms().collect();
        t.sort_by(|a, b| b.0.degree().cmp(&a.0.degree()).then_with(|| a.0.cmp(b.0)));
        t
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (s, p)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("*")?;
            }
            f.write_str(s)?;
            if *p > 1 {
                write!(f, "^{p}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Poly {
    /// `18*depth*width^2 + 14*depth*width - 3`: higher degrees first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms = self.ordered_terms();
        if terms.is_empty() {
            return f.write_str("0");
        }
        for (i, (m, c)) in terms.into_iter().enumerate() {
            let (neg, a) = (c < 0, c.unsigned_abs());
            match (i, neg) {
                (0, true) => f.write_str("-")?,
                (0, false) => {}
                (_, true) => f.write_str(" - ")?,
                (_, false) => f.write_str(" + ")?,
            }
            if m.0.is_empty() {
                write!(f, "{a}")?;
            } else if a == 1 {
                write!(f, "{m}")?;
            } else {
                write!(f, "{a}*{m}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[(&str, i128)]) -> HashMap<String, i128> {
        v.iter().map(|(k, x)| (k.to_string(), *x)).collect()
    }

    #[test]
    fn sums_cancel_to_the_canonical_zero() {
        let (d, w) = (Poly::var("d"), Poly::var("w"));
        let p = d.mul(&w).add(&Poly::constant(3));
        assert_eq!(p.sub(&p), Poly::zero());
        assert_eq!(p.scale(0), Poly::zero());
        assert_eq!(p.add(&w.scale(-1)).add(&w), p);
        assert_eq!(Poly::constant(0), Poly::zero());
    }

    #[test]
    fn products_collect_powers() {
        let (d, w) = (Poly::var("d"), Poly::var("w"));
        let p = d.add(&w).mul(&d.sub(&w));
        assert_eq!(p.to_string(), "d^2 - w^2");
        assert_eq!(p.degree(), 2);
        assert_eq!(w.mul(&d).mul(&w).to_string(), "d*w^2");
        assert_eq!(p.symbols().into_iter().collect::<Vec<_>>(), ["d", "w"]);
    }

    #[test]
    fn evaluation_is_checked() {
        let (d, w) = (Poly::var("d"), Poly::var("w"));
        let p = d.mul(&w).mul(&w).scale(18).add(&Poly::constant(-3));
        assert_eq!(p.eval(&values(&[("d", 2), ("w", 10)])), Ok(18 * 2 * 100 - 3));
        assert_eq!(p.eval(&values(&[("d", 2)])), Err("no value for symbol `w`".into()));
        assert_eq!(d.mul(&d).eval(&values(&[("d", i128::MAX)])), Err("overflow".into()));
        assert_eq!(Poly::constant(7).as_const(), Some(7));
        assert_eq!(d.as_const(), None);
    }

    #[test]
    fn exact_division_substitution_and_splitting() {
        let (d, w) = (Poly::var("d"), Poly::var("w"));
        let p = d.mul(&w).scale(6).add(&w.scale(4));
        assert_eq!(p.div_exact(&w.scale(2)), Some(d.scale(3).add(&Poly::constant(2))));
        assert_eq!(p.div_exact(&d), None, "w*4 has no d");
        assert_eq!(p.div_exact(&Poly::constant(4)), None, "6 is not a multiple of 4");
        assert_eq!(p.substitute("d", &w.add(&Poly::constant(1))).to_string(), "6*w^2 + 10*w");
        let parts = p.split(&["d"]);
        assert_eq!(parts.get(&vec![1]), Some(&w.scale(6)));
        assert_eq!(parts.get(&vec![0]), Some(&w.scale(4)));
    }
}
