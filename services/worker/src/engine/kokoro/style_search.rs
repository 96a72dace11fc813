//! Kokoro's style search, how the engine clones a voice: find a style in which the speaker
//! encoder hears the reference speaker.
//!
//! No zero-shot cloning weights can be had, so the voice is found by search, and judged on
//! material the search never saw, so that what is reported is what a listener gets:
//!
//! - The reference is cut in two: the search aims at the first part, the judging at the second.
//!   Candidates speak [`SEARCH_TEXT`] while searching and the [`HOLDOUT_TEXTS`] when judged; a
//!   judgement is the mean score over those sentences.
//! - Every stock voice is scored on both (their embeddings are cached, see [`super::stock`]).
//!   The voices nearest the reference start the search as a blend: a weighted mean of their
//!   style tables, the weights a softmax of their scores.
//! - A (1+1) evolution strategy moves the blend's weights and an offset added to every row,
//!   keeping a candidate only when the encoder scores it closer, and adapting its step size.
//! - Every few improvements the current best is judged on the held-out material; the search
//!   stops once that score has not improved for [`PATIENCE`] judgements, and the best judged
//!   candidate is the result.
//! - The search also stops when the next step and the judgement after it would run past the
//!   time limit ([`CloneSettings::time_limit`]), so that an enrollment takes what the operator
//!   allowed, however loaded the machine.
//! - The result is never worse on the held-out score than the best stock voice: when the search
//!   cannot beat it by [`MIN_GAIN`], the clone is that stock voice, and says so
//!   ([`CloneResult::beats_stock`]).

use std::cell::Cell;
use std::time::Instant;

