//! Names of NATS subjects, streams and consumers. Gateway and workers must spell them the same
//! way, so they are built only here.

/// The JetStream stream that holds queued jobs of every engine (work-queue retention: a message
/// is removed once a worker acks it).
pub const JOBS_STREAM: &str = "TTS_JOBS";

/// Every job subject, for the stream's subject filter.
pub const JOBS_ALL: &str = "tts.jobs.>";

/// Every heartbeat, for the gateway's registry.
pub const HEARTBEATS_ALL: &str = "tts.heartbeat.>";

/// Published by a gateway that has just started, so that workers heartbeat at once instead of
/// leaving it without a fleet for a whole interval.
pub const HEARTBEAT_REQUEST: &str = "tts.control.heartbeat_request";

/// Jobs for one engine.
pub fn jobs(engine: &str) -> String {
    format!("tts.jobs.{engine}")
}

/// The durable pull consumer shared by every worker of one engine: workers of an engine split its
/// jobs between them because they pull from the same consumer.
pub fn consumer(engine: &str) -> String {
    format!("tts-worker-{engine}")
}

/// Progress and status events of one job; also the reply subject the sync endpoint waits on.
pub fn job_events(job_id: &impl std::fmt::Display) -> String {
    format!("tts.events.{job_id}")
}

/// Pieces of a job's audio as the engine makes them (`chunk::AudioChunk`), for streaming.
pub fn job_audio(job_id: &impl std::fmt::Display) -> String {
    format!("tts.audio.{job_id}")
}

/// A worker's heartbeat.
pub fn heartbeat(engine: &str, node_id: &str) -> String {
    format!("tts.heartbeat.{engine}.{node_id}")
}

/// The server's advisory when a job has used up its deliveries.
pub fn max_deliveries_advisory(engine: &str) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{}",
        consumer(engine)
    )
}

/// The stream that keeps the server's max-deliveries advisories for the jobs stream until a
/// worker has dealt with them. The server publishes an advisory once, whether or not anyone
/// listens; kept in a stream, none is lost while no worker of the engine runs.
pub const EXHAUSTED_STREAM: &str = "TTS_EXHAUSTED";

/// Every max-deliveries advisory of the jobs stream, for the exhausted stream's subject filter.
pub const EXHAUSTED_ALL: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TTS_JOBS.>";

/// The durable consumer through which an engine's workers share its advisories.
pub fn reaper(engine: &str) -> String {
    format!("tts-reaper-{engine}")
}

/// The stream of dead letters: jobs that used up their deliveries, kept with the reason until an
/// admin requeues them or they age out.
pub const DEAD_LETTERS_STREAM: &str = "TTS_DEAD_LETTERS";

/// Every dead letter, for the dead-letter stream's subject filter.
pub const DEAD_LETTERS_ALL: &str = "tts.dead.>";

/// The dead letter of one job: one subject per job, so that it is found by its id.
pub fn dead_letter(job_id: &impl std::fmt::Display) -> String {
    format!("tts.dead.{job_id}")
}

/// Engine names become subject tokens and consumer names, so they are restricted to characters
/// that are safe in both.
pub fn is_valid_engine_name(engine: &str) -> bool {
    !engine.is_empty()
        && engine.len() <= 64
        && engine
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_from_tokens() {
        assert_eq!(jobs("piper"), "tts.jobs.piper");
        assert_eq!(consumer("piper"), "tts-worker-piper");
        assert_eq!(heartbeat("piper", "n1"), "tts.heartbeat.piper.n1");
        assert_eq!(
            max_deliveries_advisory("piper"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TTS_JOBS.tts-worker-piper"
        );
    }

    #[test]
    fn engine_names_must_be_subject_safe() {
        assert!(is_valid_engine_name("gpt_sovits"));
        assert!(!is_valid_engine_name("a.b"));
        assert!(!is_valid_engine_name("a b"));
        assert!(!is_valid_engine_name(""));
        assert!(!is_valid_engine_name("*"));
    }
}
