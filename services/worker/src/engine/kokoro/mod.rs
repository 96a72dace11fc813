//! The `kokoro` engine: Kokoro-82M (int8 ONNX export) with its stock voices, speaking English
//! (espeak-ng IPA) and Mandarin (the `zh` front end).
//!
//! The graph takes `tokens` i64 [1, N+2] (phoneme ids with a 0 at both ends), `style` f32
//! [1, 256] (row N of the voice's [510, 1, 256] style table) and `speed` f32 [1], and gives
//! `audio` f32 [S] at 24 kHz.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;

use chrono::Utc;
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::NpzReader;
use ort::value::Tensor;
use serde::{Deserialize, Serialize};
use tts_contracts::{VoiceInfo, VoiceStatus};

use super::espeak::{self, PhonemizedSentence};
use super::{
    Audio, Device, Engine, EngineError, EngineHealth, EnrollInput, Enrollment, Progress, Step,
    SynthesisInput, check_voice_and_language, zh,
};
use crate::runtime::{self, Placement, SessionPool};
use crate::text::{self, split_sentences};

pub mod stock;
pub mod style_search;

pub const SAMPLE_RATE: u32 = 24_000;

/// Phoneme ids one inference takes at most, without the two padding tokens.
const MAX_PHONEMES: usize = 510;

/// Silence put between sentences, in seconds.
const SENTENCE_PAUSE_SECS: f32 = 0.2;

/// Words a streamed English job's first piece holds at most, as Piper's `first_piece_words`.
const FIRST_PIECE_WORDS: usize = 4;

/// The languages Kokoro is offered in here: those whose front end a speech recogniser checks in
/// the tests (tests/languages.rs): the `zh` front end for Mandarin, espeak-ng for the rest.
/// Japanese needs a real Japanese front end, and Hindi a recogniser that can check it, so
/// neither is offered. The first is the default of a voice whose own language is not offered.
const LANGUAGES: [&str; 6] = ["zh", "en", "es", "fr", "it", "pt-BR"];

/// A voice's native language from Kokoro's naming, the first letter of its name: `af_heart` is
/// US English, `zf_xiaobei` Mandarin, `jf_alpha` Japanese.
pub fn native_language(voice: &str) -> Option<&'static str> {
    Some(match voice.chars().next()? {
        'a' => "en-US",
        'b' => "en-GB",
        'z' => "zh",
        'j' => "ja",
        'e' => "es",
        'f' => "fr",
        'h' => "hi",
        'i' => "it",
        'p' => "pt-BR",
        _ => return None,
    })
}

/// The espeak-ng voice that reads English for a Kokoro voice: British for the `b` voices, so
/// that they keep their accent, American for the rest.
fn english_accent(voice: &str) -> &'static str {
    match native_language(voice) {
        Some("en-GB") => "en-gb",
        _ => "en-us",
    }
}

/// The espeak-ng voice that phonemizes `language` for the Kokoro voice `voice`, as Kokoro's
/// own front end does for the languages it reads through espeak-ng; `None` for Mandarin, which
/// has its own front end, and for languages with none here (Japanese).
fn espeak_voice(language: &str, voice: &str) -> Option<&'static str> {
    Some(match tts_contracts::base_language(language).as_str() {
        "en" => english_accent(voice),
        "es" => "es",
        "fr" => "fr-fr",
        "it" => "it",
        "pt" => "pt-br",
        _ => return None,
    })
}

/// The stock voice whose accent an input is spoken with: the voice itself, or the one a cloned
/// voice's style starts from.
fn speaking_voice(input: &SynthesisInput) -> String {
    input
        .voice
        .as_ref()
        .and_then(|record| record.engine_data.clone())
        .and_then(|data| serde_json::from_value::<ClonedStyle>(data).ok())
        .map_or_else(|| input.voice_id.clone(), |cloned| cloned.base_voice)
}

/// What a stock voice is offered in: its native language first where it is offered here, then
/// the other offered languages, which it speaks with its own accent.
fn offered_languages(voice: &str) -> (String, Vec<String>) {
    let native = native_language(voice).filter(|native| {
        LANGUAGES
            .iter()
            .any(|l| tts_contracts::same_language(l, native))
    });
    let first = native.unwrap_or(LANGUAGES[0]);
    let others = LANGUAGES
        .iter()
        .filter(|l| !tts_contracts::same_language(l, first))
        .map(|l| l.to_string())
        .collect();
    (first.to_string(), others)
}

