//! The training noise schedule equals diffusers' (docs/design.md §3 values, f32).

use mapo::sample::schedule::NoiseSchedule;

#[test]
fn sdxl_alphas_cumprod_match_diffusers() {
    let s = NoiseSchedule::sdxl();
    assert_eq!(s.num_train_timesteps(), 1000);
    // torch: cumprod(1 - linspace(√0.00085, √0.012, 1000, float32)², float32)
    for (t, want) in [(0usize, 0.999_15_f32), (499, 0.27766943), (999, 0.004_660_095)] {
        let got = s.alphas_cumprod[t];
        assert!((got - want).abs() <= 2e-7 * want, "alphas_cumprod[{t}] = {got}, want {want}");
    }
}
