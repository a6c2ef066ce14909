//! Sampler parity with diffusers: step-by-step traces (tools/reference/schedulers.py) replayed
//! through our schedulers, the schedule arithmetic over many step counts, and config/argument
//! errors.

use crate::common;

use burn::tensor::{Tensor, TensorData};
use common::{RefTensors, assert_close, device, err_of, fixture, max_abs_diff, reference};
use inkstone::config::SchedulerConfig;
use inkstone::schedulers::{Sampler, Scheduler};

/// Max abs error allowed on model inputs and samples (f32 arithmetic, ours vs diffusers').
const SAMPLE_TOL: f32 = 1e-5;

/// DPM-Solver++ integrates in x_0: with the synthetic model of the traces, the first x_0
/// estimates (sample - 14.6 eps) / 0.068 are ~1e2, where an f32 ulp is 1.5e-5; the samples
/// carry that rounding (measured ≤ 1.4e-5).
const DPM_TOL: f32 = 5e-5;

fn config(name: &str) -> SchedulerConfig {
    let path = fixture(&format!("ref/sched_{name}.scheduler_config.json"));
    SchedulerConfig::from_json(&std::fs::read(&path).unwrap()).unwrap()
}

/// Row `i` of a per-step stack `[steps, b, c, h, w]`.
fn row(r: &RefTensors, key: &str, i: usize) -> Tensor<4> {
    let shape = r.shape(key);
    let per: usize = shape[1..].iter().product();
    let data = r.f32s(key)[i * per..(i + 1) * per].to_vec();
    Tensor::from_data(TensorData::new(data, [shape[1], shape[2], shape[3], shape[4]]), &device())
}

fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Max |got - want| over two schedules, asserting equal lengths.
fn schedule_err(what: &str, got: &[f64], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    got.iter().zip(want).map(|(g, w)| (g - *w as f64).abs()).fold(0.0, f64::max)
}

