//! The openvoice engine on real ONNX Runtime and real base engines, with tone-colour graphs the
//! tests generate (OpenVoice's weights cannot be had here): the graphs have the contract's inputs
//! and outputs and compute their outputs from them, so every step of the engine runs for real,
//! and the tests check what reaches each graph against the same computation done here.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use tts_contracts::{VoiceInfo, VoiceRecord, VoiceStatus};
use tts_tests::clips::{self, FIRST, SECOND, THIRD};
use tts_tests::engines::stock_input;
use tts_tests::onnx::{self, ConverterNames};
use tts_tests::{Deployment, KOKORO_VOICE, engines, spawn_engines_with, test_settings};
use tts_worker::engine::CloneSettings;
use tts_worker::engine::openvoice::{
    BINS, CONVERTER_FILE, DEFAULT_TAU, EXTRACTOR_FILE, HOP, MODEL_MISSING, OpenVoiceEngine,
    OpenVoiceOptions, SAMPLE_RATE, Spectrogram, TONE_COLOR_DIM,
};
use tts_worker::engine::{
    Audio, Engine, EngineError, EngineErrorKind, EngineHealth, EnrollInput, Step, SynthesisInput,
};
use tts_worker::voice::resample::resample;
use tts_worker::voice::{ANALYSIS_RATE, Analysis};

const PIPER_VOICE: &str = "en_US-joe-medium";

/// A base engine the test binary already loaded, lent to an openvoice engine.
struct Shared<E: Engine>(&'static E);

impl<E: Engine> Engine for Shared<E> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        self.0.voices()
    }

    fn languages(&self) -> Vec<String> {
        self.0.languages()
    }

    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        self.0.synthesize(input, progress)
    }

    fn health(&self) -> EngineHealth {
        self.0.health()
    }
}

fn piper_base() -> Arc<dyn Engine> {
    Arc::new(Shared(engines::piper()))
}

fn kokoro_base() -> Arc<dyn Engine> {
    Arc::new(Shared(engines::kokoro()))
}

fn options(dir: &Path, base_voice: &str) -> OpenVoiceOptions {
    OpenVoiceOptions {
        model_dir: dir.to_path_buf(),
        base_voice: base_voice.into(),
        tau: DEFAULT_TAU,
        device: "cpu".into(),
        threads: 1,
        sessions: 1,
        onnxruntime: engines::piper_options("cpu").onnxruntime,
    }
}

/// The engine over Piper, on a fresh directory of the contract's graphs.
fn over_piper() -> (OpenVoiceEngine, tempfile::TempDir) {
    let dir = onnx::openvoice_dir();
    let engine = OpenVoiceEngine::load(&options(dir.path(), PIPER_VOICE), piper_base())
        .expect("openvoice loads over piper");
    (engine, dir)
}

fn load_error(dir: &Path) -> EngineError {
    match OpenVoiceEngine::load(&options(dir, PIPER_VOICE), piper_base()) {
        Ok(_) => panic!("a model directory that breaks the contract loaded"),
        Err(e) => e,
    }
}

fn analysis() -> &'static Analysis {
    engines::analysis()
}

/// About 8 s of Piper's speaker, at the rate enrollment hands engines.
fn piper_reference() -> &'static [f32] {
    static CLIP: OnceLock<Vec<f32>> = OnceLock::new();
    CLIP.get_or_init(|| {
        let (speech, rate) = clips::speech(&format!("{FIRST} {SECOND}"));
        resample(&speech, rate, ANALYSIS_RATE).unwrap()
    })
}

/// About 5 s of a Kokoro voice: another speaker, at the rate enrollment hands engines.
fn kokoro_reference() -> &'static [f32] {
    static CLIP: OnceLock<Vec<f32>> = OnceLock::new();
    CLIP.get_or_init(|| {
        let audio = engines::kokoro()
            .synthesize(&stock_input(THIRD, KOKORO_VOICE, "en"), &mut |_| {})
            .expect("kokoro speaks");
        resample(&audio.samples, audio.sample_rate, ANALYSIS_RATE).unwrap()
    })
}

