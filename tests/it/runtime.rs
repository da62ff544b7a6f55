//! The reference runtime end to end: every tiny model samples to an image.

use crate::common::{root, spec_of};
use ecarc_runtime::driver::{Generator, Quiet, SampleOptions};
use ecarc_runtime::reference::Reference;
use ecarc_runtime::weights::Weights;

fn tiny(name: &str) -> ecarc_compiler::ModelSpec {
    spec_of(&root().join(format!("examples/tiny/{name}.ecar")), &[])
}

fn sample(name: &str, labels: Vec<i64>, seed: u64) -> ecarc_runtime::driver::SampleOutput {
    let spec = tiny(name);
    let backend = Reference::new();
    let weights = Weights::random(&spec, 0);
    let g = Generator::from_spec(spec, &backend, &weights).expect("generator");
    g.sample(&SampleOptions { labels, seed, flow_map: false, record: false }, &Quiet).expect("sample")
}

#[test]
fn every_tiny_model_samples_an_image() {
    for name in ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"] {
        let t = std::time::Instant::now();
        let out = sample(name, vec![1, 3], 5);
        let img = out.image.as_f32().unwrap();
        assert_eq!(out.image.shape[0], 2, "{name}");
        assert_eq!(out.image.shape[1], 3, "{name}");
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)), "{name}: image outside [0, 1]");
        eprintln!("{name}: {:?} in {:?}", out.image.shape, t.elapsed());
    }
}