/// `workers.kokoro` in the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KokoroConfig {
    /// A directory with `kokoro-v1.0.int8.onnx`, `vocab.json` and the voices, as a `voices/`
    /// directory of `<name>.bin` files or a `voices.npz`; empty takes the model cache.
    #[serde(default)]
    pub model_path: String,
    #[serde(default)]
    pub device: Device,
    /// ONNX Runtime intra-op threads per session; 0 runs on the process's shared pool.
    #[serde(default)]
    pub threads: usize,
}

#[derive(Debug, Clone)]
pub struct KokoroOptions {
    pub model: PathBuf,
    pub vocab: PathBuf,
    pub voices: PathBuf,
    pub device: String,
    pub threads: usize,
    pub sessions: usize,
    pub onnxruntime: PathBuf,
    /// Where the stock voices' speaker embeddings are kept between runs ([`stock`]); `None`
    /// keeps them in memory only.
    pub stock_embeddings: Option<PathBuf>,
}

#[derive(Deserialize)]
struct VocabFile {
    vocab: HashMap<String, i64>,
}

/// What Kokoro keeps with a cloned voice (`engine_data`): the stock voices its style blends and
/// the offset the style search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClonedStyle {
    /// The heaviest voice of the blend; the whole base of voices enrolled before blends.
    pub base_voice: String,
    pub style_offset: Vec<f32>,
    /// Stock voices and their weights; empty in voices enrolled before blends.
    #[serde(default)]
    pub blend: Vec<tts_contracts::BlendPart>,
}

/// A style table: one 256-value style per phoneme count.
pub type StyleTable = Array3<f32>;

pub struct KokoroEngine {
    vocab: HashMap<char, i64>,
    voices: BTreeMap<String, StyleTable>,
    created_at: chrono::DateTime<Utc>,
    pool: SessionPool,
    placement: Placement,
    /// Identifies the model file, so that cached results of another model are never used.
    model_id: String,
    stock: stock::StockEmbeddings,
}

impl KokoroEngine {
    /// Loads Kokoro from the files in `model_path`, or the model cache.
    pub fn build(
        config: &KokoroConfig,
        models: &tts_config::ModelSettings,
        sessions: usize,
    ) -> Result<Self, EngineError> {
        let paths = crate::models::ensure_kokoro(&models.cache_dir)
            .map_err(|e| EngineError::internal(format!("model cache: {e}")).with_source(e))?;
        let dir: Option<PathBuf> =
            (!config.model_path.is_empty()).then(|| config.model_path.clone().into());
        KokoroEngine::load(&KokoroOptions {
            model: dir
                .as_ref()
                .map_or(paths.model, |d| d.join("kokoro-v1.0.int8.onnx")),
            vocab: dir.as_ref().map_or(paths.vocab, |d| d.join("vocab.json")),
            voices: dir.as_ref().map_or(paths.voices, |d| voices_in(d)),
            device: config.device.as_str().into(),
            threads: config.threads,
            sessions,
            onnxruntime: runtime::onnxruntime_library(models, paths.onnxruntime),
            stock_embeddings: Some(models.cache_dir.join("kokoro/stock-embeddings")),
        })
    }

    pub fn load(options: &KokoroOptions) -> Result<Self, EngineError> {
        let vocab = read_vocab(&options.vocab)?;
        let voices = read_voices(&options.voices)?;
        espeak::check_available()?;
        let env = runtime::environment(&options.onnxruntime)?;
        let (pool, placement) = runtime::session_pool(
            env,
            &options.model,
            &options.device,
            options.threads,
            options.sessions,
            &["tokens", "style", "speed"],
            &["audio"],
        )?;
        Ok(KokoroEngine {
            vocab,
            voices,
            created_at: Utc::now(),
            pool,
            placement,
            model_id: crate::models::file_id(&options.model).map_err(|e| {
                EngineError::internal(format!("model {}: {e}", options.model.display()))
                    .with_source(e)
            })?,
            stock: stock::StockEmbeddings::new(options.stock_embeddings.clone()),
        })
    }

