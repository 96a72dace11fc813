//! The piper engine on the real voice, without the service around it.

use tts_tests::workspace_root;
use tts_worker::engine::piper::{PiperEngine, PiperOptions};
use tts_worker::engine::{Engine, EngineErrorKind, SynthesisInput};

fn options(device: &str) -> PiperOptions {
    let paths = tts_worker::models::ensure(&workspace_root().join(".cache/voice-clone-tts"))
        .expect("the model cache is ready");
    PiperOptions {
        model_dir: paths.piper_dir,
        voice: "en_US-joe-medium".into(),
        device: device.into(),
        threads: 1,
        sessions: 1,
        onnxruntime: paths.onnxruntime,
    }
}

fn input(text: &str) -> SynthesisInput {
    SynthesisInput {
        text: text.into(),
        voice_id: "en_US-joe-medium".into(),
        language: "en".into(),
        speed: 1.0,
    }
}

#[test]
fn cuda_falls_back_to_cpu_with_the_reason() {
    // No machine this runs on in CI has a GPU; with one, the engine would say cuda here.
    let engine = PiperEngine::load(&options("cuda")).expect("loads on some device");
    let health = engine.health();
    assert!(health.ready);
    if health.device == "cpu" {
        assert!(health.detail.contains("cuda unavailable"), "{health:?}");
    }
}

#[test]
fn progress_is_reported_per_sentence() {
    let engine = PiperEngine::load(&options("cpu")).unwrap();
    let mut seen = Vec::new();
    let audio = engine
        .synthesize(&input("One. Two, and three! Four?"), &mut |p| {
            seen.push((p.done, p.total))
        })
        .unwrap();
    assert_eq!(seen, [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(audio.sample_rate, 22050);
    assert!(audio.duration_seconds() > 1.0);
}

#[test]
fn inputs_the_voice_cannot_speak_are_invalid_not_retried() {
    let engine = PiperEngine::load(&options("cpu")).unwrap();
    let mut ignore = |_| {};
    let wrong_voice = SynthesisInput {
        voice_id: "nobody".into(),
        ..input("Hello.")
    };
    let err = engine.synthesize(&wrong_voice, &mut ignore).unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::InvalidInput);
    assert_eq!(err.code(), "unknown_voice");
    let err = engine
        .synthesize(&input("... !!"), &mut ignore)
        .unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::InvalidInput);
}
