//! Reference-speech analysis on real models: voice activity detection and speaker embeddings,
//! fed with speech from the two engines' voices.

use std::sync::OnceLock;

use tts_tests::clips::{self, FIRST, SECOND};
use tts_tests::engines;
use tts_worker::engine::{Engine, SynthesisInput};
use tts_worker::voice::ANALYSIS_RATE;
use tts_worker::voice::resample::resample;
use tts_worker::voice::speaker::{SpeakerEncoder, cosine};
use tts_worker::voice::vad::Vad;

fn analysis() -> &'static (Vad, SpeakerEncoder) {
    static MODELS: OnceLock<(Vad, SpeakerEncoder)> = OnceLock::new();
    MODELS.get_or_init(|| {
        let paths =
            tts_worker::models::ensure_analysis(&engines::cache_dir()).expect("analysis models");
        let env = tts_worker::runtime::environment(&paths.onnxruntime).expect("runtime");
        (
            Vad::load(env, &paths.vad).expect("vad loads"),
            SpeakerEncoder::load(env, &paths.speaker_encoder).expect("encoder loads"),
        )
    })
}

/// Speech at 16 kHz from one of the stock voices.
fn speak(voice: &str, text: &str) -> Vec<f32> {
    let input = SynthesisInput {
        text: text.into(),
        voice_id: voice.into(),
        language: "en".into(),
        speed: 1.0,
        streamed: false,
        voice: None,
        cancel: Default::default(),
        reference_wav: None,
    };
    let audio = if voice == "en_US-joe-medium" {
        engines::piper().synthesize(&input, &mut |_| {}).unwrap()
    } else {
        engines::kokoro().synthesize(&input, &mut |_| {}).unwrap()
    };
    resample(&audio.samples, audio.sample_rate, ANALYSIS_RATE).unwrap()
}

#[test]
fn speech_is_found_and_trimmed_and_silence_is_not_speech() {
    let (vad, _) = analysis();
    let speech = speak("en_US-joe-medium", FIRST);
    let speech_secs = speech.len() as f32 / ANALYSIS_RATE as f32;
    let pad = vec![0.0f32; 2 * ANALYSIS_RATE as usize];
    let padded: Vec<f32> = pad.iter().chain(&speech).chain(&pad).copied().collect();

    let report = vad.analyse(&padded).unwrap();
    assert!(
        report.speech_seconds > 0.6 * speech_secs && report.speech_seconds <= speech_secs + 0.3,
        "{report:?} for {speech_secs:.2} s of speech"
    );
    let (start, end) = report.span.unwrap();
    let kept = (end - start) as f32 / ANALYSIS_RATE as f32;
    assert!(
        kept < speech_secs + 0.8,
        "kept {kept:.2} s of {speech_secs:.2}"
    );
    assert!(start >= pad.len() - ANALYSIS_RATE as usize / 2, "{start}");

    let silence = vec![0.0f32; 5 * ANALYSIS_RATE as usize];
    let report = vad.analyse(&silence).unwrap();
    assert_eq!(report.speech_seconds, 0.0);
    assert_eq!(report.span, None);
}

#[test]
fn the_encoder_tells_speakers_apart() {
    let (_, encoder) = analysis();
    let joe_a = encoder.embed(&speak("en_US-joe-medium", FIRST)).unwrap();
    let joe_b = encoder.embed(&speak("en_US-joe-medium", SECOND)).unwrap();
    let kumo = encoder.embed(&speak("jm_kumo", SECOND)).unwrap();
    let alpha = encoder.embed(&speak("jf_alpha", SECOND)).unwrap();
    assert_eq!(joe_a.len(), 256);
    let norm: f32 = joe_a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    let same = cosine(&joe_a, &joe_b);
    let other = cosine(&joe_a, &kumo).max(cosine(&joe_a, &alpha));
    eprintln!(
        "cosine: joe/joe {same:.3}, joe/kumo {:.3}, joe/alpha {:.3}, kumo/alpha {:.3}",
        cosine(&joe_a, &kumo),
        cosine(&joe_a, &alpha),
        cosine(&kumo, &alpha)
    );
    assert!(
        same > other + 0.1,
        "same speaker {same:.3}, different speakers up to {other:.3}"
    );
}

#[test]
fn too_short_audio_has_no_embedding() {
    let (_, encoder) = analysis();
    let err = encoder
        .embed(&vec![0.1f32; ANALYSIS_RATE as usize / 2])
        .unwrap_err();
    assert_eq!(err.code(), "audio_too_short");
}

#[test]
fn an_mp3_named_like_a_wav_is_decoded_as_mp3() {
    let speech = speak("en_US-joe-medium", FIRST);
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    std::fs::write(&wav, clips::wav(&speech, ANALYSIS_RATE)).unwrap();
    // The upload's name says WAV; its bytes are MP3.
    let mp3 = dir.path().join("clip.wav");
    let status = std::process::Command::new("lame")
        .args(["--quiet", "-b", "64"])
        .arg(&wav)
        .arg(&mp3)
        .status()
        .expect("lame is installed (scripts/deps installs it)");
    assert!(status.success());
    let clip = tts_audio::decode(&std::fs::read(&mp3).unwrap()).unwrap();
    assert_eq!(clip.format, "mp3");
    let expected = speech.len() as f32 / ANALYSIS_RATE as f32;
    assert!(
        (clip.duration_seconds() - expected).abs() < 0.2,
        "{} s decoded, {expected} s encoded",
        clip.duration_seconds()
    );
    // What was decoded is still the same speaker.
    let (_, encoder) = analysis();
    let decoded = resample(&clip.samples, clip.sample_rate, ANALYSIS_RATE).unwrap();
    let similarity = cosine(
        &encoder.embed(&decoded).unwrap(),
        &encoder.embed(&speech).unwrap(),
    );
    assert!(similarity > 0.9, "{similarity}");
}