use ndarray::{Array1, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use super::{KokoroEngine, StyleTable, stock};
use crate::engine::{CloneSettings, EngineError};
use crate::voice::ANALYSIS_RATE;
use crate::voice::speaker::{SpeakerEncoder, cosine};

/// The sentences candidates speak: [`SEARCH_TEXT`] while searching, [`HOLDOUT_TEXTS`] when
/// judged. They live with the stock voices' embeddings, which are made on them.
pub use super::stock::{HOLDOUT_TEXTS, SEARCH_TEXT};

/// How many of the stock voices nearest the reference a blend is made of.
pub const BLEND_VOICES: usize = 5;
/// Search steps that improved the search score before the best is judged again.
const JUDGE_AFTER: usize = 3;
/// Judgements without a better held-out score before the search stops.
pub const PATIENCE: usize = 2;
/// The softmax temperature that turns the nearest voices' scores into starting weights: a
/// voice 0.05 closer weighs e times more.
const TEMPERATURE: f32 = 0.05;
/// How much closer than the best stock voice, on the held-out score, a found style must be to
/// be kept. Both scores are maxima over many candidates on two sentences, and a smaller lead is
/// as likely to be luck as a closer voice: then the best stock voice is the safer clone.
pub const MIN_GAIN: f32 = 0.01;
/// Each half of a reference is at least this long, in seconds, or both halves are the whole
/// clip: the encoder needs a second or two of speech to say anything.
const MIN_PART_SECS: f32 = 2.0;

#[derive(Debug, Clone, PartialEq)]
pub struct CloneResult {
    /// The stock voices the style is a blend of, with their weights (summing to 1), heaviest
    /// first.
    pub blend: Vec<(String, f32)>,
    /// Offset added to every row of the blended table.
    pub offset: Vec<f32>,
    /// Held-out score of the result (mean cosine similarity to the reference's second part, on
    /// the held-out sentences).
    pub cloned_similarity: f32,
    /// The best stock voice on the same held-out score, and its score.
    pub best_stock_voice: String,
    pub best_stock_similarity: f32,
    /// Whether the search found a style closer than every stock voice; when not, the clone is
    /// the best stock voice itself.
    pub beats_stock: bool,
    /// The best score the search reached on its own sentence and reference part.
    pub search_similarity: f32,
    /// The nearest stock voice's score there, where the search started from.
    pub best_stock_search_similarity: f32,
    /// Syntheses spent: search steps plus held-out judgements.
    pub syntheses: usize,
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

/// The weighted mean of style tables, with `offset` added to every row. Tables of different
/// lengths are cut to the shortest.
pub fn blend_table(parts: &[(&StyleTable, f32)], offset: &[f32]) -> StyleTable {
    let rows = parts.iter().map(|(t, _)| t.shape()[0]).min().unwrap_or(0);
    let shape = parts.first().map_or([0, 1, 256], |(t, _)| {
        let s = t.shape();
        [rows, s[1], s[2]]
    });
    let mut table = StyleTable::zeros(shape);
    for (part, weight) in parts {
        table.scaled_add(*weight, &part.slice(ndarray::s![..rows, .., ..]));
    }
    offset_table(&table, offset)
}

/// The two parts of a reference: the first for the search, the second for judging. A clip too
/// short to halve is used whole for both.
pub fn split_reference(reference: &[f32]) -> (&[f32], &[f32]) {
    let min = (MIN_PART_SECS * ANALYSIS_RATE as f32) as usize;
    if reference.len() < 2 * min {
        return (reference, reference);
    }
    reference.split_at(reference.len() / 2)
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// A point of the search: blend logits and the offset.
#[derive(Clone)]
struct Candidate {
    logits: Vec<f32>,
    offset: Vec<f32>,
}

/// Searches a style for the speaker of `reference` (16 kHz speech). `progress` is called after
/// each synthesis with (done, total); the total is the budget, and the last call says it is
/// all done even when the search stopped early.
pub fn clone_style(
    engine: &KokoroEngine,
    encoder: &SpeakerEncoder,
    reference: &[f32],
    settings: &CloneSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CloneResult, EngineError> {
    let (search_part, held_part) = split_reference(reference);
    let search_target = encoder.embed(search_part)?;
    let held_target = encoder.embed(held_part)?;

    // The stock voices' embeddings do not depend on the reference: cached, they cost nothing;
    // the first enrollment of a model computes the missing ones, and its progress counts them.
    let stock = engine.stock_embeddings();
    // The start and every step speak the search sentence; a judgement speaks every held-out
    // sentence, and there are at most: the start's, one per JUDGE_AFTER improvements, and a
    // last one for the improvements since.
    let judging = HOLDOUT_TEXTS.len();
    let budget = 1 + settings.evaluations + (settings.evaluations / JUDGE_AFTER + 2) * judging;
    let mut computed = 0;
    let mut embeddings = stock.all(
        engine,
        encoder,
        &stock::scored_texts(),
        &mut |done, missing| {
            computed = missing;
            progress(done, missing + budget);
        },
    )?;
    // `scored_texts` lists the search sentence first, then the held-out ones.
    let judged = embeddings.split_off(1);
    let searched = embeddings.pop().expect("one list per text");
    let total = computed + budget;
    // Counted in a cell: the scoring closure adds to it while the search loop reads it.
    let done = Cell::new(computed);
    // The time limit counts from here: computing missing stock embeddings is once per model,
    // not part of an enrollment.
    let started = Instant::now();

    // The nearest voices by the search part, and the best by the held-out part.
    let mut nearest: Vec<(String, f32)> = searched
        .iter()
        .map(|(name, e)| (name.clone(), cosine(&search_target, e)))
        .collect();
    nearest.sort_by(|a, b| b.1.total_cmp(&a.1));
    nearest.truncate(BLEND_VOICES);
    // Every call of `all` lists the voices in the same order.
    let (best_stock_voice, best_stock_similarity) = judged[0]
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mean = judged
                .iter()
                .map(|sentence| cosine(&held_target, &sentence[i].1))
                .sum::<f32>()
                / judging as f32;
            (name.clone(), mean)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| EngineError::internal("kokoro has no stock voices"))?;
    let tables: Vec<&StyleTable> = nearest
        .iter()
        .map(|(name, _)| engine.stock_voice(name).expect("listed voices exist"))
        .collect();

    let table_of = |c: &Candidate| {
        let weights = softmax(&c.logits);
        let parts: Vec<(&StyleTable, f32)> = tables.iter().copied().zip(weights).collect();
        blend_table(&parts, &c.offset)
    };
    // The mean score of `table` speaking each of `texts`, against `target`: one text while
    // searching, every held-out sentence when judging.
    let mut score = |table: &StyleTable, texts: &[&str], target: &[f32]| {
        let mut sum = 0.0;
        for text in texts {
            sum += cosine(target, &stock::embed_voice(engine, encoder, table, text)?);
            done.set(done.get() + 1);
            progress(done.get().min(total), total);
        }
        Ok::<f32, EngineError>(sum / texts.len() as f32)
    };

    let dims = tables[0].shape()[2];
    let spread = tables[0].std(0.0);
    let mut current = Candidate {
        logits: nearest.iter().map(|(_, s)| s / TEMPERATURE).collect(),
        offset: vec![0.0; dims],
    };
    let mut current_score = score(&table_of(&current), &[SEARCH_TEXT], &search_target)?;
    let start_score = current_score;
    let mut judged_best = (
        score(&table_of(&current), &HOLDOUT_TEXTS, &held_target)?,
        current.clone(),
    );

    let mut rng = StdRng::seed_from_u64(settings.seed);
    let (mut logit_step, mut offset_step) = (1.0f32, 0.25 * spread);
    let (mut improved, mut stale) = (0, 0);
    for _ in 0..settings.evaluations {
        if let Some(limit) = settings.time_limit {
            // Each synthesis has cost about the mean so far; a step may be followed by a
            // judgement, so both must fit.
            let spent = started.elapsed();
            let per_synthesis = spent / (done.get() - computed).max(1) as u32;
            if spent + per_synthesis * (1 + judging) as u32 > limit {
                break;
            }
        }
        let mut noise = || -> f32 { StandardNormal.sample(&mut rng) };
        let candidate = Candidate {
            logits: current
                .logits
                .iter()
                .map(|l| l + logit_step * noise())
                .collect(),
            offset: current
                .offset
                .iter()
                .map(|o| o + offset_step * noise())
                .collect(),
        };
        let s = score(&table_of(&candidate), &[SEARCH_TEXT], &search_target)?;
        if s > current_score {
            current_score = s;
            current = candidate;
            logit_step *= 1.5;
            offset_step *= 1.5;
            improved += 1;
        } else {
            logit_step *= 0.85;
            offset_step *= 0.85;
        }
        if improved >= JUDGE_AFTER {
            improved = 0;
            let held = score(&table_of(&current), &HOLDOUT_TEXTS, &held_target)?;
            if held > judged_best.0 {
                judged_best = (held, current.clone());
                stale = 0;
            } else {
                stale += 1;
                if stale >= PATIENCE {
                    break;
                }
            }
        }
    }
    if improved > 0 {
        // Improvements since the last judgement are judged too, so that none is lost.
        let held = score(&table_of(&current), &HOLDOUT_TEXTS, &held_target)?;
        if held > judged_best.0 {
            judged_best = (held, current.clone());
        }
    }
    progress(total, total);
    // Every synthesis since the stock voices' counted one step of progress.
    let syntheses = done.get() - computed;

    let (cloned_similarity, best) = judged_best;
    if cloned_similarity < best_stock_similarity + MIN_GAIN {
        return Ok(CloneResult {
            blend: vec![(best_stock_voice.clone(), 1.0)],
            offset: vec![0.0; dims],
            cloned_similarity: best_stock_similarity,
            best_stock_voice,
            best_stock_similarity,
            beats_stock: false,
            search_similarity: current_score,
            best_stock_search_similarity: start_score,
            syntheses,
        });
    }
    let mut blend: Vec<(String, f32)> = nearest
        .iter()
        .map(|(name, _)| name.clone())
        .zip(softmax(&best.logits))
        .collect();
    blend.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(CloneResult {
        blend,
        offset: best.offset,
        cloned_similarity,
        best_stock_voice,
        best_stock_similarity,
        beats_stock: true,
        search_similarity: current_score,
        best_stock_search_similarity: start_score,
        syntheses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blend_is_the_weighted_mean_plus_the_offset() {
        let a = StyleTable::from_elem([3, 1, 4], 1.0);
        let b = StyleTable::from_elem([2, 1, 4], 3.0);
        let table = blend_table(&[(&a, 0.75), (&b, 0.25)], &[0.0, 1.0, 0.0, 0.0]);
        // Cut to the shorter table.
        assert_eq!(table.shape(), [2, 1, 4]);
        assert_eq!(table[[1, 0, 0]], 1.5);
        assert_eq!(table[[1, 0, 1]], 2.5);
    }

    #[test]
    fn a_reference_is_halved_when_each_half_is_long_enough() {
        let rate = ANALYSIS_RATE as usize;
        let long = vec![0.0f32; 6 * rate];
        let (a, b) = split_reference(&long);
        assert_eq!((a.len(), b.len()), (3 * rate, 3 * rate));
        let short = vec![0.0f32; 3 * rate];
        let (a, b) = split_reference(&short);
        assert_eq!((a.len(), b.len()), (3 * rate, 3 * rate));
    }

    #[test]
    fn softmax_weights_sum_to_one_and_keep_the_order() {
        let w = softmax(&[2.0, 1.0, 0.0]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(w[0] > w[1] && w[1] > w[2]);
    }
}
