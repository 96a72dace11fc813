//! The piper engine on the real voice, without the service around it.

use tts_tests::engines::{piper, piper_options, stock_input};
use tts_worker::engine::piper::PiperEngine;
use tts_worker::engine::{Engine, EngineErrorKind, Step, SynthesisInput};

fn input(text: &str) -> SynthesisInput {
    stock_input(text, "en_US-joe-medium", "en")
}

/// Engines here load without the service around them, so the allocator must have been set up
/// by the process itself when it started: unset, every synthesis would run about twice as
/// slowly (`voice_clone_tts::allocator`).
#[test]
fn the_allocator_is_set_up_before_anything_loads() {
    assert!(voice_clone_tts::allocator::first_arena_keeps_large_blocks());
}

#[test]
fn cuda_falls_back_to_cpu_with_the_reason() {
    // No machine this runs on in CI has a GPU; with one, the engine would say cuda here.
    let engine = PiperEngine::load(&piper_options("cuda")).expect("loads on some device");
    let health = engine.health();
    assert!(health.ready);
    if health.device == "cpu" {
        assert!(health.detail.contains("cuda unavailable"), "{health:?}");
    }
}

#[test]
fn progress_is_reported_per_sentence() {
    let engine = piper();
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

/// Runs a synthesis and checks that its steps' audio, laid end to end, is the audio it returns,
/// sample for sample; returns how many steps carried audio.
fn pieces_make_the_audio(engine: &dyn Engine, input: &SynthesisInput) -> usize {
    let mut pieces: Vec<Vec<f32>> = Vec::new();
    let mut rates = Vec::new();
    let audio = engine
        .synthesize(input, &mut |step| {
            if !step.audio.is_empty() {
                pieces.push(step.audio.to_vec());
            }
            rates.push(step.sample_rate);
        })
        .unwrap();
    assert!(rates.iter().all(|&r| r == audio.sample_rate), "{rates:?}");
    let streamed = pieces.concat();
    assert_eq!(streamed.len(), audio.samples.len());
    // Bit for bit, so that a streamed listener hears exactly what is stored.
    assert!(
        streamed
            .iter()
            .zip(&audio.samples)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the pieces differ from the audio"
    );
    pieces.len()
}

#[test]
fn each_sentence_is_reported_with_its_audio() {
    let engine = piper();
    assert_eq!(
        pieces_make_the_audio(engine, &input("One. Two, and three! Four?")),
        3
    );
    assert_eq!(pieces_make_the_audio(engine, &input("Just one.")), 1);
}

/// The audio of each step that carried some, in order.
fn pieces(engine: &dyn Engine, input: &SynthesisInput) -> Vec<Vec<f32>> {
    let mut pieces = Vec::new();
    engine
        .synthesize(input, &mut |step| {
            if !step.audio.is_empty() {
                pieces.push(step.audio.to_vec());
            }
        })
        .unwrap();
    pieces
}

#[test]
fn a_streamed_job_starts_with_the_opening_words_alone() {
    let engine = piper();
    let text = "Streaming speech lets a listener hear the first words while the rest of the text \
                is still being made. Then the second sentence follows.";
    let streamed = SynthesisInput {
        streamed: true,
        ..input(text)
    };
    // The first sentence comes in two pieces, the second whole; together they are the audio.
    assert_eq!(pieces_make_the_audio(engine, &streamed), 3);
    assert_eq!(pieces_make_the_audio(engine, &input(text)), 2);
    // "Streaming speech lets" is about a second of speech, a small part of the sentence.
    let streamed = pieces(engine, &streamed);
    let whole = pieces(engine, &input(text));
    let lead = streamed[0].len() as f32 / 22050.0;
    assert!((0.4..1.6).contains(&lead), "the first piece lasts {lead} s");
    assert!(streamed[0].len() * 3 < whole[0].len());
}

#[test]
fn inputs_the_voice_cannot_speak_are_invalid_not_retried() {
    let engine = piper();
    let mut ignore = |_: Step<'_>| {};
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

mod kokoro {
    use tts_tests::engines::{kokoro as engine, stock_input};
    use tts_worker::engine::kokoro::SAMPLE_RATE;
    use tts_worker::engine::kokoro::style_search::{HOLDOUT_TEXTS, SEARCH_TEXT};
    use tts_worker::engine::zh::normalize::normalize;
    use tts_worker::engine::{Engine, SynthesisInput};

    fn rms(samples: &[f32]) -> f32 {
        (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
    }

    #[test]
    fn mandarin_with_numbers_gives_audio_of_plausible_duration() {
        let engine = engine();
        let text = "今天天气很好，我们一起去公园散步吧。2024年3月5日 下午3点 价格是12.5元。";
        // Every hanzi after normalisation is one syllable.
        let syllables = normalize(text)
            .chars()
            .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
            .count();
        assert_eq!(syllables, 37);
        let mut progress = Vec::new();
        let audio = engine
            .synthesize(&stock_input(text, "jf_alpha", "zh"), &mut |p| {
                progress.push(p.done)
            })
            .unwrap();
        assert_eq!(audio.sample_rate, SAMPLE_RATE);
        assert_eq!(progress, [1, 2], "one progress step per sentence");
        let per_syllable = audio.duration_seconds() / syllables as f32;
        assert!(
            (0.12..=0.6).contains(&per_syllable),
            "{:.2} s for {syllables} syllables",
            audio.duration_seconds()
        );
        assert!(rms(&audio.samples) > 0.01, "silent audio");
    }

    #[test]
    fn english_and_every_stock_voice_are_served() {
        let engine = engine();
        let voices = engine.voices();
        // All of Kokoro v1.0's voice packs, each saying what it was made for.
        assert_eq!(voices.len(), 54);
        assert!(voices.iter().all(|v| v.speaks("en") && v.speaks("zh-CN")));
        let voice = |id: &str| voices.iter().find(|v| v.voice_id == id).unwrap();
        assert_eq!(voice("af_heart").native_language.as_deref(), Some("en-US"));
        assert_eq!(voice("af_heart").language, "en-US");
        assert_eq!(voice("bm_george").native_language.as_deref(), Some("en-GB"));
        assert_eq!(voice("zf_xiaobei").language, "zh");
        assert_eq!(voice("jf_alpha").native_language.as_deref(), Some("ja"));
        // No Japanese front end here: the voice is not offered in Japanese.
        assert!(!voice("jf_alpha").speaks("ja"));
        let natives = |prefix: char| {
            voices
                .iter()
                .filter(|v| v.voice_id.starts_with(prefix))
                .count()
        };
        assert_eq!((natives('a'), natives('b'), natives('z')), (20, 8, 8));
        let audio = engine
            .synthesize(
                &stock_input(
                    "Good morning. The weather is lovely today.",
                    "jm_kumo",
                    "en",
                ),
                &mut |_| {},
            )
            .unwrap();
        let words = 7.0;
        assert!(
            (0.15 * words..=1.2 * words).contains(&audio.duration_seconds()),
            "{} s",
            audio.duration_seconds()
        );
        assert!(rms(&audio.samples) > 0.01);
    }

    #[test]
    fn each_sentence_is_reported_with_its_audio() {
        let input = |text: &str, language: &str| stock_input(text, "jf_alpha", language);
        let engine = engine();
        let english = input(
            "Good morning. The weather is lovely today! Shall we go?",
            "en",
        );
        assert_eq!(super::pieces_make_the_audio(engine, &english), 3);
        let mandarin = input("今天天气很好。我们去公园散步吧。", "zh");
        assert_eq!(super::pieces_make_the_audio(engine, &mandarin), 2);
    }

    #[test]
    fn a_streamed_english_job_starts_with_the_opening_words_alone() {
        let engine = engine();
        let input = SynthesisInput {
            streamed: true,
            ..stock_input(
                "The weather is lovely today, and the whole town has gone out to the park. \
                 Shall we go?",
                "jf_alpha",
                "en",
            )
        };
        assert_eq!(super::pieces_make_the_audio(engine, &input), 3);
        let first = super::pieces(engine, &input)[0].len() as f32 / SAMPLE_RATE as f32;
        assert!(
            (0.3..2.0).contains(&first),
            "the first piece lasts {first} s"
        );
    }

    /// Voice packs of the stock voices, made a little quieter so that their cached embeddings
    /// (shipped or not) do not apply: voices this model has never embedded.
    fn unseen_voices(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let stock = tts_tests::engines::kokoro_options().voices;
        for name in names {
            let bytes = std::fs::read(stock.join(format!("{name}.bin"))).unwrap();
            let scaled: Vec<u8> = bytes
                .chunks_exact(4)
                .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * 0.97).to_le_bytes())
                .collect();
            std::fs::write(dir.path().join(format!("{name}.bin")), scaled).unwrap();
        }
        dir
    }

    /// The stock voices' embeddings are computed once and then read from the cache: a second
    /// engine over the same cache computes none, and finds the same values.
    #[test]
    fn stock_embeddings_are_computed_once_per_model_and_voice() {
        use tts_worker::engine::kokoro::KokoroEngine;
        let voices = unseen_voices(&["af_heart", "zf_xiaobei"]);
        let cache = tempfile::tempdir().unwrap();
        let mut options = tts_tests::engines::kokoro_options();
        options.voices = voices.path().to_path_buf();
        options.stock_embeddings = Some(cache.path().to_path_buf());
        let analysis = tts_tests::engines::analysis();

        let first = KokoroEngine::load(&options).unwrap();
        let mut computed = Vec::new();
        // Two sentences count as one run of progress, which only goes forwards.
        let texts = [SEARCH_TEXT, HOLDOUT_TEXTS[0]];
        let embeddings = first
            .stock_embeddings()
            .all(&first, &analysis.encoder, &texts, &mut |done, total| {
                computed.push((done, total))
            })
            .unwrap();
        assert_eq!(computed, [(1, 4), (2, 4), (3, 4), (4, 4)]);
        assert_eq!(embeddings.len(), 2);
        assert!(embeddings.iter().all(|voices| voices.len() == 2));
        assert_ne!(embeddings[0], embeddings[1], "one list per sentence");
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 4);

        let second = KokoroEngine::load(&options).unwrap();
        let mut recomputed = 0;
        let cached = second
            .stock_embeddings()
            .all(&second, &analysis.encoder, &texts, &mut |_, _| {
                recomputed += 1
            })
            .unwrap();
        assert_eq!(recomputed, 0, "the cache was not used");
        assert_eq!(cached, embeddings);
    }

    /// On a model whose stock embeddings are not cached, enrollment computes them first for
    /// every sentence it scores on, and its progress counts them all in one total that only
    /// goes forwards and ends at done.
    #[test]
    fn a_first_enrollment_reports_progress_that_only_goes_forwards() {
        use tts_worker::engine::CloneSettings;
        use tts_worker::engine::kokoro::KokoroEngine;
        use tts_worker::engine::kokoro::style_search::clone_style;
        use tts_worker::voice::ANALYSIS_RATE;
        use tts_worker::voice::resample::resample;
        let voices = unseen_voices(&["af_heart", "am_liam"]);
        let mut options = tts_tests::engines::kokoro_options();
        options.voices = voices.path().to_path_buf();
        // Kept for this process only, so that every run computes them.
        options.stock_embeddings = None;
        let fresh = KokoroEngine::load(&options).unwrap();
        let analysis = tts_tests::engines::analysis();
        let speech = engine()
            .synthesize(&stock_input(HOLDOUT_TEXTS[0], "bf_emma", "en"), &mut |_| {})
            .unwrap();
        let reference = resample(&speech.samples, speech.sample_rate, ANALYSIS_RATE).unwrap();

        let mut steps: Vec<(usize, usize)> = Vec::new();
        clone_style(
            &fresh,
            &analysis.encoder,
            &reference,
            &CloneSettings {
                evaluations: 1,
                seed: 7,
                time_limit: None,
            },
            &mut |done, total| steps.push((done, total)),
        )
        .unwrap();
        let sentences = 1 + HOLDOUT_TEXTS.len();
        let total = steps[0].1;
        assert!(
            steps.iter().all(|&(_, t)| t == total),
            "one total throughout: {steps:?}"
        );
        assert!(
            steps.windows(2).all(|w| w[0].0 <= w[1].0),
            "progress went backwards: {steps:?}"
        );
        assert_eq!(
            steps[..2 * sentences],
            (1..=2 * sentences).map(|d| (d, total)).collect::<Vec<_>>(),
            "two voices' embeddings on every sentence come first"
        );
        assert_eq!(steps.last(), Some(&(total, total)));
    }

    /// The worker ships the embeddings of every stock voice of the stock model, and they are
    /// what the model and encoder give here (scripts/stock-embeddings refreshes them). They are
    /// shipped per family of CPU kernels; on a machine of a family they are not shipped for,
    /// the worker computes its own (fetch-models does, ahead of the tests), and there is
    /// nothing shipped to check.
    #[test]
    fn the_shipped_stock_embeddings_cover_every_voice_and_are_current() {
        use tts_worker::engine::kokoro::stock::{StockEmbeddings, embed_voice, shipped_here};
        use tts_worker::voice::speaker::cosine;
        let engine = engine();
        let analysis = tts_tests::engines::analysis();
        if !shipped_here(engine, &analysis.encoder) {
            eprintln!(
                "no stock embeddings are shipped for this machine's kernels ({}); not checked",
                tts_worker::runtime::cpu_kernels()
            );
            return;
        }
        let stock = StockEmbeddings::new(None);
        let texts = tts_worker::engine::kokoro::stock::scored_texts();
        let mut computed = 0;
        let shipped = stock
            .all(engine, &analysis.encoder, &texts, &mut |_, _| computed += 1)
            .unwrap();
        assert_eq!(
            computed, 0,
            "scripts/stock-embeddings has not been run for this model"
        );
        assert!(shipped.iter().all(|voices| voices.len() == 54));
        let shipped = &shipped[texts.iter().position(|t| *t == HOLDOUT_TEXTS[1]).unwrap()];
        let (name, embedding) = shipped.iter().find(|(n, _)| n == "bf_emma").unwrap();
        let table = engine.stock_voice(name).unwrap();
        let now = embed_voice(engine, &analysis.encoder, table, HOLDOUT_TEXTS[1]).unwrap();
        let similarity = cosine(&now, embedding);
        assert!(similarity > 0.999, "{name}: {similarity}");
    }

    #[test]
    fn speed_shortens_the_audio() {
        let engine = engine();
        let input = |speed| SynthesisInput {
            speed,
            ..stock_input("我们一起去公园散步吧。", "jf_alpha", "zh")
        };
        let normal = engine.synthesize(&input(1.0), &mut |_| {}).unwrap();
        let fast = engine.synthesize(&input(2.0), &mut |_| {}).unwrap();
        assert!(fast.duration_seconds() < normal.duration_seconds() * 0.75);
    }
}

