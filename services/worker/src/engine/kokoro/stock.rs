//! The stock voices' speaker embeddings, which enrollment compares every reference with.
//!
//! They depend on the model, the voice, the speaker encoder, the sentence and the family of CPU
//! kernels ONNX Runtime runs them on (see [`runtime::cpu_kernels`]), never on the reference: so
//! each is computed once, kept in memory, and written to the model cache under a key made of all
//! five, where every later worker finds it. The embeddings of the stock model and voices ship
//! with the worker (`data/kokoro-stock-embeddings.json`, made by `scripts/stock-embeddings` on
//! one machine of each kernel family they are shipped for), so that not even the first
//! enrollment computes them; another model, encoder or kernel family gives other keys, and its
//! embeddings are computed as above. With 54 voices this turns minutes of synthesis per
//! enrollment into a lookup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{KokoroEngine, StyleTable};
use crate::engine::{EngineError, SynthesisInput};
use crate::runtime;
use crate::voice::ANALYSIS_RATE;
use crate::voice::resample::resample;
use crate::voice::speaker::SpeakerEncoder;

/// The sentence every candidate speaks during enrollment's search.
pub const SEARCH_TEXT: &str =
    "The garden was quiet in the early morning, and the air smelled of rain and fresh bread.";
/// The sentences a clone is judged on, never used in the search. A judgement is the mean over
/// both: one sentence's score moves by a few hundredths with the words alone, enough to pick a
/// candidate that does well on that sentence and not on the next.
pub const HOLDOUT_TEXTS: [&str; 2] = [
    "Please remember to close the windows before you leave, because a storm is coming tonight.",
    "Our neighbours bought a small boat last summer and sail it on the lake every weekend.",
];

/// Every sentence enrollment scores voices on, the search sentence first and then the held-out
/// ones: the sentences whose stock embeddings are computed ahead and shipped.
pub fn scored_texts() -> Vec<&'static str> {
    std::iter::once(SEARCH_TEXT).chain(HOLDOUT_TEXTS).collect()
}

/// Every stock voice's name with its embedding speaking one text, in the engine's voice order.
pub type VoiceEmbeddings = Vec<(String, Vec<f32>)>;

/// The embeddings known so far, by cache key, and where they are kept on disk.
pub struct StockEmbeddings {
    dir: Option<PathBuf>,
    known: Mutex<BTreeMap<String, Vec<f32>>>,
}

impl StockEmbeddings {
    /// `dir` keeps them across restarts; `None` keeps them for this process only.
    pub fn new(dir: Option<PathBuf>) -> Self {
        StockEmbeddings {
            dir,
            known: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every stock voice's embedding speaking each of `texts`, one list per text, computing those
    /// not cached yet. `progress` is called with (done, total) after each one computed, counted
    /// over all the texts so that it only goes forwards.
    pub fn all(
        &self,
        engine: &KokoroEngine,
        encoder: &SpeakerEncoder,
        texts: &[&str],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<VoiceEmbeddings>, EngineError> {
        let names = engine.stock_voice_names();
        let keyed: Vec<Vec<(String, String)>> = texts
            .iter()
            .map(|text| {
                names
                    .iter()
                    .map(|name| {
                        let table = engine.stock_voice(name).expect("listed voices exist");
                        let key = cache_key(engine.model_id(), encoder.id(), text, name, table);
                        (name.clone(), key)
                    })
                    .collect()
            })
            .collect();
        let missing: Vec<(&str, &str, &str)> = texts
            .iter()
            .zip(&keyed)
            .flat_map(|(text, voices)| {
                voices
                    .iter()
                    .filter(|(_, key)| self.lookup(key).is_none())
                    .map(move |(name, key)| (*text, name.as_str(), key.as_str()))
            })
            .collect();
        for (done, (text, name, key)) in missing.iter().enumerate() {
            let table = engine.stock_voice(name).expect("listed voices exist");
            let embedding = embed_voice(engine, encoder, table, text)?;
            self.keep(key, embedding);
            progress(done + 1, missing.len());
        }
        Ok(keyed
            .into_iter()
            .map(|voices| {
                voices
                    .into_iter()
                    .map(|(name, key)| {
                        let embedding = self.lookup(&key).expect("computed above");
                        (name, embedding)
                    })
                    .collect()
            })
            .collect())
    }

    fn lookup(&self, key: &str) -> Option<Vec<f32>> {
        if let Some(found) = self.known.lock().expect("not poisoned").get(key) {
            return Some(found.clone());
        }
        let found = match shipped().get(key) {
            Some(found) => found.clone(),
            None => {
                let path = self.path(key)?;
                serde_json::from_slice(&std::fs::read(path).ok()?).ok()?
            }
        };
        self.known
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), found.clone());
        Some(found)
    }

    fn keep(&self, key: &str, embedding: Vec<f32>) {
        if let Some(path) = self.path(key)
            && let Err(e) = write_atomically(&path, &embedding)
        {
            // The cache only saves time: a worker that cannot write it still enrols.
            tracing::warn!(path = %path.display(), error = %e, "cannot keep a stock embedding");
        }
        self.known
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), embedding);
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{key}.json")))
    }
}

