//! Kokoro's style search, how the engine clones a voice: search a style so that the speaker encoder hears the reference
//! speaker in Kokoro's speech.
//!
//! No zero-shot cloning weights can be had, so the voice is found by search. Every stock voice
//! speaks a fixed sentence and the closest to the reference (by speaker-embedding cosine) becomes
//! the base; then a (1+1) evolution strategy moves an offset added to every row of the base's
//! style table, keeping a candidate only when the encoder scores it closer, and adapting its step
//! size. The result is scored on a second sentence the search never used, against the best stock
//! voice on the same sentence.

use ndarray::{Array1, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use super::{KokoroEngine, StyleTable};
use crate::engine::{CloneSettings, EngineError, SynthesisInput};
use crate::voice::ANALYSIS_RATE;
use crate::voice::resample::resample;
use crate::voice::speaker::{SpeakerEncoder, cosine};

/// The sentence every candidate speaks during the search.
pub const SEARCH_TEXT: &str =
    "The garden was quiet in the early morning, and the air smelled of rain and fresh bread.";
/// The sentence the result is judged on; never used in the search.
pub const HOLDOUT_TEXT: &str =
    "Please remember to close the windows before you leave, because a storm is coming tonight.";

#[derive(Debug, Clone, PartialEq)]
pub struct CloneResult {
    pub base_voice: String,
    /// Offset added to every row of the base voice's style table.
    pub offset: Vec<f32>,
    /// Cosine similarity to the reference on the held-out sentence.
    pub cloned_similarity: f32,
    pub best_stock_similarity: f32,
    /// The best score the search reached on its own sentence.
    pub search_similarity: f32,
    /// The best stock voice's score on the search sentence, where the search started.
    pub best_stock_search_similarity: f32,
}

/// The base table with `offset` added to every row.
pub fn offset_table(base: &StyleTable, offset: &[f32]) -> StyleTable {
    let offset = Array1::from_vec(offset.to_vec());
    let mut table = base.clone();
    for mut row in table.axis_iter_mut(Axis(0)) {
        for mut inner in row.axis_iter_mut(Axis(0)) {
            inner += &offset;
        }
    }
    table
}

/// Searches a style for the speaker of `reference` (16 kHz speech). `progress` is called after
/// each synthesis with (done, total).
pub fn clone_style(
    engine: &KokoroEngine,
    encoder: &SpeakerEncoder,
    reference: &[f32],
    settings: &CloneSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CloneResult, EngineError> {
    let target = encoder.embed(reference)?;
    let stock: Vec<String> = engine.stock_voice_names();
    let total = stock.len() + settings.evaluations + 2;
    let mut done = 0;
    let mut score = |table: &StyleTable, text: &str| -> Result<f32, EngineError> {
        let input = SynthesisInput {
            text: text.into(),
            voice_id: String::new(),
            language: "en".into(),
            speed: 1.0,
            streamed: false,
            voice: None,
            reference_wav: None,
        };
        let audio = engine.synthesize_with(&input, table, &mut |_| {})?;
        let speech = resample(&audio.samples, audio.sample_rate, ANALYSIS_RATE)?;
        let similarity = cosine(&target, &encoder.embed(&speech)?);
        done += 1;
        progress(done, total);
        Ok(similarity)
    };

    let mut best_stock = (String::new(), f32::MIN);
    for name in &stock {
        let table = engine.stock_voice(name).expect("listed voices exist");
        let s = score(table, SEARCH_TEXT)?;
        if s > best_stock.1 {
            best_stock = (name.clone(), s);
        }
    }
    let base = engine
        .stock_voice(&best_stock.0)
        .ok_or_else(|| EngineError::internal("kokoro has no stock voices"))?;

    let dims = base.shape()[2];
    let spread = base.std(0.0);
    let mut step = 0.5 * spread;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut offset = vec![0.0f32; dims];
    let mut best = best_stock.1;
    for _ in 0..settings.evaluations {
        let candidate: Vec<f32> = offset
            .iter()
            .map(|o| {
                let z: f32 = StandardNormal.sample(&mut rng);
                o + step * z
            })
            .collect();
        let s = score(&offset_table(base, &candidate), SEARCH_TEXT)?;
        if s > best {
            best = s;
            offset = candidate;
            step *= 1.5;
        } else {
            step *= 0.85;
        }
    }

    let cloned_similarity = score(&offset_table(base, &offset), HOLDOUT_TEXT)?;
    let best_stock_similarity = score(base, HOLDOUT_TEXT)?;
    Ok(CloneResult {
        base_voice: best_stock.0,
        offset,
        cloned_similarity,
        best_stock_similarity,
        search_similarity: best,
        best_stock_search_similarity: best_stock.1,
    })
}