/// The Piper voice's decoder with its 1-D convolutions run as 2-D (`tts_worker::conv2d`).
mod conv2d {
    use ort::session::Session;
    use ort::value::Tensor;
    use tts_tests::engines::cache_dir;
    use tts_tests::onnx::{Attr, Dim, Elem, Graph, weights};
    use tts_worker::conv2d::decoder_as_2d;

    fn session(model: &[u8]) -> Session {
        let paths = tts_worker::models::ensure(&cache_dir()).expect("the runtime is cached");
        let env = tts_worker::runtime::environment(&paths.onnxruntime).expect("runtime");
        Session::builder(env)
            .unwrap()
            .commit_from_memory(model)
            .expect("the model loads")
    }

    /// Every output of `model` for `inputs`, flattened, with its shape. The inputs are made once
    /// the runtime is loaded, which tensors need.
    fn run(
        model: &[u8],
        inputs: impl FnOnce() -> Vec<(&'static str, ort::value::DynValue)>,
    ) -> Vec<(Vec<i64>, Vec<f32>)> {
        let mut session = session(model);
        let outputs = session.run(inputs()).expect("the model runs");
        outputs
            .iter()
            .map(|(_, value)| {
                let (shape, data) = value.try_extract_tensor::<f32>().unwrap();
                (shape.to_vec(), data.to_vec())
            })
            .collect()
    }

    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A decoder in the shape of HiFi-GAN's: convolutions (one padded and biased, one transposed
    /// with a stride, one dilated), activations, a residual sum and a division by a constant,
    /// with one output read after it and one read from its middle.
    fn decoder(extra: impl FnOnce(&mut Graph)) -> Vec<u8> {
        let mut g = Graph::new("decoder");
        g.input(
            "x",
            Elem::F32,
            &[Dim::Fixed(1), Dim::Fixed(4), Dim::Dynamic("t")],
        )
        .constant_f32("w_pre", &[8, 4, 7], weights(1, 8 * 4 * 7, 0.3))
        .constant_f32("b_pre", &[8], weights(2, 8, 0.1))
        .constant_f32("w_up", &[8, 4, 4], weights(3, 8 * 4 * 4, 0.3))
        .constant_f32("w_res", &[4, 4, 3], weights(4, 4 * 4 * 3, 0.3))
        .constant_f32("two", &[], vec![2.0])
        .constant_f32("one", &[1], vec![1.0]);
        let ints = |name, v: &[i64]| Attr::Ints(name, v.to_vec());
        g.named_node(
            "/dec/conv_pre/Conv",
            "Conv",
            &["x", "w_pre", "b_pre"],
            &["a"],
            vec![ints("kernel_shape", &[7]), ints("pads", &[3, 3])],
        )
        .named_node("/dec/LeakyRelu", "LeakyRelu", &["a"], &["b"], vec![])
        .named_node(
            "/dec/ups.0/ConvTranspose",
            "ConvTranspose",
            &["b", "w_up"],
            &["c"],
            vec![ints("strides", &[2]), ints("pads", &[1, 1])],
        )
        .named_node(
            "/dec/resblocks.0/convs.0/Conv",
            "Conv",
            &["c", "w_res"],
            &["d"],
            vec![ints("dilations", &[3]), ints("pads", &[3, 3])],
        )
        .named_node("/dec/resblocks.0/Add", "Add", &["d", "c"], &["e"], vec![])
        .named_node("/dec/Div", "Div", &["e", "two"], &["f"], vec![])
        .named_node("/dec/Tanh", "Tanh", &["f"], &["g"], vec![])
        .named_node("/Mul", "Mul", &["g", "one"], &["y"], vec![])
        .named_node("/Sigmoid", "Sigmoid", &["c"], &["z"], vec![])
        .output(
            "y",
            Elem::F32,
            &[Dim::Fixed(1), Dim::Fixed(4), Dim::Dynamic("t2")],
        )
        .output(
            "z",
            Elem::F32,
            &[Dim::Fixed(1), Dim::Fixed(4), Dim::Dynamic("t2")],
        );
        extra(&mut g);
        g.to_bytes()
    }

    #[test]
    fn a_decoder_computes_the_same_with_its_convolutions_as_2d() {
        let model = decoder(|_| {});
        let rewritten = decoder_as_2d(&model)
            .unwrap()
            .expect("the decoder is rewritten");
        assert_eq!(rewritten.convolutions, 3);
        assert_eq!(rewritten.relaid_weights, ["w_pre", "w_res"]);
        let input = || {
            let x = Tensor::from_array((vec![1i64, 4, 37], weights(5, 4 * 37, 1.0))).unwrap();
            vec![("x", x.into_dyn())]
        };
        let before = run(&model, input);
        let after = run(&rewritten.model, input);
        assert_eq!(before.len(), 2);
        for ((shape, a), (shape_2d, b)) in before.iter().zip(&after) {
            assert_eq!(shape, &vec![1, 4, 74]);
            assert_eq!(shape, shape_2d, "the outputs keep their shape");
            assert!(max_difference(a, b) < 1e-5, "{}", max_difference(a, b));
        }
    }

    #[test]
    fn a_decoder_that_might_depend_on_rank_is_left_alone() {
        // An operator that is not element-wise.
        let transposed = decoder(|g| {
            g.named_node(
                "/dec/Transpose",
                "Transpose",
                &["g"],
                &["gt"],
                vec![Attr::Ints("perm", vec![0, 2, 1])],
            );
        });
        assert!(decoder_as_2d(&transposed).unwrap().is_none());
        // A constant of one value per channel, which would broadcast differently in 2-D.
        let per_channel = decoder(|g| {
            g.constant_f32("gain", &[4, 1], vec![1.0; 4]).named_node(
                "/dec/Mul",
                "Mul",
                &["g", "gain"],
                &["scaled"],
                vec![],
            );
        });
        assert!(decoder_as_2d(&per_channel).unwrap().is_none());
        // No decoder at all.
        let mut plain = Graph::new("plain");
        plain
            .input("x", Elem::F32, &[Dim::Fixed(1)])
            .node("Relu", &["x"], &["y"], vec![])
            .output("y", Elem::F32, &[Dim::Fixed(1)]);
        assert!(decoder_as_2d(&plain.to_bytes()).unwrap().is_none());
        assert!(decoder_as_2d(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn the_piper_voice_speaks_the_same_with_its_decoder_in_2d() {
        let paths = tts_worker::models::ensure(&cache_dir()).expect("the piper voice is cached");
        let model = std::fs::read(paths.piper_dir.join("en_US-joe-medium.onnx")).unwrap();
        let rewritten = decoder_as_2d(&model)
            .unwrap()
            .expect("the decoder is rewritten");
        // HiFi-GAN's 18 convolutions in residual blocks, 3 upsampling ones, one before them and
        // one after.
        assert_eq!(rewritten.convolutions, 23);
        assert_eq!(rewritten.relaid_weights.len(), 20);
        // Phoneme ids between pads, as the engine writes them; without noise the voice is
        // deterministic.
        let ids: Vec<i64> = std::iter::once(1)
            .chain((0..60).flat_map(|i| [14 + (i * 7) % 90, 0]))
            .chain(std::iter::once(2))
            .collect();
        let input = || {
            let len = ids.len() as i64;
            vec![
                (
                    "input",
                    Tensor::from_array((vec![1, len], ids.clone()))
                        .unwrap()
                        .into_dyn(),
                ),
                (
                    "input_lengths",
                    Tensor::from_array((vec![1i64], vec![len]))
                        .unwrap()
                        .into_dyn(),
                ),
                (
                    "scales",
                    Tensor::from_array((vec![3i64], vec![0.0f32, 1.0, 0.0]))
                        .unwrap()
                        .into_dyn(),
                ),
            ]
        };
        let before = run(&model, input);
        let after = run(&rewritten.model, input);
        assert_eq!(before[0].0, after[0].0, "the same length of audio");
        assert!(before[0].1.len() > 22_050 / 2);
        let difference = max_difference(&before[0].1, &after[0].1);
        assert!(difference < 1e-4, "{difference}");
    }
}