/// The embeddings shipped with the worker, by cache key.
fn shipped() -> &'static BTreeMap<String, Vec<f32>> {
    static SHIPPED: std::sync::OnceLock<BTreeMap<String, Vec<f32>>> = std::sync::OnceLock::new();
    SHIPPED.get_or_init(|| {
        serde_json::from_str(include_str!("../../../data/kokoro-stock-embeddings.json"))
            .expect("the shipped stock embeddings are valid JSON")
    })
}

/// A voice's embedding as enrollment scores it: `text` spoken with its style, at the analysis
/// rate.
pub fn embed_voice(
    engine: &KokoroEngine,
    encoder: &SpeakerEncoder,
    table: &StyleTable,
    text: &str,
) -> Result<Vec<f32>, EngineError> {
    let input = SynthesisInput {
        text: text.into(),
        voice_id: String::new(),
        language: "en".into(),
        speed: 1.0,
        streamed: false,
        voice: None,
        cancel: Default::default(),
        reference_wav: None,
    };
    let audio = engine.synthesize_with(&input, table, &mut |_| {})?;
    let speech = resample(&audio.samples, audio.sample_rate, ANALYSIS_RATE)?;
    encoder.embed(&speech)
}

/// Whether the worker ships the stock embeddings of this model and encoder for this machine's
/// kernel family; where it does not, they are computed on first use.
pub fn shipped_here(engine: &KokoroEngine, encoder: &SpeakerEncoder) -> bool {
    let Some(name) = engine.stock_voice_names().into_iter().next() else {
        return false;
    };
    let table = engine.stock_voice(&name).expect("listed voices exist");
    let key = cache_key(engine.model_id(), encoder.id(), SEARCH_TEXT, &name, table);
    shipped().contains_key(&key)
}

/// The key of one voice's embedding: model, encoder, the family of CPU kernels this machine runs
/// them on, sentence and the voice's own style table.
fn cache_key(
    model_id: &str,
    encoder_id: &str,
    text: &str,
    voice: &str,
    table: &StyleTable,
) -> String {
    let mut hash = Sha256::new();
    hash.update(model_id.as_bytes());
    hash.update(encoder_id.as_bytes());
    // Fed as `<encoder>-<kernels>`, the form the shipped keys were made with.
    hash.update(b"-");
    hash.update(runtime::cpu_kernels().as_bytes());
    hash.update(text.as_bytes());
    for value in table.iter() {
        hash.update(value.to_le_bytes());
    }
    format!("{voice}-{}", hex(&hash.finalize()[..12]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(path: &Path, embedding: &[f32]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files are in a directory");
    std::fs::create_dir_all(dir)?;
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, serde_json::to_vec(embedding)?)?;
    std::fs::rename(partial, path)
}

/// Computes the stock voices' embeddings into the model cache ahead of the first enrollment,
/// when the settings configure Kokoro: `voice-clone-tts fetch-models` calls it, so that no
/// enrollment waits for them. Returns how many voices were embedded.
pub fn prepare(settings: &tts_config::Settings) -> Result<usize, EngineError> {
    let config = match crate::engine::EngineConfig::parse("kokoro", &settings.workers) {
        Ok(crate::engine::EngineConfig::Kokoro(config)) => config,
        // No Kokoro configured: nothing to prepare.
        _ => return Ok(0),
    };
    let engine = KokoroEngine::build(&config, &settings.models, 1)?;
    let analysis = crate::voice::Analysis::load(settings)?;
    let embedded = engine
        .stock_embeddings()
        .all(
            &engine,
            &analysis.encoder,
            &scored_texts(),
            &mut |done, total| {
                tracing::info!(done, total, "embedding the stock voices for enrollment");
            },
        )?
        .iter()
        .map(Vec::len)
        .sum();
    Ok(embedded)
}
