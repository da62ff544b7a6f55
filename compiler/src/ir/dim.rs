//! Symbolic tensor dimensions. A dimension is a polynomial with integer
//! coefficients over a few named symbols (batch `B`, tokens of the step `T`,
//! positions already in the KV cache `P`), kept in a canonical form so that
//! equal dimensions compare equal structurally (`P + T` == `T + P`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A named symbol. The set is closed: these are the only things a step program
/// leaves open until it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Sym {
    /// Batch (doubled under classifier-free guidance).
    B,
    /// Tokens produced by this step.
    T,
    /// Token positions already in the KV cache (earlier stages).
    P,
}

impl Sym {
    pub const ALL: [Sym; 3] = [Sym::B, Sym::T, Sym::P];
    pub fn name(self) -> &'static str {
        match self {
            Sym::B => "B",
            Sym::T => "T",
            Sym::P => "P",
        }
    }
    pub fn parse(s: &str) -> Option<Sym> {
        Sym::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Values for the symbols, to evaluate a dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bindings {
    pub b: u64,
    pub t: u64,
    pub p: u64,
}

impl Bindings {
    pub fn new(b: u64, t: u64, p: u64) -> Self {
        Bindings { b, t, p }
    }
    pub fn get(&self, s: Sym) -> u64 {
        match s {
            Sym::B => self.b,
            Sym::T => self.t,
            Sym::P => self.p,
        }
    }
}

/// Exponents of (B, T, P) in one monomial.
type Exponents = [u8; 3];

/// A polynomial: (monomial, coefficient) pairs sorted by monomial, no zero
/// coefficients; the constant term has the all-zero monomial. A small sorted
/// vector keeps equal dimensions structurally equal and avoids allocating per
/// term (lowering and costing build many of these). Arithmetic saturates.
/// Serialised as its canonical text (`"2*B*T + P"`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim(Vec<(Exponents, i64)>);

fn mono_syms(m: &Exponents) -> Vec<Sym> {
    let mut v = Vec::new();
    for (i, s) in Sym::ALL.iter().enumerate() {
        v.extend(std::iter::repeat_n(*s, m[i] as usize));
    }
    v
}

impl Serialize for Dim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_const() {
            Some(v) => s.serialize_u64(v),
            None => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dim, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(u64),
            S(String),
        }
        match Repr::deserialize(d)? {
            Repr::N(v) => Ok(Dim::c(v)),
            Repr::S(s) => Dim::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Dim {
    pub fn c(v: u64) -> Dim {
        if v == 0 {
            Dim(vec![])
        } else {
            Dim(vec![([0, 0, 0], i64::try_from(v).unwrap_or(i64::MAX))])
        }
    }
    pub fn sym(s: Sym) -> Dim {
        let mut m = [0u8; 3];
        m[Sym::ALL.iter().position(|x| *x == s).expect("a symbol")] = 1;
        Dim(vec![(m, 1)])
    }
    /// The constant value, if the dimension has no symbols and is not negative.
    pub fn as_const(&self) -> Option<u64> {
        match self.0.as_slice() {
            [] => Some(0),
            [([0, 0, 0], v)] => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn eval(&self, b: &Bindings) -> u64 {
        let vals = [b.b as i128, b.t as i128, b.p as i128];
        let mut total: i128 = 0;
        for (m, c) in &self.0 {
            let mut term = *c as i128;
            for (i, &e) in m.iter().enumerate() {
                for _ in 0..e {
                    term = term.saturating_mul(vals[i]);
                }
            }
            total = total.saturating_add(term);
        }
        u64::try_from(total.max(0)).unwrap_or(u64::MAX)
    }
    /// Merge sorted (monomial, coefficient) pairs, summing equal monomials.
    fn from_terms(mut terms: Vec<(Exponents, i64)>) -> Dim {
        terms.sort_unstable_by_key(|a| a.0);
        let mut out: Vec<(Exponents, i64)> = Vec::with_capacity(terms.len());
        for (m, c) in terms {
            match out.last_mut() {
                Some((lm, lc)) if *lm == m => *lc = lc.saturating_add(c),
                _ => out.push((m, c)),
            }
        }
        out.retain(|(_, c)| *c != 0);
        Dim(out)
    }
    pub fn add(&self, o: &Dim) -> Dim {
        Dim::from_terms(self.0.iter().chain(&o.0).copied().collect())
    }
    pub fn mul(&self, o: &Dim) -> Dim {
        let mut terms = Vec::with_capacity(self.0.len() * o.0.len());
        for (ma, ca) in &self.0 {
            for (mb, cb) in &o.0 {
                let m = [ma[0].saturating_add(mb[0]), ma[1].saturating_add(mb[1]), ma[2].saturating_add(mb[2])];
                terms.push((m, ca.saturating_mul(*cb)));
            }
        }
        Dim::from_terms(terms)
    }
    pub fn mul_c(&self, c: u64) -> Dim {
        self.mul(&Dim::c(c))
    }
    /// Exact division by a constant, when every coefficient is divisible.
    pub fn div_c(&self, c: u64) -> Option<Dim> {
        let c = i64::try_from(c).ok().filter(|&c| c != 0)?;
        if self.0.iter().any(|(_, v)| v % c != 0) {
            return None;
        }
        Some(Dim(self.0.iter().map(|(k, v)| (*k, v / c)).collect()))
    }
    pub fn syms(&self) -> impl Iterator<Item = Sym> + '_ {
        self.0.iter().flat_map(|(m, _)| mono_syms(m))
    }
}

/// Product of dimensions (numel).
pub fn product(dims: &[Dim]) -> Dim {
    dims.iter().fold(Dim::c(1), |acc, d| acc.mul(d))
}

impl From<u64> for Dim {
    fn from(v: u64) -> Dim {
        Dim::c(v)
    }
}

impl From<Sym> for Dim {
    fn from(s: Sym) -> Dim {
        Dim::sym(s)
    }
}

impl fmt::Display for Dim {
    /// Canonical text: monomials by descending degree, then symbol order;
    /// `2*B*T + P + 3`. Parsed back by [`Dim::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("0");
        }
        let mut terms: Vec<(Vec<Sym>, i64)> = self.0.iter().map(|(m, c)| (mono_syms(m), *c)).collect();
        terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        for (i, (m, c)) in terms.iter().enumerate() {
            let c = *c;
            let (sign, c) = if c < 0 { ("-", -c) } else { ("+", c) };
            if i == 0 {
                if sign == "-" {
                    f.write_str("-")?;
                }
            } else {
                write!(f, " {sign} ")?;
            }
            let syms: Vec<&str> = m.iter().map(|s| s.name()).collect();
            match (c, syms.is_empty()) {
                (c, true) => write!(f, "{c}")?,
                (1, false) => f.write_str(&syms.join("*"))?,
                (c, false) => write!(f, "{c}*{}", syms.join("*"))?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Dim {
    /// Parse the canonical text (`2*B*T + P - 1`): a sum of products of
    /// integers and symbols.
    pub fn parse(s: &str) -> Result<Dim, String> {
        let mut out = Dim::c(0);
        let mut sign = 1i64;
        let mut term = String::new();
        let mut chars = s.chars().peekable();
        loop {
            let c = chars.next();
            let at_op = matches!(c, Some('+') | Some('-'));
            if c.is_none() || (at_op && !term.trim().is_empty()) {
                out = out.add(&Self::parse_term(term.trim(), sign)?);
                term.clear();
                match c {
                    None => return Ok(out),
                    Some(op) => sign = if op == '-' { -1 } else { 1 },
                }
            } else if at_op {
                // a sign before the first term
                if c == Some('-') {
                    sign = -sign;
                }
            } else if let Some(c) = c {
                term.push(c);
            }
        }
    }

    fn parse_term(term: &str, sign: i64) -> Result<Dim, String> {
        if term.is_empty() {
            return Err("missing term".into());
        }
        let mut t = Dim::c(1);
        let mut coef = sign;
        for factor in term.split('*').map(str::trim) {
            if let Ok(n) = factor.parse::<i64>() {
                coef = coef.checked_mul(n).ok_or("dimension overflows")?;
            } else if let Some(sy) = Sym::parse(factor) {
                t = t.mul(&Dim::sym(sy));
            } else {
                return Err(format!("`{factor}` is not a number or one of B, T, P"));
            }
        }
        Ok(Dim(t.0.into_iter().map(|(k, v)| (k, v.saturating_mul(coef))).filter(|(_, v)| *v != 0).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_and_round_trip() {
        let d = Dim::sym(Sym::P).add(&Dim::sym(Sym::T));
        assert_eq!(d, Dim::sym(Sym::T).add(&Dim::sym(Sym::P)));
        assert_eq!(d.to_string(), "T + P");
        let e = Dim::sym(Sym::B).mul(&d).mul_c(2).add(&Dim::c(3));
        assert_eq!(e.to_string(), "2*B*T + 2*B*P + 3");
        assert_eq!(Dim::parse(&e.to_string()).unwrap(), e);
        assert_eq!(Dim::parse("T - 1").unwrap().eval(&Bindings::new(1, 5, 0)), 4);
        assert_eq!(e.eval(&Bindings::new(2, 3, 4)), 31);
        assert_eq!(Dim::c(12).div_c(4), Some(Dim::c(3)));
        assert!(Dim::parse("Q").is_err());
    }
}