/// Kokoro's style search for the Piper voice, a speaker Kokoro has never seen, with 12 steps,
/// seed 7 and `time_limit`: the result and every progress report.
fn search_for_piper_voice(
    time_limit: Option<std::time::Duration>,
) -> (
    tts_worker::engine::kokoro::style_search::CloneResult,
    Vec<(usize, usize)>,
) {
    use tts_worker::engine::CloneSettings;
    use tts_worker::engine::kokoro::style_search::clone_style;
    let (_, encoder) = analysis();
    let reference: Vec<f32> = [FIRST, SECOND]
        .iter()
        .flat_map(|t| speak("en_US-joe-medium", t))
        .collect();
    let mut steps = Vec::new();
    let settings = CloneSettings {
        evaluations: 12,
        seed: 7,
        time_limit,
    };
    let result = clone_style(
        engines::kokoro(),
        encoder,
        &reference,
        &settings,
        &mut |done, total| steps.push((done, total)),
    )
    .unwrap();
    (result, steps)
}

#[test]
fn the_style_search_moves_kokoro_towards_the_reference_speaker() {
    let (result, steps) = search_for_piper_voice(None);
    eprintln!(
        "blend {:?}: search {:.3} -> {:.3}; held-out: cloned {:.3}, best stock {} {:.3}; {} syntheses",
        result.blend,
        result.best_stock_search_similarity,
        result.search_similarity,
        result.cloned_similarity,
        result.best_stock_voice,
        result.best_stock_similarity,
        result.syntheses,
    );
    // The stock voices' embeddings are cached: the steps are the search's own, at most the
    // budget, ending at done: the start and 12 steps on the search sentence, and judgements of
    // every held-out sentence (the start's, one per 3 improvements, a last one).
    let judging = tts_worker::engine::kokoro::style_search::HOLDOUT_TEXTS.len();
    let budget = 1 + 12 + (12 / 3 + 2) * judging;
    assert!(
        steps
            .iter()
            .all(|&(done, total)| total == budget && done <= total),
        "{steps:?}"
    );
    assert_eq!(steps.last(), Some(&(budget, budget)));
    assert!(result.syntheses <= budget);
    // The search only keeps candidates the encoder scores closer, so it never ends below where
    // it started; the result is never worse than the best stock voice on held-out material,
    // and says whether it beat it.
    assert!(result.search_similarity >= result.best_stock_search_similarity);
    assert!(result.cloned_similarity >= result.best_stock_similarity);
    if result.beats_stock {
        use tts_worker::engine::kokoro::style_search::MIN_GAIN;
        assert!(result.cloned_similarity >= result.best_stock_similarity + MIN_GAIN);
        assert!(result.blend.len() > 1);
    } else {
        assert_eq!(result.blend, vec![(result.best_stock_voice.clone(), 1.0)]);
    }
    let weights: f32 = result.blend.iter().map(|(_, w)| w).sum();
    assert!((weights - 1.0).abs() < 1e-4, "{:?}", result.blend);
    assert_eq!(result.offset.len(), 256);
    assert!(result.offset.iter().all(|v| v.is_finite()));
}

/// A search out of time takes no step: the clone is what the start gave, judged, never worse
/// than the best stock voice, and progress still ends at done. A limit of zero makes this the
/// same on any machine, however fast.
#[test]
fn the_style_search_stops_at_its_time_limit() {
    use tts_worker::engine::kokoro::style_search::HOLDOUT_TEXTS;
    let (result, steps) = search_for_piper_voice(Some(std::time::Duration::ZERO));
    // The start speaks the search sentence once and is judged on every held-out sentence.
    assert_eq!(result.syntheses, 1 + HOLDOUT_TEXTS.len(), "{result:?}");
    assert_eq!(
        result.search_similarity,
        result.best_stock_search_similarity
    );
    assert!(result.cloned_similarity >= result.best_stock_similarity);
    let (done, total) = *steps.last().unwrap();
    assert_eq!(done, total, "{steps:?}");
}

#[test]
fn reference_clips_need_three_to_thirty_seconds_of_speech() {
    use tts_worker::voice::reference::prepare;
    let (vad, _) = analysis();
    let say = |text: &str| clips::speech(text).0;
    let rate = 22_050;
    let second_of_silence = vec![0.0f32; rate as usize];

    // About 6 s of speech with silence around it: accepted and trimmed at 16 kHz.
    let speech = say(&format!("{FIRST} {SECOND}"));
    let padded: Vec<f32> = second_of_silence
        .iter()
        .chain(&speech)
        .chain(&second_of_silence)
        .copied()
        .collect();
    let reference = prepare(vad, &padded, rate).unwrap();
    let kept = reference.samples.len() as f32 / ANALYSIS_RATE as f32;
    let spoken = speech.len() as f32 / rate as f32;
    assert!(
        kept < spoken + 1.0,
        "kept {kept:.2} s of {spoken:.2} s of speech"
    );
    assert!(reference.speech_seconds >= 3.0);

    // One word is too little.
    let err = prepare(vad, &say("Hello."), rate).unwrap_err();
    assert_eq!(err.code(), "too_little_speech", "{err}");

    // Forty-odd seconds is too much.
    let long = say(&format!("{FIRST} {SECOND} ").repeat(8));
    assert!(long.len() as f32 / rate as f32 > 40.0);
    let err = prepare(vad, &long, rate).unwrap_err();
    assert_eq!(err.code(), "too_much_speech", "{err}");

    // Silence is no speech at all.
    let err = prepare(vad, &vec![0.0f32; 10 * rate as usize], rate).unwrap_err();
    assert_eq!(err.code(), "no_speech", "{err}");
}