/// How a trace's schedule was set.
enum Custom<'a> {
    None,
    Timesteps(&'a [f64]),
    Sigmas(&'a [f64]),
}

/// Replays a diffusers trace: our scheduler's own sample chain, fed the reference model outputs
/// and noises, must reproduce every model input and step result.
fn replay(name: &str, steps: usize, custom: Option<&[f64]>, tol: f32) {
    replay_with(name, steps, custom.map_or(Custom::None, Custom::Timesteps), tol);
}

fn replay_with(name: &str, steps: usize, custom: Custom, tol: f32) {
    let r = reference(&format!("sched_{name}"));
    let mut s = Scheduler::new(&config(name));
    let sigmas_given = matches!(custom, Custom::Sigmas(_));
    match custom {
        Custom::None => s.set_timesteps(steps, None).unwrap(),
        Custom::Timesteps(ts) => s.set_timesteps(steps, Some(ts)).unwrap(),
        Custom::Sigmas(sigmas) => s.set_sigmas(sigmas).unwrap(),
    }

    let want = r.f32s("timesteps");
    let err = schedule_err(&format!("{name} timesteps"), s.timesteps(), &want);
    println!("{name}: timesteps {:?}, max abs error {err:.3e}", s.timesteps());
    // Timesteps interpolated from user sigmas go through numpy's float32 log (its own SIMD
    // code, not correctly rounded): 1 ulp of the largest allowed there; exact elsewhere.
    let ts_tol = if sigmas_given { f32::EPSILON as f64 * max_abs(&want) as f64 } else { 0.0 };
    assert!(err <= ts_tol, "{name}: timesteps differ by {err:e}");
    if r.has("sigmas") {
        let want = r.f32s("sigmas");
        let rel = schedule_err(&format!("{name} sigmas"), s.sigmas().unwrap(), &want) / max_abs(&want) as f64;
        println!("{name}: sigmas max error {rel:.3e} relative to the largest");
        assert!(rel <= 1e-7, "{name}: sigmas relative error {rel:e}");
    }
    let init = r.f32s("init_noise_sigma")[0];
    assert!(
        ((s.init_noise_sigma() as f32) - init).abs() <= 1e-6 * init,
        "{name}: init_noise_sigma {} vs {init}",
        s.init_noise_sigma()
    );

    let used = r.i64s("noise_used");
    let mut sample = r.tensor::<4>("latents_noise").mul_scalar(s.init_noise_sigma() as f32);
    let mut worst = 0.0f32;
    assert_eq!(used.len(), s.timesteps().len(), "{name}: step count");
    for (i, &drew) in used.iter().enumerate() {
        let input = s.scale_model_input(sample.clone(), i);
        assert_close(&format!("{name} step {i} model input"), input, row(&r, "model_input", i), tol);
        assert_eq!(s.needs_noise(i), drew == 1, "{name} step {i}: needs_noise");
        let noise = s.needs_noise(i).then(|| row(&r, "noise", i));
        sample = s.step(row(&r, "model_output", i), i, sample, noise);
        let err = max_abs_diff(sample.clone(), row(&r, "sample", i));
        assert!(err <= tol, "{name} step {i} sample: max abs error {err:e} > {tol:e}");
        worst = worst.max(err);
    }
    println!("{name}: {} steps, samples max abs error {worst:.3e} (tolerance {tol:.0e})", s.timesteps().len());
}

#[test]
fn flow_match_shift1_28_steps() {
    replay("flow_shift1", 28, None, SAMPLE_TOL);
}

#[test]
fn flow_match_shift3_28_steps() {
    replay("flow_shift3", 28, None, SAMPLE_TOL);
}

#[test]
fn flow_match_stochastic_4_steps() {
    replay("flow_stochastic", 4, None, SAMPLE_TOL);
}

#[test]
fn flow_match_stochastic_custom_timesteps() {
    replay("flow_stochastic_custom", 4, Some(&[1000.0, 750.0, 500.0, 250.0]), SAMPLE_TOL);
}

#[test]
fn euler_epsilon_custom_timesteps() {
    replay("euler_eps_custom", 4, Some(&[999.0, 749.5, 499.0, 249.0]), SAMPLE_TOL);
}

#[test]
fn euler_epsilon_linspace() {
    replay("euler_eps_linspace", 20, None, SAMPLE_TOL);
}

#[test]
fn euler_epsilon_leading_steps_offset() {
    replay("euler_eps_leading", 10, None, SAMPLE_TOL);
}

#[test]
fn euler_v_prediction_trailing() {
    replay("euler_v_trailing", 12, None, SAMPLE_TOL);
}

#[test]
fn euler_v_prediction_trailing_zero_snr() {
    // Zero terminal SNR: the first sigma is 4096, so the initial sample is ~1e4 (f32 ulp 1e-3)
    // and the first step cancels it down to ~30; torch's (MKL) sqrt also rounds that sigma one
    // ulp differently. 1e-7 of the initial magnitude.
    replay("euler_v_trailing_zero_snr", 6, None, 2e-3);
}

#[test]
fn lcm_default_4_steps() {
    replay("lcm_default", 4, None, SAMPLE_TOL);
}

#[test]
fn lcm_custom_timesteps() {
    replay("lcm_custom", 4, Some(&[999.0, 749.0, 499.0, 249.0]), SAMPLE_TOL);
}

#[test]
fn ddim_leading_steps_offset() {
    replay("ddim_leading", 10, None, SAMPLE_TOL);
}

#[test]
fn ddim_v_prediction_trailing_clipped() {
    replay("ddim_v_trailing_clip", 5, None, SAMPLE_TOL);
}

#[test]
fn euler_custom_sigmas() {
    replay_with("euler_sigmas", 5, Custom::Sigmas(&[14.6, 7.0, 3.0, 1.0, 0.3, 0.0]), SAMPLE_TOL);
}

#[test]
fn flow_match_custom_sigmas() {
    replay_with("flow_sigmas", 4, Custom::Sigmas(&[1.0, 0.75, 0.5, 0.25]), SAMPLE_TOL);
}

/// The scheduler_config.json of every SD-1.x repo: PLMS, leading spacing, steps_offset 1.
#[test]
fn pndm_sd1_plms() {
    replay("pndm_sd1", 10, None, SAMPLE_TOL);
}

#[test]
fn pndm_runge_kutta_warm_up_linspace_alpha_one() {
    replay("pndm_prk_linspace", 6, None, SAMPLE_TOL);
}

#[test]
fn pndm_v_prediction_trailing_trained_betas() {
    replay("pndm_v_trailing_trained", 7, None, SAMPLE_TOL);
}

#[test]
fn dpm_2m_karras() {
    replay("dpm_2m_karras", 20, None, DPM_TOL);
}

#[test]
fn dpm_2m_linspace() {
    replay("dpm_2m_linspace", 8, None, DPM_TOL);
}

#[test]
fn dpm_3m_v_prediction_leading_sigma_min() {
    replay("dpm_3m_v_leading_sigma_min", 12, None, DPM_TOL);
}

#[test]
fn dpm_1_trailing_trained_betas() {
    replay("dpm_1_trailing_trained", 6, None, DPM_TOL);
}

#[test]
fn dpm_2m_heun_euler_at_final() {
    replay("dpm_2m_heun_euler_at_final", 16, None, DPM_TOL);
}

#[test]
fn dpm_2m_sde_karras() {
    replay("dpm_2m_sde_karras", 10, None, DPM_TOL);
}

#[test]
fn dpm_3m_sde_v_prediction() {
    replay("dpm_3m_sde_v", 9, None, DPM_TOL);
}

#[test]
fn dpm_2m_sde_heun() {
    replay("dpm_2m_sde_heun", 6, None, DPM_TOL);
}

#[test]
fn dpm_2m_custom_timesteps() {
    replay("dpm_2m_custom", 4, Some(&[999.0, 749.0, 499.0, 249.0]), DPM_TOL);
}

#[test]
fn euler_ancestral_linspace() {
    replay("euler_a_linspace", 10, None, SAMPLE_TOL);
}

#[test]
fn euler_ancestral_v_prediction_leading() {
    replay("euler_a_v_leading", 8, None, SAMPLE_TOL);
}

#[test]
fn euler_ancestral_trailing_zero_snr() {
    // As euler_v_trailing_zero_snr: the first sigma is 4096, samples ~1e4 at first.
    replay("euler_a_trailing_zero_snr", 5, None, 2e-3);
}

#[test]
fn ddpm_leading_steps_offset() {
    replay("ddpm_leading", 10, None, SAMPLE_TOL);
}

#[test]
fn ddpm_v_prediction_trailing_clipped_small_log() {
    replay("ddpm_v_trailing_small_log", 6, None, SAMPLE_TOL);
}

#[test]
fn ddpm_trained_betas_linspace_clipped() {
    replay("ddpm_trained_linspace", 5, None, SAMPLE_TOL);
}

#[test]
fn euler_ancestral_trained_betas_trailing() {
    replay("euler_a_trained_trailing", 5, None, SAMPLE_TOL);
}

#[test]
fn ddpm_custom_timesteps_fixed_large() {
    replay("ddpm_custom_large_linspace", 4, Some(&[999.0, 749.0, 499.0, 249.0]), SAMPLE_TOL);
}

/// Timesteps (exactly), sigmas and init_noise_sigma over many step counts per spacing.
#[test]
fn schedules_match_over_step_counts() {
    let r = reference("sched_schedules");
    let names = [
        "flow_shift3",
        "euler_linspace",
        "euler_leading",
        "euler_trailing",
        "euler_linear_trailing_zero_snr",
        "ddim_linspace",
        "ddim_leading",
        "ddim_trailing",
        "lcm_default",
        "pndm_sd1",
        "pndm_prk_linspace",
        "pndm_trailing",
        "dpm_linspace",
        "dpm_leading",
        "dpm_trailing",
        "dpm_karras",
        "dpm_cosine_clipped",
        "euler_a_leading",
        "ddpm_linspace",
        "ddpm_trailing",
    ];
    let mut worst_sigma = 0.0f64;
    for name in names {
        let mut s = Scheduler::new(&config(&format!("sweep_{name}")));
        for n in [1, 2, 3, 4, 6, 7, 9, 10, 25, 28, 50, 61] {
            let key = format!("{name}.{n}");
            if !r.has(&format!("{key}.timesteps")) {
                assert!(s.set_timesteps(n, None).is_err(), "{key}: diffusers refuses this step count");
                continue;
            }
            s.set_timesteps(n, None).unwrap();
            let err = schedule_err(&key, s.timesteps(), &r.f32s(&format!("{key}.timesteps")));
            assert_eq!(err, 0.0, "{key}: timesteps {:?}", s.timesteps());
            if r.has(&format!("{key}.sigmas")) {
                let want = r.f32s(&format!("{key}.sigmas"));
                // Relative: zero-SNR schedules start at sigma 4096.
                let rel = schedule_err(&key, s.sigmas().unwrap(), &want) / max_abs(&want).max(1.0) as f64;
                assert!(rel <= 1e-7, "{key}: sigmas relative error {rel:e}");
                worst_sigma = worst_sigma.max(rel);
            }
            if r.has(&format!("{key}.init_noise_sigma")) {
                let want = r.f32s(&format!("{key}.init_noise_sigma"))[0];
                let got = s.init_noise_sigma() as f32;
                assert!((got - want).abs() <= 1e-6 * want.max(1.0), "{key}: init_noise_sigma {got} vs {want}");
            }
        }
    }
    println!("schedules: timesteps exact, sigmas max relative error {worst_sigma:.3e}");
}

#[test]
fn alphas_cumprod_per_beta_schedule() {
    let r = reference("sched_schedules");
    for name in ["linear", "scaled_linear", "squaredcos_cap_v2", "scaled_linear_zero_snr"] {
        let Scheduler::Ddim(s) = Scheduler::new(&config(&format!("betas_{name}"))) else { panic!("not DDIM") };
        let err = schedule_err(name, s.alphas_cumprod(), &r.f32s(&format!("alphas_cumprod.{name}")));
        println!("alphas_cumprod {name}: max abs error {err:.3e}");
        // Bit-exact, except that the zero-SNR rescale takes a square root of the whole vector,
        // which torch's vectorised CPU kernel does not round correctly (1 ulp off in places).
        let tol = if name.ends_with("zero_snr") { 5e-7 } else { 0.0 };
        assert!(err <= tol, "alphas_cumprod {name}: {err:e}");
    }
}

#[test]
fn defaults_per_scheduler_kind() {
    let cases = [
        ("flow_shift3", (28, 4.5)),
        ("flow_stochastic", (4, 1.0)),
        ("euler_eps_linspace", (25, 7.5)),
        ("lcm_default", (4, 1.0)),
        ("ddim_leading", (50, 7.5)),
    ];
    for (name, want) in cases {
        assert_eq!(Scheduler::new(&config(name)).default_steps_and_guidance(), want, "{name}");
    }
}

#[test]
fn invalid_timesteps_are_errors() {
    for name in ["flow_shift3", "euler_eps_linspace", "ddim_leading", "lcm_default"] {
        let mut s = Scheduler::new(&config(name));
        let msg = err_of(s.set_timesteps(0, None));
        assert!(msg.contains("between 1 and num_train_timesteps (1000), got 0"), "{name}: {msg}");
        let msg = err_of(s.set_timesteps(1001, None));
        assert!(msg.contains("got 1001"), "{name}: {msg}");
    }
    let mut ddim = Scheduler::new(&config("ddim_leading"));
    let msg = err_of(ddim.set_timesteps(2, Some(&[999.0, 499.0])));
    assert_eq!(msg, "custom timesteps are not supported by DDIMScheduler");
    let msg = err_of(ddim.set_timesteps(1000, None));
    assert!(msg.contains("1000 steps with steps_offset 1 give timestep 1000, outside 0..1000"), "{msg}");

    let mut lcm = Scheduler::new(&config("lcm_default"));
    let msg = err_of(lcm.set_timesteps(3, Some(&[999.0, 499.0, 749.0])));
    assert_eq!(msg, "LCMScheduler custom timesteps [999.0, 499.0, 749.0]: must be strictly descending");
    let msg = err_of(lcm.set_timesteps(2, Some(&[1000.0, 499.0])));
    assert!(msg.ends_with("1000 is not an integer in 0..=999"), "{msg}");
    let msg = err_of(lcm.set_timesteps(2, Some(&[999.0, 499.5])));
    assert!(msg.ends_with("499.5 is not an integer in 0..=999"), "{msg}");
    let msg = err_of(lcm.set_timesteps(4, Some(&[999.0, 499.0])));
    assert!(msg.ends_with("2 timesteps for 4 steps"), "{msg}");
    let msg = err_of(lcm.set_timesteps(51, None));
    assert!(msg.contains("original_inference_steps (50)"), "{msg}");

    let mut flow = Scheduler::new(&config("flow_shift3"));
    let msg = err_of(flow.set_timesteps(2, Some(&[1000.5, 500.0])));
    assert!(msg.ends_with("1000.5 is not a number in 0..=1000"), "{msg}");
    let mut euler = Scheduler::new(&config("euler_eps_linspace"));
    let msg = err_of(euler.set_timesteps(2, Some(&[500.0, 500.0])));
    assert!(msg.ends_with("must be strictly descending"), "{msg}");
    let msg = err_of(euler.set_timesteps(1, Some(&[])));
    assert!(msg.ends_with(": empty"), "{msg}");
}

#[test]
fn unsupported_scheduler_configs_are_errors() {
    let text =
        br#"{"_class_name": "EulerDiscreteScheduler", "trained_betas": [0.1, 0.2], "num_train_timesteps": 1000}"#;
    let msg = SchedulerConfig::from_json(text).unwrap_err().to_string();
    assert!(msg.contains("trained_betas") && msg.contains("2 values for num_train_timesteps 1000"), "{msg}");
}

/// The tiny SD pipeline's own scheduler folder (Euler, linspace, steps_offset 1) builds and
/// schedules like the SD 1.x Euler config.
#[test]
fn tiny_sd_scheduler_config() {
    let text = std::fs::read(fixture("tiny-sd/scheduler/scheduler_config.json")).unwrap();
    let mut s = Scheduler::new(&SchedulerConfig::from_json(&text).unwrap());
    assert!(matches!(s, Scheduler::EulerDiscrete(_)));
    assert_eq!(s.default_steps_and_guidance(), (25, 7.5));
    s.set_timesteps(2, None).unwrap();
    assert_eq!(s.timesteps(), [999.0, 0.0]);
    assert!((s.init_noise_sigma() - 14.6146).abs() < 1e-3, "{}", s.init_noise_sigma());
}

#[test]
fn try_new_rejects_unvalidated_configs() {
    let SchedulerConfig::EulerDiscrete(mut c) = config("euler_eps_linspace") else { panic!("not Euler") };
    c.use_karras_sigmas = true;
    let msg = Scheduler::try_new(&SchedulerConfig::EulerDiscrete(c)).unwrap_err().to_string();
    assert_eq!(msg, "scheduler/scheduler_config.json: unsupported value true for `use_karras_sigmas`");
}

/// The names the page's picker, the `.d.ts` and the README offer are exactly the ones that parse.
#[test]
fn sampler_names_are_the_same_everywhere() {
    let names: Vec<&str> = Sampler::NAMES.iter().map(|(n, _)| *n).collect();
    for n in &names {
        assert_eq!(Sampler::parse(n).unwrap().name(), *n);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let html = std::fs::read_to_string(root.join("www/index.html")).unwrap();
    let select = &html[html.find(r#"<select id="scheduler">"#).expect("picker")..];
    let select = &select[..select.find("</select>").unwrap()];
    let options: Vec<&str> =
        select.split(r#"<option value=""#).skip(1).map(|o| &o[..o.find('"').unwrap()]).collect();
    assert_eq!(options[0], "", "the default is the model's own");
    assert_eq!(options[1..], names[..]);
    let dts = std::fs::read_to_string(root.join("pkg/index.d.ts")).unwrap();
    let union = &dts[dts.find("export type SchedulerName =").unwrap()..];
    let union = &union[..union.find(';').unwrap()];
    let quoted: Vec<&str> = union.split('\'').skip(1).step_by(2).collect();
    assert_eq!(quoted, names);
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for n in &names {
        assert!(readme.contains(&format!("`{n}`")), "README does not document {n}");
    }
}

/// diffusers' `from_config`: keys the file sets carry over, the others take the new class's
/// defaults, and the name's own switches win.
#[test]
fn sampler_configs_are_built_like_from_config() {
    use inkstone::config::{PredictionType, TimestepSpacing};
    let text = br#"{"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1",
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "prediction_type": "v_prediction", "steps_offset": 1, "use_karras_sigmas": false}"#;
    let own = SchedulerConfig::from_json(text).unwrap();
    let file = SchedulerConfig::json_value(text).unwrap();
    let SchedulerConfig::DpmSolverMultistep(c) = Sampler::parse("dpm++2m-sde-karras").unwrap().config(&file, &own).unwrap()
    else {
        panic!("DPM")
    };
    assert_eq!((c.prediction_type, c.steps_offset, c.betas.beta_start), (PredictionType::VPrediction, 1, 0.00085));
    assert_eq!((c.algorithm_type.as_str(), c.solver_order, c.use_karras_sigmas), ("sde-dpmsolver++", 2, true));
    // The Euler file has no timestep_spacing: DPM's own default (linspace), not Euler's.
    assert_eq!(c.timestep_spacing, TimestepSpacing::Linspace);
    let SchedulerConfig::Ddim(d) = Sampler::parse("ddim").unwrap().config(&file, &own).unwrap() else { panic!("DDIM") };
    assert_eq!((d.timestep_spacing, d.clip_sample), (TimestepSpacing::Leading, true));
    let SchedulerConfig::Pndm(p) = Sampler::parse("pndm").unwrap().config(&file, &own).unwrap() else { panic!("PNDM") };
    assert!(p.skip_prk_steps);
}