/// A cloned voice of the openvoice engine, with whatever the engine stored for it.
fn record(voice_id: &str, language: &str, engine_data: Option<serde_json::Value>) -> VoiceRecord {
    let info = VoiceInfo {
        voice_id: voice_id.into(),
        name: voice_id.into(),
        engine: "openvoice".into(),
        created_at: chrono::Utc::now(),
        language: language.into(),
        status: VoiceStatus::Ready,
        sample_rate: Some(SAMPLE_RATE),
        other_languages: Vec::new(),
        speed_range: None,
        native_language: None,
    };
    let mut record = VoiceRecord::enrolling(info, None, uuid::Uuid::new_v4());
    record.engine_data = engine_data;
    record
}

/// Enrols `reference` (16 kHz) as a voice speaking `language`; gives the stored data and the
/// progress reported.
fn enroll(
    engine: &OpenVoiceEngine,
    reference: &[f32],
    language: &str,
) -> Result<(serde_json::Value, Vec<(usize, usize)>), EngineError> {
    let voice = record("enrolling", language, None);
    let wav = clips::wav(reference, ANALYSIS_RATE);
    let settings = CloneSettings {
        evaluations: 1,
        seed: 7,
        time_limit: None,
    };
    let input = EnrollInput {
        analysis: analysis(),
        voice: &voice,
        reference,
        reference_wav: &wav,
        settings: &settings,
    };
    let mut steps = Vec::new();
    let enrollment = engine.enroll(&input, &mut |p| steps.push((p.done, p.total)))?;
    Ok((
        enrollment.engine_data.expect("engine data is stored"),
        steps,
    ))
}

fn tone_color(data: &serde_json::Value) -> Vec<f32> {
    data["tone_color"]
        .as_array()
        .expect("a tone_color array")
        .iter()
        .map(|v| v.as_f64().expect("numbers") as f32)
        .collect()
}

