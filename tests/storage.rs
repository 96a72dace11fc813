//! One conformance suite for audio storage, run against every backend: memory, a local
//! directory, and an S3-compatible server.

use bytes::Bytes;
use tts_config::StorageSettings;
use tts_infra::AudioStore;
use tts_tests::S3Server;

async fn conformance(store: AudioStore) {
    assert_eq!(store.get("audio/missing.wav").await.unwrap(), None);
    assert!(!store.exists("audio/missing.wav").await.unwrap());
    store
        .put("audio/a.wav", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(store.get("audio/a.wav").await.unwrap().unwrap(), "one");
    assert!(store.exists("audio/a.wav").await.unwrap());
    // Overwriting keeps one object with the new content: redelivered jobs rely on it.
    store
        .put("audio/a.wav", Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(store.get("audio/a.wav").await.unwrap().unwrap(), "two");
    store
        .put("other/b.wav", Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert_eq!(store.list("audio").await.unwrap(), vec!["audio/a.wav"]);
    store.delete("audio/a.wav").await.unwrap();
    // Deleting what is not there is not an error.
    store.delete("audio/a.wav").await.unwrap();
    assert!(!store.exists("audio/a.wav").await.unwrap());
    store.check().await.unwrap();
    // A voice's files go together, and only they.
    for key in [
        "voices/v1/upload",
        "voices/v1/reference.wav",
        "voices/v10/upload",
    ] {
        store.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    store.delete_prefix("voices/v1").await.unwrap();
    assert_eq!(
        store.list("voices").await.unwrap(),
        vec!["voices/v10/upload"]
    );
    store.delete_prefix("voices/nobody").await.unwrap();
    // Keys that could escape the store are refused.
    assert!(store.put("../escape", Bytes::new()).await.is_err());
    // A large object survives whole.
    let big = Bytes::from(vec![7u8; 5 << 20]);
    store.put("audio/big.wav", big.clone()).await.unwrap();
    assert_eq!(store.get("audio/big.wav").await.unwrap().unwrap(), big);

    // Each object says when it was written, which the retention sweep goes by: a long
    // retention keeps everything, none at all removes every audio object and nothing else.
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    let dated = store.list_dated("audio").await.unwrap();
    assert_eq!(dated.len(), 1, "{dated:?}");
    assert!(dated[0].1 > before, "{dated:?}");
    let day = std::time::Duration::from_secs(86_400);
    assert_eq!(tts_infra::retention::sweep(&store, day).await.unwrap(), 0);
    let none = std::time::Duration::ZERO;
    assert_eq!(tts_infra::retention::sweep(&store, none).await.unwrap(), 1);
    assert!(store.list("audio").await.unwrap().is_empty());
    assert_eq!(
        store.list("voices").await.unwrap(),
        vec!["voices/v10/upload"]
    );
}

fn settings(url: &str) -> StorageSettings {
    StorageSettings {
        url: url.into(),
        s3_endpoint: String::new(),
        s3_region: "us-east-1".into(),
        s3_access_key_id: String::new(),
        s3_secret_access_key: Default::default(),
        s3_allow_http: false,
        voices_dir: String::new(),
        audio_dir: String::new(),
        audio_retention_secs: 86_400,
        sweep_interval_secs: 600,
    }
}

#[tokio::test]
async fn memory_backend() {
    conformance(AudioStore::from_settings(&settings("memory://")).unwrap()).await;
}

#[tokio::test]
async fn local_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    conformance(AudioStore::from_settings(&settings(&url)).unwrap()).await;
}

/// The origin document's `paths.voices` and `paths.output` (`storage.voices_dir` and
/// `storage.audio_dir`): cloned voices and audio in directories of their own, beside the storage
/// directory, and the same behaviour through the same keys.
#[tokio::test]
async fn local_directory_backend_with_voices_and_audio_apart() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| root.path().join(name).display().to_string();
    let mut apart = settings(&format!("file://{}", dir("objects")));
    apart.voices_dir = dir("voices");
    apart.audio_dir = dir("output");
    let store = AudioStore::from_settings(&apart).unwrap();
    conformance(store.clone()).await;
    store
        .put("voices/v2/reference.wav", Bytes::from_static(b"v"))
        .await
        .unwrap();
    store
        .put("audio/job.wav", Bytes::from_static(b"a"))
        .await
        .unwrap();
    let read = |path: &str| std::fs::read(root.path().join(path)).ok();
    assert_eq!(read("voices/v2/reference.wav").as_deref(), Some(&b"v"[..]));
    assert_eq!(read("output/job.wav").as_deref(), Some(&b"a"[..]));
    assert_eq!(read("objects/audio/job.wav"), None);
    assert_eq!(read("objects/other/b.wav").as_deref(), Some(&b"b"[..]));
    assert_eq!(
        store.list("voices/v2").await.unwrap(),
        vec!["voices/v2/reference.wav"]
    );
    // Buckets have no directories to move objects to.
    let mut bucket = settings("s3://b");
    bucket.voices_dir = dir("voices");
    let err = AudioStore::from_settings(&bucket).unwrap_err();
    assert!(err.to_string().contains("storage.voices_dir"), "{err}");
}

#[tokio::test]
async fn s3_backend() {
    let server = S3Server::start().await;
    conformance(AudioStore::from_settings(&server.settings()).unwrap()).await;
}

#[tokio::test]
async fn s3_with_wrong_credentials_is_reported_down() {
    let server = S3Server::start().await;
    let mut wrong = server.settings();
    wrong.s3_secret_access_key = "not-the-secret".into();
    let store = AudioStore::from_settings(&wrong).unwrap();
    assert!(store.check().await.is_err());
    assert!(
        store
            .put("audio/x.wav", Bytes::from_static(b"x"))
            .await
            .is_err()
    );
}

#[test]
fn unknown_schemes_are_refused_by_name() {
    let err = AudioStore::from_settings(&settings("ftp://x")).unwrap_err();
    assert!(err.to_string().contains("file://"), "{err}");
    let err = AudioStore::from_settings(&settings("s3://")).unwrap_err();
    assert!(err.to_string().contains("bucket"), "{err}");
}

mod voice_store {
    //! One conformance suite for the voice store, against memory and Redis.
    use chrono::{Duration, Utc};
    use tts_contracts::{BlendPart, CloneSimilarity, VoiceInfo, VoiceRecord, VoiceStatus};
    use tts_infra::{MemoryVoiceStore, RedisJobStore, RedisVoiceStore, VoiceStore};

    fn record(id: &str, age_secs: i64) -> VoiceRecord {
        VoiceRecord {
            info: VoiceInfo {
                voice_id: id.into(),
                name: format!("voice {id}"),
                engine: "kokoro".into(),
                created_at: Utc::now() - Duration::seconds(age_secs),
                language: "zh".into(),
                status: VoiceStatus::Enrolling,
                sample_rate: None,
                other_languages: vec!["en".into()],
                speed_range: None,
                native_language: None,
            },
            prompt_text: Some("你好".into()),
            reference_key: Some(format!("voices/{id}/reference.wav")),
            job_id: None,
            embedding: None,
            similarity: None,
            speech_seconds: None,
            engine_data: None,
            error: None,
            tenant: None,
        }
    }

    async fn conformance(store: &dyn VoiceStore) {
        assert_eq!(store.get("v1").await.unwrap(), None);
        assert!(store.list().await.unwrap().is_empty());
        store.put(&record("v1", 10)).await.unwrap();
        store.put(&record("v2", 20)).await.unwrap();
        let mut ready = record("v1", 10);
        ready.info.status = VoiceStatus::Ready;
        ready.embedding = Some(vec![0.5; 256]);
        ready.engine_data = Some(serde_json::json!({"style_offset": vec![-0.1_f32; 4]}));
        ready.similarity = Some(CloneSimilarity {
            cloned: 0.6,
            best_stock: 0.4,
            best_stock_voice: "af_heart".into(),
            beats_best_stock: Some(true),
            blend: vec![
                BlendPart {
                    voice: "af_heart".into(),
                    weight: 0.7,
                },
                BlendPart {
                    voice: "bf_emma".into(),
                    weight: 0.3,
                },
            ],
        });
        assert!(store.update(&ready).await.unwrap());
        assert_eq!(store.get("v1").await.unwrap(), Some(ready.clone()));
        let ids: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.info.voice_id)
            .collect();
        assert_eq!(ids, ["v2", "v1"], "oldest first");
        assert!(store.delete("v1").await.unwrap());
        assert!(!store.delete("v1").await.unwrap());
        assert_eq!(store.get("v1").await.unwrap(), None);
        assert!(
            !store.update(&ready).await.unwrap(),
            "an update never brings a deleted voice back"
        );
        assert_eq!(store.get("v1").await.unwrap(), None);
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn memory_backend() {
        conformance(&MemoryVoiceStore::default()).await;
    }

    /// A store mirrored in object storage passes the same suite, keeps exactly the records it
    /// holds in storage, and a new, empty store over that storage gets them back.
    #[tokio::test]
    async fn mirrored_backend_restores_from_storage() {
        use std::sync::Arc;
        use tts_infra::{AudioStore, MirroredVoiceStore};
        let storage = AudioStore::in_memory();
        let mirrored =
            MirroredVoiceStore::new(Arc::new(MemoryVoiceStore::default()), storage.clone());
        conformance(&mirrored).await;
        assert_eq!(
            storage.list("voices").await.unwrap(),
            ["voices/v2/record.json"]
        );
        let fresh = MirroredVoiceStore::new(Arc::new(MemoryVoiceStore::default()), storage);
        assert_eq!(fresh.restore().await.unwrap(), 1);
        let ids: Vec<String> = fresh
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.info.voice_id)
            .collect();
        assert_eq!(ids, ["v2"]);
        // A store that has voices is left alone.
        assert_eq!(fresh.restore().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn redis_backend() {
        let prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
        let jobs = RedisJobStore::connect(
            &tts_tests::redis_url(),
            &prefix,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        conformance(&RedisVoiceStore::new(&jobs)).await;
    }
}
