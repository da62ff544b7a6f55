//! Element-wise ops: Unary, Binary (numpy broadcasting), Affine, ClampMax.
//! NaN propagates as in PyTorch (`minimum`/`maximum`/`clamp` keep NaN).

use super::{broadcast_index, broadcast_shape, f32_of, KResult};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::op::{Binary, Unary};

pub fn unary(u: Unary, x: &HostTensor) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    Ok(HostTensor::f32(x.shape.clone(), xs.iter().map(|&v| u.apply(v)).collect()))
}

/// `op(a, b)` with numpy broadcasting.
pub fn binary(op: Binary, a: &HostTensor, b: &HostTensor) -> KResult<HostTensor> {
    let av = f32_of(a, "lhs")?;
    let bv = f32_of(b, "rhs")?;
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let ia = broadcast_index(&a.shape, &shape);
    let ib = broadcast_index(&b.shape, &shape);
    let out = ia.iter().zip(&ib).map(|(&i, &j)| op.apply(av[i], bv[j])).collect();
    Ok(HostTensor::f32(shape, out))
}

/// `x * scale + shift` (two roundings, no fused multiply-add).
pub fn affine(x: &HostTensor, scale: f32, shift: f32) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    Ok(HostTensor::f32(x.shape.clone(), xs.iter().map(|&v| v * scale + shift).collect()))
}

/// `min(x, max)`; NaN stays NaN (as `torch.clamp`).
pub fn clamp_max(x: &HostTensor, max: f32) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    Ok(HostTensor::f32(x.shape.clone(), xs.iter().map(|&v| if v > max { max } else { v }).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::*;

    #[test]
    fn gelu_exact_matches_known_values() {
        // Values of 0.5 x (1 + erf(x / sqrt 2)) (x * Phi(x)) from tables of the normal CDF.
        let x = t(&[7], &[-3., -1., -0.5, 0., 0.5, 1., 3.]);
        let y = unary(Unary::Gelu, &x).unwrap();
        let phi = [
            0.0013498980316301,
            0.15865525393145707,
            0.3085375387259869,
            0.5,
            0.6914624612740131,
            0.8413447460685429,
            0.9986501019683699,
        ];
        let expected: Vec<f32> =
            [-3., -1., -0.5, 0., 0.5, 1., 3.].iter().zip(phi).map(|(x, p)| (x * p) as f32).collect();
        assert_close(f(&y), &expected, 1e-7, 1e-6);
    }

    #[test]
    fn gelu_tanh_matches_formula_and_is_close_to_exact() {
        let xs = [-2.5f32, -1., -0.1, 0., 0.3, 1., 2.];
        let y = unary(Unary::GeluTanh, &t(&[7], &xs)).unwrap();
        let expected: Vec<f32> = xs
            .iter()
            .map(|&x| {
                let x = x as f64;
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
                (0.5 * x * (1.0 + inner.tanh())) as f32
            })
            .collect();
        assert_close(f(&y), &expected, 1e-7, 1e-6);
        let exact = unary(Unary::Gelu, &t(&[7], &xs)).unwrap();
        assert_close(f(&y), f(&exact), 1e-3, 0.0);
        // GELU(1) exact = 0.8413447; tanh approx = 0.8411920.
        assert!((f(&y)[5] - 0.841192).abs() < 1e-6);
    }

    #[test]
    fn simple_unaries() {
        let x = t(&[4], &[-2., 0., 1., 4.]);
        let silu: Vec<f32> = [-2f64, 0., 1., 4.].iter().map(|&v| (v / (1.0 + (-v).exp())) as f32).collect();
        assert_close(f(&unary(Unary::Silu, &x).unwrap()), &silu, 1e-7, 1e-6);
        assert_close(f(&unary(Unary::Exp, &x).unwrap()), &[0.13533528, 1., std::f32::consts::E, 54.59815], 0.0, 1e-6);
        assert_close(f(&unary(Unary::Neg, &x).unwrap()), &[2., -0., -1., -4.], 0.0, 0.0);
        assert_close(
            f(&unary(Unary::Sqrt, &t(&[3], &[0., 4., 2.])).unwrap()),
            &[0., 2., std::f32::consts::SQRT_2],
            0.0,
            1e-7,
        );
        assert_close(f(&unary(Unary::Tanh, &x).unwrap()), &[-0.9640276, 0., 0.7615942, 0.9993293], 1e-7, 1e-6);
        assert!(unary(Unary::Exp, &ti(&[1], &[1])).is_err());
    }

    #[test]
    fn binary_broadcasts_like_numpy() {
        // [2, 1, 3] with [2, 1] -> [2, 2, 3]
        let a = t(&[2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = t(&[2, 1], &[10., 20.]);
        let y = binary(Binary::Add, &a, &b).unwrap();
        assert_eq!(y.shape, vec![2, 2, 3]);
        assert_close(f(&y), &[11., 12., 13., 21., 22., 23., 14., 15., 16., 24., 25., 26.], 0.0, 0.0);
        let y = binary(Binary::Sub, &b, &a).unwrap();
        assert_close(f(&y), &[9., 8., 7., 19., 18., 17., 6., 5., 4., 16., 15., 14.], 0.0, 0.0);
        // scalar operand
        let y = binary(Binary::Mul, &a, &HostTensor::scalar(2.0)).unwrap();
        assert_eq!(y.shape, vec![2, 1, 3]);
        assert_close(f(&y), &[2., 4., 6., 8., 10., 12.], 0.0, 0.0);
        let y = binary(Binary::Div, &t(&[2], &[1., 3.]), &t(&[2], &[2., 4.])).unwrap();
        assert_close(f(&y), &[0.5, 0.75], 0.0, 0.0);
        assert!(binary(Binary::Add, &t(&[2], &[0.; 2]), &t(&[3], &[0.; 3])).is_err());
    }

    #[test]
    fn min_max_propagate_nan() {
        let a = t(&[3], &[1., f32::NAN, -1.]);
        let b = t(&[3], &[0., 0., f32::NAN]);
        let mn = binary(Binary::Min, &a, &b).unwrap();
        let mx = binary(Binary::Max, &a, &b).unwrap();
        assert_eq!(f(&mn)[0], 0.);
        assert_eq!(f(&mx)[0], 1.);
        assert!(f(&mn)[1].is_nan() && f(&mn)[2].is_nan() && f(&mx)[1].is_nan() && f(&mx)[2].is_nan());
    }

    #[test]
    fn affine_and_clamp_max() {
        let x = t(&[3], &[1., -2., 5.]);
        assert_close(f(&affine(&x, 0.5, 1.0).unwrap()), &[1.5, 0., 3.5], 0.0, 0.0);
        let y = clamp_max(&t(&[4], &[1., 4.6, 10., f32::NAN]), 4.6).unwrap();
        assert_eq!(&f(&y)[..3], &[1., 4.6, 4.6]);
        assert!(f(&y)[3].is_nan());
    }
}