fn cloned_input(text: &str, language: &str, voice: &VoiceRecord) -> SynthesisInput {
    SynthesisInput {
        text: text.into(),
        voice_id: voice.info.voice_id.clone(),
        language: language.into(),
        speed: 1.0,
        streamed: false,
        voice: Some(voice.clone()),
        reference_wav: None,
        cancel: Default::default(),
    }
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// What the generated extractor computes, here in Rust: tanh of the mean log spectrum times its
/// projection.
fn expected_tone_color(samples: &[f32]) -> Vec<f32> {
    let spectrogram = Spectrogram::new().compute(samples).unwrap();
    let frames = spectrogram.nrows() as f32;
    let projection = onnx::weights(1, BINS * TONE_COLOR_DIM, 0.02);
    (0..TONE_COLOR_DIM)
        .map(|j| {
            let sum: f32 = (0..BINS)
                .map(|k| {
                    let mean = spectrogram.column(k).iter().map(|v| v.ln()).sum::<f32>() / frames;
                    mean * projection[k * TONE_COLOR_DIM + j]
                })
                .sum();
            sum.tanh()
        })
        .collect()
}

/// What the generated converter computes, here in Rust, for speech of whole hops: each frame's
/// log spectrum through its synthesis matrix and tanh, times `1 + tau * (target - source)` at
/// each sample position, at half scale.
fn expected_conversion(samples: &[f32], source: &[f32], target: &[f32], tau: f32) -> Vec<f32> {
    assert_eq!(samples.len() % HOP, 0);
    let spectrogram = Spectrogram::new().compute(samples).unwrap();
    let synthesis = onnx::weights(2, BINS * HOP, 0.02);
    let mut out = Vec::with_capacity(samples.len());
    for frame in spectrogram.rows() {
        for j in 0..HOP {
            let sum: f32 = (0..BINS)
                .map(|k| frame[k].ln() * synthesis[k * HOP + j])
                .sum();
            out.push(0.5 * sum.tanh() * (1.0 + tau * (target[j] - source[j])));
        }
    }
    out
}

#[test]
fn speakers_get_distinct_tone_colours_from_the_reference_encoder() {
    let (engine, _dir) = over_piper();
    let (joe, steps) = enroll(&engine, piper_reference(), "en").unwrap();
    assert_eq!(steps, [(1, 2), (2, 2)]);
    let (other, _) = enroll(&engine, kokoro_reference(), "en").unwrap();
    let (joe, other) = (tone_color(&joe), tone_color(&other));
    for colour in [&joe, &other] {
        assert_eq!(colour.len(), TONE_COLOR_DIM);
        assert!(colour.iter().all(|v| v.is_finite()));
    }
    assert!(
        max_difference(&joe, &other) > 0.05,
        "two speakers gave the same tone colour"
    );

    // The clip reaches the encoder as OpenVoice's spectrogram of it at 22050 Hz, time major.
    let at_22k = resample(piper_reference(), ANALYSIS_RATE, SAMPLE_RATE).unwrap();
    let expected = expected_tone_color(&at_22k);
    assert!(max_difference(&joe, &expected) < 1e-3);
    // The same clip gives the same colour.
    let (again, _) = enroll(&engine, piper_reference(), "en").unwrap();
    assert_eq!(tone_color(&again), joe);

    // The base voice's own colour was taken the same way at load.
    let source = engine.source_tone_color();
    assert_eq!(source.len(), TONE_COLOR_DIM);
    assert!(source.iter().all(|v| v.is_finite()));
    assert_eq!(engine.base_voice().voice_id, PIPER_VOICE);
}

#[test]
fn the_converter_gets_the_speech_and_both_tone_colours() {
    let (engine, _dir) = over_piper();
    let (first, _) = enroll(&engine, piper_reference(), "en").unwrap();
    let (second, _) = enroll(&engine, kokoro_reference(), "en").unwrap();
    let (first, second) = (tone_color(&first), tone_color(&second));

    // Two seconds of the reference at 22050 Hz, in whole hops.
    let at_22k = resample(piper_reference(), ANALYSIS_RATE, SAMPLE_RATE).unwrap();
    let speech = &at_22k[..(2 * SAMPLE_RATE as usize / HOP) * HOP];
    let converted = engine.convert(speech, &first).unwrap();
    assert_eq!(converted.len(), speech.len());
    let expected = expected_conversion(speech, engine.source_tone_color(), &first, DEFAULT_TAU);
    assert!(
        max_difference(&converted, &expected) < 1e-3,
        "the converter was not fed [1, 513, T], the source, the target and tau as the contract says"
    );
    // The target colour reaches the converter: another voice, other audio.
    let other = engine.convert(speech, &second).unwrap();
    assert!(max_difference(&converted, &other) > 0.01);

    // Speech of any length keeps its length: padded to whole frames, cut back after.
    let odd = &at_22k[..SAMPLE_RATE as usize + 77];
    assert_eq!(engine.convert(odd, &first).unwrap().len(), odd.len());
    let tiny = &at_22k[..100];
    assert_eq!(engine.convert(tiny, &first).unwrap().len(), tiny.len());
}

#[test]
fn cloned_voices_speak_through_the_base_engine_and_the_converter() {
    let (engine, _dir) = over_piper();
    assert!(engine.clones());
    assert!(engine.voices().is_empty(), "cloned voices only");
    assert_eq!(engine.languages(), ["en"]);
    let health = engine.health();
    assert!(health.ready);
    assert_eq!(health.device, "cpu");
    assert!(health.detail.contains("piper"), "{health:?}");

    let (first, _) = enroll(&engine, piper_reference(), "en").unwrap();
    let (second, _) = enroll(&engine, kokoro_reference(), "en").unwrap();
    let first = record("first", "en", Some(first));
    let second = record("second", "en", Some(second));

    let text = "The weather is lovely today. Shall we walk to the park after lunch?";
    let words = text.split_whitespace().count() as f32;
    let mut steps = Vec::new();
    let audio = engine
        .synthesize(&cloned_input(text, "en", &first), &mut |p| {
            steps.push((p.done, p.total))
        })
        .unwrap();
    assert_eq!(audio.sample_rate, SAMPLE_RATE);
    let per_word = audio.duration_seconds() / words;
    assert!(
        (0.15..=0.8).contains(&per_word),
        "{:.2} s for {words} words",
        audio.duration_seconds()
    );
    assert!(rms(&audio.samples) > 0.01, "silent audio");
    assert!(audio.samples.iter().all(|s| (-1.0..=1.0).contains(s)));
    // Two sentences spoken, then converted: each counted twice.
    assert_eq!(steps, [(1, 4), (2, 4), (4, 4)]);

    let other = engine
        .synthesize(&cloned_input(text, "en", &second), &mut |_| {})
        .unwrap();
    assert!(rms(&other.samples) > 0.01, "silent audio");
    let n = audio.samples.len().min(other.samples.len());
    assert!(
        max_difference(&audio.samples[..n], &other.samples[..n]) > 0.01,
        "two voices sounded the same"
    );
}

#[test]
fn mandarin_through_a_kokoro_base() {
    let dir = onnx::openvoice_dir();
    let engine = OpenVoiceEngine::load(&options(dir.path(), KOKORO_VOICE), kokoro_base())
        .expect("openvoice loads over kokoro");
    assert_eq!(engine.languages(), ["zh", "en", "es", "fr", "it", "pt-BR"]);
    assert!(engine.health().detail.contains("kokoro"));
    let (data, _) = enroll(&engine, piper_reference(), "zh").unwrap();
    let voice = record("mandarin", "zh", Some(data));
    let text = "今天天气很好，我们一起去公园散步吧。";
    let syllables = text
        .chars()
        .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
        .count();
    let audio = engine
        .synthesize(&cloned_input(text, "zh", &voice), &mut |_| {})
        .unwrap();
    assert_eq!(audio.sample_rate, SAMPLE_RATE);
    let per_syllable = audio.duration_seconds() / syllables as f32;
    assert!(
        (0.12..=0.6).contains(&per_syllable),
        "{:.2} s for {syllables} syllables",
        audio.duration_seconds()
    );
    assert!(rms(&audio.samples) > 0.01, "silent audio");
}

#[test]
fn a_model_directory_missing_a_graph_fails_to_load_naming_it() {
    for (missing, present) in [
        (EXTRACTOR_FILE, CONVERTER_FILE),
        (CONVERTER_FILE, EXTRACTOR_FILE),
    ] {
        let dir = onnx::openvoice_dir();
        std::fs::remove_file(dir.path().join(missing)).unwrap();
        let err = load_error(dir.path());
        assert_eq!(err.code(), MODEL_MISSING, "{err}");
        assert!(err.message().contains(&format!("lacks {missing}")), "{err}");
        assert!(
            !err.message().contains(&format!("lacks {present}")),
            "{err}"
        );
    }
    let err = load_error(Path::new("/nonexistent/openvoice"));
    assert_eq!(err.code(), MODEL_MISSING);
    assert!(err.message().contains("/nonexistent/openvoice"), "{err}");
}

#[test]
fn a_graph_with_a_wrong_input_or_output_name_fails_to_load_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let extractor = onnx::tone_color_extractor(TONE_COLOR_DIM);
    let renamed_input = onnx::tone_color_converter(&ConverterNames {
        spectrogram: "spec",
        ..Default::default()
    });
    onnx::write_openvoice_dir(dir.path(), Some(&extractor), Some(&renamed_input));
    let err = load_error(dir.path());
    let message = err.message();
    assert!(message.contains(CONVERTER_FILE), "{err}");
    assert!(
        message.contains("no input \"spectrogram\"") && message.contains("\"spec\""),
        "{err}"
    );

    let renamed_output = onnx::tone_color_converter(&ConverterNames {
        audio: "wav",
        ..Default::default()
    });
    onnx::write_openvoice_dir(dir.path(), Some(&extractor), Some(&renamed_output));
    let err = load_error(dir.path());
    assert!(err.message().contains(CONVERTER_FILE), "{err}");
    assert!(err.message().contains("no output \"audio\""), "{err}");
}