    /// Identifies the loaded model file (see [`crate::models::file_id`]).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The stock voices' embeddings, cached (see [`stock`]).
    pub fn stock_embeddings(&self) -> &stock::StockEmbeddings {
        &self.stock
    }

    /// Phoneme ids of an IPA string; symbols outside the vocabulary are dropped, never guessed.
    pub fn ids(&self, ipa: &str) -> Vec<i64> {
        ipa.chars()
            .filter_map(|c| self.vocab.get(&c).copied())
            .collect()
    }

    /// Synthesises one chunk of at most [`MAX_PHONEMES`] ids with a style table.
    pub fn infer(
        &self,
        ids: &[i64],
        styles: &StyleTable,
        speed: f32,
    ) -> Result<Vec<f32>, EngineError> {
        let n = ids.len().min(MAX_PHONEMES);
        let mut tokens = Vec::with_capacity(n + 2);
        tokens.push(0);
        tokens.extend_from_slice(&ids[..n]);
        tokens.push(0);
        let row = n.min(styles.shape()[0] - 1);
        let style = styles.slice(ndarray::s![row, .., ..]).to_owned();
        let tokens = Array2::from_shape_vec((1, n + 2), tokens)
            .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
        let speed = Array1::from_vec(vec![speed]);
        let mut session = self.pool.take();
        let outputs = session.run(ort::inputs![
            "tokens" => Tensor::from_array(tokens)?,
            "style" => Tensor::from_array(style)?,
            "speed" => Tensor::from_array(speed)?,
        ])?;
        let (_, audio) = outputs["audio"].try_extract_tensor::<f32>()?;
        Ok(audio.to_vec())
    }

    /// Synthesises with an explicit style table: the stock voices' and, later, cloned ones.
    pub fn synthesize_with(
        &self,
        input: &SynthesisInput,
        styles: &StyleTable,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        let espeak = espeak_voice(&input.language, &speaking_voice(input));
        let sentences = self.phonemize(&input.language, espeak, &input.text, input.streamed)?;
        if sentences.is_empty() {
            return Err(EngineError::invalid(
                "nothing_to_say",
                "the text has no words that can be spoken",
            ));
        }
        let pause = vec![0.0; (SENTENCE_PAUSE_SECS * SAMPLE_RATE as f32) as usize];
        let mut samples = Vec::new();
        let total = sentences.len();
        for (i, parts) in sentences.iter().enumerate() {
            input.cancel.check()?;
            for (j, part) in parts.iter().enumerate() {
                // The part's piece, with the pause before it, is clamped before it is reported,
                // so that the pieces laid end to end are the whole audio. A sentence's later
                // parts follow its first without a pause.
                let start = samples.len();
                for chunk in chunks(&self.ids(&part.ipa), &self.ids(" ")) {
                    if !samples.is_empty() && (j == 0 || samples.len() > start) {
                        samples.extend_from_slice(&pause);
                    }
                    samples.extend(self.infer(&chunk, styles, input.speed)?);
                }
                for s in &mut samples[start..] {
                    *s = s.clamp(-1.0, 1.0);
                }
                progress(Step {
                    done: if j + 1 == parts.len() { i + 1 } else { i },
                    total,
                    audio: &samples[start..],
                    sample_rate: SAMPLE_RATE,
                });
            }
        }
        Ok(Audio {
            samples,
            sample_rate: SAMPLE_RATE,
        })
    }

