//! The kernels against values PyTorch computed (`testdata/torch_golden.json`,
//! made by `testdata/torch_golden.py`): resizing in every mode at up- and
//! down-sampling ratios, GELU (exact and tanh), norms, linear algebra, DiT's
//! timestep embedding, LlamaGen's RoPE, and VAR's top-k/top-p filter.

use super::testutil::*;
use super::*;
use ecarc_compiler::ir::op::{Resample, Unary};
use serde_json::Value;

fn tensor(v: &Value) -> HostTensor {
    let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data: Vec<f32> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    HostTensor::f32(shape, data)
}

#[test]
fn kernels_match_pytorch() {
    let golden: Value = serde_json::from_str(include_str!("testdata/torch_golden.json")).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 60);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let attrs = &case["attrs"];
        let a = |k: &str| attrs[k].as_f64().unwrap();
        let ins: Vec<HostTensor> = case["inputs"].as_array().unwrap().iter().map(tensor).collect();
        let expected = tensor(&case["out"]);
        let (got, atol, rtol) = match case["op"].as_str().unwrap() {
            "resize" => {
                let mode = match attrs["mode"].as_str().unwrap() {
                    "nearest" => Resample::Nearest,
                    "bilinear" => Resample::Bilinear,
                    "bicubic" => Resample::Bicubic,
                    "area" => Resample::Area,
                    m => panic!("{m}"),
                };
                (layout::resize(&ins[0], mode, a("h") as usize, a("w") as usize), 1e-6, 1e-5)
            }
            "gelu" => (elementwise::unary(Unary::Gelu, &ins[0]), 1e-6, 1e-6),
            "gelu_tanh" => (elementwise::unary(Unary::GeluTanh, &ins[0]), 1e-6, 1e-6),
            "silu" => (elementwise::unary(Unary::Silu, &ins[0]), 1e-6, 1e-6),
            "tanh" => (elementwise::unary(Unary::Tanh, &ins[0]), 1e-6, 1e-6),
            "exp" => (elementwise::unary(Unary::Exp, &ins[0]), 0.0, 1e-6),
            "layer_norm" => (norm::layer_norm(&ins[0], ins.get(1), ins.get(2), a("eps") as f32), 1e-5, 1e-5),
            "rms_norm" => (norm::rms_norm(&ins[0], &ins[1], a("eps") as f32), 1e-5, 1e-5),
            "group_norm" => {
                (norm::group_norm(&ins[0], &ins[1], &ins[2], a("groups") as usize, a("eps") as f32), 1e-5, 1e-5)
            }
            "l2_normalize" => (norm::l2_normalize(&ins[0], a("eps") as f32), 1e-6, 1e-5),
            "softmax" => (norm::softmax(&ins[0]), 1e-7, 1e-5),
            "linear" => (linalg::linear(&ins[0], &ins[1], ins.get(2)), 1e-5, 1e-5),
            "matmul" => (linalg::matmul(&ins[0], &ins[1]), 1e-5, 1e-5),
            "conv2d" => {
                (linalg::conv2d(&ins[0], &ins[1], ins.get(2), a("stride") as usize, a("pad") as usize), 1e-5, 1e-5)
            }
            // Arguments t * f reach ~1000 rad, where one f32 ulp is 6e-5: a 1-ulp
            // difference between PyTorch's and libm's expf in f moves cos/sin by that much.
            "sinusoid" => (position::sinusoid(&ins[0], a("dim") as usize, a("max_period")), 2e-4, 0.0),
            "rope" => (position::rope(&ins[0], &ins[1], &ins[2]), 1e-6, 1e-6),
            "filter" => {
                let (rows, v) = (ins[0].shape[0], ins[0].shape[1]);
                let lv = f(&ins[0]);
                let mut kept = vec![];
                for r in 0..rows {
                    let w = generate::filtered_weights(
                        &lv[r * v..(r + 1) * v],
                        1.0,
                        a("top_k") as usize,
                        a("top_p") as f32,
                    );
                    kept.extend(w.iter().map(|&x| if x > 0.0 { 1.0 } else { 0.0 }));
                }
                (Ok(HostTensor::f32(ins[0].shape.clone(), kept)), 0.0, 0.0)
            }
            op => panic!("{name}: unknown op {op}"),
        };
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.shape, expected.shape, "{name}");
        assert_close_named(name, f(&got), f(&expected), atol, rtol);
    }
}