#[test]
fn a_graph_with_a_wrong_shape_fails_to_load_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    onnx::write_openvoice_dir(
        dir.path(),
        Some(&onnx::tone_color_extractor(128)),
        Some(&onnx::tone_color_converter(&ConverterNames::default())),
    );
    let err = load_error(dir.path());
    let message = err.message();
    assert!(message.contains(EXTRACTOR_FILE), "{err}");
    assert!(message.contains("output \"tone_color\""), "{err}");
    assert!(
        message.contains("[1, 128, 1]") && message.contains("[1, 256, 1]"),
        "{err}"
    );
}

#[test]
fn voices_it_cannot_speak_are_invalid_not_retried() {
    let (engine, _dir) = over_piper();
    let mut ignore = |_: Step<'_>| {};
    let fails = |input: SynthesisInput, code: &str| {
        let err = engine.synthesize(&input, &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), EngineErrorKind::InvalidInput, "{err}");
        assert_eq!(err.code(), code, "{err}");
        err
    };

    // Enrolled elsewhere, or never: no tone colour.
    let err = fails(
        cloned_input("Hello there.", "en", &record("bare", "en", None)),
        "voice_not_ready",
    );
    assert!(err.message().contains("bare"), "{err}");
    fails(
        cloned_input(
            "Hello there.",
            "en",
            &record("short", "en", Some(json!({"tone_color": [0.1, 0.2]}))),
        ),
        "voice_not_ready",
    );
    // A stock voice name, or another engine's voice.
    fails(stock_input("Hello.", PIPER_VOICE, "en"), "unknown_voice");
    let mut foreign = record("foreign", "en", None);
    foreign.info.engine = "kokoro".into();
    fails(cloned_input("Hello.", "en", &foreign), "unknown_voice");
    // A language the base voice does not speak.
    let colour = vec![0.1f32; TONE_COLOR_DIM];
    let mut japanese = record("ja", "ja", Some(json!({ "tone_color": colour })));
    japanese.info.other_languages = vec!["en".into()];
    fails(
        cloned_input("こんにちは。", "ja", &japanese),
        "unsupported_language",
    );
    // Nothing to say.
    let ready = record("ready", "en", Some(json!({ "tone_color": colour })));
    let err = engine
        .synthesize(&cloned_input("... !!", "en", &ready), &mut ignore)
        .unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_reference_too_short_for_a_tone_colour_is_refused() {
    let (engine, _dir) = over_piper();
    let half_second = &piper_reference()[..ANALYSIS_RATE as usize / 2];
    let err = enroll(&engine, half_second, "en").unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::InvalidInput);
    assert_eq!(err.code(), "audio_too_short");
    assert!(err.message().contains("1.0 s"), "{err}");
    let err = enroll(&engine, piper_reference(), "fr").unwrap_err();
    assert_eq!(err.code(), "unsupported_language");
}