    /// Each sentence as the parts it is spoken in: whole, except the first sentence of a
    /// streamed job, whose opening words come first (see [`text::lead_in`]). `espeak` is the
    /// espeak-ng voice for the language; Mandarin goes through its own front end.
    fn phonemize(
        &self,
        language: &str,
        espeak: Option<&str>,
        text: &str,
        streamed: bool,
    ) -> Result<Vec<Vec<PhonemizedSentence>>, EngineError> {
        let Some(espeak) = espeak.filter(|_| !tts_contracts::same_language(language, "zh")) else {
            let mut latin = |word: &str| espeak::phonemize_clause("en-us", word).ok();
            return Ok(zh::phonemize(text, &mut latin)
                .into_iter()
                .map(|sentence| vec![sentence])
                .collect());
        };
        let mut sentences = Vec::new();
        for sentence in split_sentences(text) {
            let lead_words = if streamed && sentences.is_empty() {
                FIRST_PIECE_WORDS
            } else {
                0
            };
            let mut parts = Vec::new();
            for part in text::parts(&sentence, lead_words) {
                parts.extend(espeak::phonemize_sentence(espeak, &part)?);
            }
            if !parts.is_empty() {
                sentences.push(parts);
            }
        }
        Ok(sentences)
    }

    pub fn stock_voice(&self, name: &str) -> Option<&StyleTable> {
        self.voices.get(name)
    }

    pub fn stock_voice_names(&self) -> Vec<String> {
        self.voices.keys().cloned().collect()
    }
}

/// Splits a sentence's ids into chunks the model takes, at spaces where it can.
fn chunks(ids: &[i64], space: &[i64]) -> Vec<Vec<i64>> {
    if ids.len() <= MAX_PHONEMES {
        return vec![ids.to_vec()];
    }
    let space = space.first().copied();
    let mut out = Vec::new();
    let mut rest = ids;
    while rest.len() > MAX_PHONEMES {
        let window = &rest[..MAX_PHONEMES];
        let cut = window
            .iter()
            .rposition(|id| Some(*id) == space)
            .filter(|&p| p > MAX_PHONEMES / 2)
            .unwrap_or(MAX_PHONEMES);
        out.push(rest[..cut].to_vec());
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest.to_vec());
    }
    out
}

impl Engine for KokoroEngine {
    fn name(&self) -> &str {
        "kokoro"
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        self.voices
            .keys()
            .map(|name| {
                let (language, other_languages) = offered_languages(name);
                VoiceInfo {
                    voice_id: name.clone(),
                    name: name.clone(),
                    engine: "kokoro".into(),
                    created_at: self.created_at,
                    language,
                    status: VoiceStatus::Ready,
                    sample_rate: Some(SAMPLE_RATE),
                    other_languages,
                    speed_range: None,
                    native_language: native_language(name).map(str::to_string),
                }
            })
            .collect()
    }

    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        check_voice_and_language(self, input)?;
        if let Some(record) = &input.voice {
            let styles = self.cloned_styles(record)?;
            return self.synthesize_with(input, &styles, progress);
        }
        let styles = self.voices.get(&input.voice_id).ok_or_else(|| {
            EngineError::invalid("unknown_voice", format!("no voice {}", input.voice_id))
        })?;
        self.synthesize_with(input, styles, progress)
    }

    fn health(&self) -> EngineHealth {
        self.placement
            .health(&format!("{} voices", self.voices.len()))
    }

    fn clones(&self) -> bool {
        true
    }

    /// The offered languages as base languages: the voices' own say `en-US` or `en-GB`, but the
    /// engine, and so a cloned voice, speaks English of either kind.
    fn languages(&self) -> Vec<String> {
        LANGUAGES.iter().map(|l| l.to_string()).collect()
    }

    fn enroll(
        &self,
        input: &EnrollInput<'_>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Enrollment, EngineError> {
        let result = style_search::clone_style(
            self,
            &input.analysis.encoder,
            input.reference,
            input.settings,
            &mut |done, total| progress(Progress { done, total }),
        )?;
        let blend: Vec<tts_contracts::BlendPart> = result
            .blend
            .iter()
            .map(|(voice, weight)| tts_contracts::BlendPart {
                voice: voice.clone(),
                weight: *weight,
            })
            .collect();
        Ok(Enrollment {
            similarity: Some(tts_contracts::CloneSimilarity {
                cloned: result.cloned_similarity,
                best_stock: result.best_stock_similarity,
                best_stock_voice: result.best_stock_voice,
                beats_best_stock: Some(result.beats_stock),
                blend: blend.clone(),
            }),
            engine_data: Some(
                serde_json::to_value(ClonedStyle {
                    base_voice: blend[0].voice.clone(),
                    style_offset: result.offset,
                    blend,
                })
                .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?,
            ),
        })
    }
}

