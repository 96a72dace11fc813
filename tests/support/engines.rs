//! The engines on the real models, loaded once per test binary.

use std::path::PathBuf;
use std::sync::OnceLock;

use tts_worker::engine::kokoro::{KokoroEngine, KokoroOptions};
use tts_worker::engine::piper::{PiperEngine, PiperOptions};

/// The model cache the tests share (scripts/test fills it before they run).
pub fn cache_dir() -> PathBuf {
    crate::workspace_root().join(".cache/voice-clone-tts")
}

pub fn piper_options(device: &str) -> PiperOptions {
    let paths = tts_worker::models::ensure(&cache_dir()).expect("the piper voice is cached");
    PiperOptions {
        model_dir: paths.piper_dir,
        voice: "en_US-joe-medium".into(),
        device: device.into(),
        threads: 1,
        sessions: 1,
        onnxruntime: paths.onnxruntime,
        first_piece_words: 4,
    }
}

pub fn kokoro_options() -> KokoroOptions {
    let paths =
        tts_worker::models::ensure_kokoro(&cache_dir()).expect("the kokoro model is cached");
    KokoroOptions {
        model: paths.model,
        vocab: paths.vocab,
        voices: paths.voices,
        device: "cpu".into(),
        threads: 0,
        sessions: 1,
        onnxruntime: paths.onnxruntime,
        // The same place the service keeps them, so that tests and services share the work.
        stock_embeddings: Some(cache_dir().join("kokoro/stock-embeddings")),
    }
}

/// What a plain synthesis with a stock voice asks an engine for: `text` in `language`, at
/// normal speed, not streamed.
pub fn stock_input(text: &str, voice: &str, language: &str) -> tts_worker::engine::SynthesisInput {
    tts_worker::engine::SynthesisInput {
        text: text.into(),
        voice_id: voice.into(),
        language: language.into(),
        speed: 1.0,
        streamed: false,
        voice: None,
        reference_wav: None,
        cancel: Default::default(),
    }
}

/// The Piper voice on the CPU.
pub fn piper() -> &'static PiperEngine {
    static ENGINE: OnceLock<PiperEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PiperEngine::load(&piper_options("cpu")).expect("piper loads"))
}

/// The analysis models enrollment loads (VAD and speaker encoder).
pub fn analysis() -> &'static tts_worker::voice::Analysis {
    static ANALYSIS: OnceLock<tts_worker::voice::Analysis> = OnceLock::new();
    ANALYSIS.get_or_init(|| {
        let settings = crate::test_settings(&std::env::temp_dir());
        tts_worker::voice::Analysis::load(&settings).expect("the analysis models load")
    })
}

/// Kokoro on the CPU.
pub fn kokoro() -> &'static KokoroEngine {
    static ENGINE: OnceLock<KokoroEngine> = OnceLock::new();
    ENGINE.get_or_init(|| KokoroEngine::load(&kokoro_options()).expect("kokoro loads"))
}