#[test]
fn the_engine_is_built_from_its_settings() {
    let storage = tempfile::tempdir().unwrap();
    let model = onnx::openvoice_dir();
    let mut settings = test_settings(storage.path());
    let configure = |settings: &mut tts_config::Settings, path: &str, base: &str| {
        let own = settings.workers.get_mut("openvoice").expect("configured");
        own.set("model_path", path)
            .set("base_engine", base)
            .set("voice", PIPER_VOICE);
    };
    let built = |settings: &tts_config::Settings| {
        let config = tts_worker::engine::EngineConfig::parse("openvoice", &settings.workers)?;
        tts_worker::engine::build(&config, &settings.models, 1).map(|e| e.name().to_string())
    };

    // The defaults name no model directory: not installed, said so.
    let err = built(&settings).unwrap_err();
    assert_eq!(err.code(), MODEL_MISSING);
    assert!(
        err.message().contains("workers.openvoice.model_path"),
        "{err}"
    );

    let path = model.path().to_str().unwrap();
    configure(&mut settings, path, "xtts");
    let err = built(&settings).unwrap_err();
    assert!(
        err.message().contains("base_engine") && err.message().contains("kokoro, piper"),
        "{err}"
    );

    configure(&mut settings, path, "piper");
    settings
        .workers
        .get_mut("openvoice")
        .unwrap()
        .set("tau", "much");
    let err = built(&settings).unwrap_err();
    assert!(err.message().contains("tau"), "{err}");

    settings
        .workers
        .get_mut("openvoice")
        .unwrap()
        .set("tau", 0.5);
    assert_eq!(built(&settings).unwrap(), "openvoice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_enrolled_through_the_api_speaks_through_openvoice() {
    let model = onnx::openvoice_dir();
    let path = model.path().to_str().unwrap().to_string();
    let (speech, rate) =
        tokio::task::spawn_blocking(|| clips::speech(&format!("{FIRST} {SECOND}")))
            .await
            .unwrap();
    let app = spawn_engines_with(Deployment::Standalone, &["openvoice"], move |s| {
        let own = s.workers.get_mut("openvoice").expect("configured");
        own.set("model_path", path)
            .set("base_engine", "piper")
            .set("voice", PIPER_VOICE);
    })
    .await;

    let response = app
        .upload_voice(
            clips::wav(&speech, rate),
            "joe.wav",
            &[("name", "Joe"), ("language", "en"), ("engine", "openvoice")],
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let voice_id = accepted["voice"]["voice_id"].as_str().unwrap().to_string();
    let job_id = accepted["job_id"].as_str().unwrap();
    let job = app.wait_for_job(job_id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let voice = app.get_json(&format!("/api/voices/{voice_id}")).await;
    assert_eq!(voice["status"], "ready", "{voice}");
    assert_eq!(voice["engine"], "openvoice");

    let text = "Every spring the neighbours plant tomatoes and beans in the shared garden.";
    let response = app
        .synthesize(&json!({"text": text, "voice_id": voice_id, "language": "en"}))
        .await;
    assert_eq!(response.status(), 200);
    let wav = tts_tests::wav::summarise(&response.bytes().await.unwrap());
    assert_eq!(wav.sample_rate, SAMPLE_RATE);
    let words = text.split_whitespace().count() as f32;
    assert!(
        (0.15..=0.8).contains(&(wav.duration_secs / words)),
        "{wav:?}"
    );
    assert!(wav.rms > 0.01, "{wav:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_leaves_out_an_uninstalled_openvoice_unless_it_is_asked_for() {
    use voice_clone_tts::{Application, Mode};
    let storage = tempfile::tempdir().unwrap();
    let mut settings = test_settings(storage.path());
    // The embedded defaults (no model_path) beside one engine that can run here, which is also
    // its base: a base engine must be configured, or the settings are refused at start.
    settings
        .workers
        .retain(|name, _| name == "piper" || name == "openvoice");
    assert_eq!(settings.workers["openvoice"].options["model_path"], "");
    let mut without_base = settings.clone();
    let refused = Application::build(without_base.clone(), Mode::Standalone { engines: vec![] })
        .await
        .err()
        .expect("openvoice's base engine kokoro is not configured");
    assert!(
        format!("{refused:#}").contains("no engine named \"kokoro\""),
        "{refused:#}"
    );
    without_base
        .workers
        .get_mut("openvoice")
        .unwrap()
        .set("base_engine", "piper");
    let settings = without_base;

    let every = Application::build(settings.clone(), Mode::Standalone { engines: vec![] }).await;
    assert!(every.is_ok(), "{:#}", every.err().unwrap());

    let asked = Application::build(
        settings,
        Mode::Standalone {
            engines: vec!["openvoice".into()],
        },
    )
    .await;
    let err = format!(
        "{:#}",
        asked.err().expect("openvoice without a model fails")
    );
    assert!(err.contains("workers.openvoice.model_path"), "{err}");
}