impl KokoroEngine {
    /// The style table of a cloned voice: its base stock voice moved by its stored offset.
    fn cloned_styles(
        &self,
        record: &tts_contracts::VoiceRecord,
    ) -> Result<StyleTable, EngineError> {
        let not_ready = || {
            EngineError::invalid(
                "voice_not_ready",
                format!(
                    "voice {} has no kokoro conditioning; it is not enrolled",
                    record.info.voice_id
                ),
            )
        };
        let cloned: ClonedStyle = record
            .engine_data
            .clone()
            .and_then(|data| serde_json::from_value(data).ok())
            .ok_or_else(not_ready)?;
        // Voices enrolled before blends are their base voice alone.
        let parts: Vec<(&str, f32)> = if cloned.blend.is_empty() {
            vec![(cloned.base_voice.as_str(), 1.0)]
        } else {
            cloned
                .blend
                .iter()
                .map(|p| (p.voice.as_str(), p.weight))
                .collect()
        };
        let mut tables = Vec::with_capacity(parts.len());
        for (name, weight) in parts {
            let table = self.voices.get(name).ok_or_else(|| {
                EngineError::invalid(
                    "unknown_voice",
                    format!(
                        "voice {} is based on {name}, which this model lacks",
                        record.info.voice_id
                    ),
                )
            })?;
            tables.push((table, weight));
        }
        let offset = cloned.style_offset.as_slice();
        let dims = tables[0].0.shape()[2];
        if offset.len() != dims {
            return Err(EngineError::invalid(
                "voice_corrupt",
                format!(
                    "voice {} has a {}-value style offset; the model takes {dims}",
                    record.info.voice_id,
                    offset.len(),
                ),
            ));
        }
        Ok(style_search::blend_table(&tables, offset))
    }
}

fn read_vocab(path: &std::path::Path) -> Result<HashMap<char, i64>, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EngineError::internal(format!("cannot read {}: {e}", path.display())).with_source(e)
    })?;
    let file: VocabFile = serde_json::from_str(&text).map_err(|e| {
        EngineError::internal(format!("{} is invalid: {e}", path.display())).with_source(e)
    })?;
    let mut vocab = HashMap::new();
    for (symbol, id) in file.vocab {
        let mut chars = symbol.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            vocab.insert(c, id);
        }
    }
    if vocab.is_empty() {
        return Err(EngineError::internal(format!(
            "{} has no symbols",
            path.display()
        )));
    }
    Ok(vocab)
}

fn voices_error(
    path: &std::path::Path,
    e: Box<dyn std::error::Error + Send + Sync>,
) -> EngineError {
    EngineError::internal(format!("voices {}: {e}", path.display())).with_source(e)
}

/// Where a model directory keeps its voices: a `voices/` directory when it has one, else
/// `voices.npz`.
fn voices_in(dir: &std::path::Path) -> PathBuf {
    let voices = dir.join("voices");
    if voices.is_dir() {
        voices
    } else {
        dir.join("voices.npz")
    }
}

/// Reads the voices' style tables: from a directory of `<name>.bin` files (raw little-endian f32
/// [510, 1, 256], as Kokoro's voice packs are published) or from an `.npz` of [N, 1, 256] arrays.
fn read_voices(path: &std::path::Path) -> Result<BTreeMap<String, StyleTable>, EngineError> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| voices_error(path, e);
    let mut voices = BTreeMap::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| fail(e.into()))? {
            let file = entry.map_err(|e| fail(e.into()))?.path();
            let (Some(name), Some("bin")) = (
                file.file_stem().and_then(|n| n.to_str()),
                file.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            let bytes = std::fs::read(&file).map_err(|e| fail(e.into()))?;
            voices.insert(
                name.to_string(),
                style_table_from_bin(name, &bytes).map_err(fail)?,
            );
        }
    } else {
        let file = File::open(path).map_err(|e| fail(e.into()))?;
        let mut npz = NpzReader::new(file).map_err(|e| fail(e.into()))?;
        for entry in npz.names().map_err(|e| fail(e.into()))? {
            let table: StyleTable = npz.by_name(&entry).map_err(|e| fail(e.into()))?;
            if table.shape()[1..] != [1, 256] {
                let shape = format!(
                    "voice {entry} has shape {:?}, expected [N, 1, 256]",
                    table.shape()
                );
                return Err(fail(shape.into()));
            }
            voices.insert(entry.trim_end_matches(".npy").to_string(), table);
        }
    }
    if voices.is_empty() {
        return Err(fail("no voices".into()));
    }
    Ok(voices)
}

/// A style table from a voice pack's raw bytes: little-endian f32, 256 values per row.
fn style_table_from_bin(
    name: &str,
    bytes: &[u8],
) -> Result<StyleTable, Box<dyn std::error::Error + Send + Sync>> {
    const ROW: usize = 256 * 4;
    if bytes.is_empty() || !bytes.len().is_multiple_of(ROW) {
        return Err(format!(
            "voice {name} has {} bytes, not a whole number of 256-value f32 rows",
            bytes.len()
        )
        .into());
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array3::from_shape_vec((bytes.len() / ROW, 1, 256), values)?)
}

#[cfg(test)]
mod tests {
    use super::{
        chunks, english_accent, espeak_voice, native_language, offered_languages,
        style_table_from_bin,
    };

    #[test]
    fn a_voices_name_says_its_language_and_what_it_is_offered_in() {
        assert_eq!(native_language("af_heart"), Some("en-US"));
        assert_eq!(native_language("bm_george"), Some("en-GB"));
        assert_eq!(native_language("zf_xiaobei"), Some("zh"));
        assert_eq!(native_language("jf_alpha"), Some("ja"));
        assert_eq!(native_language("pm_alex"), Some("pt-BR"));
        assert_eq!(native_language("xx_unknown"), None);
        let others = |list: &[&str]| list.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert_eq!(
            offered_languages("af_heart"),
            (
                "en-US".to_string(),
                others(&["zh", "es", "fr", "it", "pt-BR"])
            )
        );
        assert_eq!(
            offered_languages("pf_dora"),
            ("pt-BR".to_string(), others(&["zh", "en", "es", "fr", "it"]))
        );
        assert_eq!(
            offered_languages("zf_xiaobei"),
            ("zh".to_string(), others(&["en", "es", "fr", "it", "pt-BR"]))
        );
        // Japanese and Hindi are not offered: those voices speak the others, Mandarin first.
        assert_eq!(
            offered_languages("jf_alpha"),
            ("zh".to_string(), others(&["en", "es", "fr", "it", "pt-BR"]))
        );
        assert_eq!(offered_languages("hf_alpha").0, "zh");
        assert_eq!(english_accent("bf_emma"), "en-gb");
        assert_eq!(english_accent("af_heart"), "en-us");
        assert_eq!(english_accent("zf_xiaobei"), "en-us");
        assert_eq!(espeak_voice("en", "bf_emma"), Some("en-gb"));
        assert_eq!(espeak_voice("pt-BR", "pf_dora"), Some("pt-br"));
        assert_eq!(espeak_voice("zh", "zf_xiaobei"), None);
        assert_eq!(espeak_voice("ja", "jf_alpha"), None);
    }

    #[test]
    fn a_voice_pack_is_rows_of_256_little_endian_floats() {
        let bytes: Vec<u8> = (0..2 * 256)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let table = style_table_from_bin("af_test", &bytes).unwrap();
        assert_eq!(table.shape(), [2, 1, 256]);
        assert_eq!(table[[1, 0, 3]], 259.0);
        assert!(style_table_from_bin("af_test", &bytes[..1000]).is_err());
        assert!(style_table_from_bin("af_test", &[]).is_err());
    }

    #[test]
    fn long_sentences_split_at_spaces_under_the_limit() {
        let mut ids = Vec::new();
        for _ in 0..200 {
            ids.extend([5, 6, 7, 16]);
        }
        let parts = chunks(&ids, &[16]);
        assert!(parts.len() >= 2);
        assert!(parts.iter().all(|p| p.len() <= super::MAX_PHONEMES));
        assert_eq!(parts.concat(), ids);
        assert_eq!(chunks(&[1, 2], &[16]), vec![vec![1, 2]]);
    }
}
