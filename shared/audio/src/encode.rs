//! Encoding mono audio in the formats the API answers in.
//!
//! Every format is produced by a streaming [`Encoder`]: samples go in with [`Encoder::push`] in
//! pieces of any size, bytes come out as soon as the format has a whole frame or page of them,
//! and [`Encoder::finish`] flushes the rest. Concatenating everything the encoder returned gives
//! a complete file, so audio can be sent sentence by sentence as it is synthesized. [`encode`]
//! does the same for audio that is already whole, and fills in the lengths that a stream cannot
//! know in advance (WAV's RIFF sizes, FLAC's sample count and MD5).
//!
//! Samples are `f32` in [-1, 1]; values outside are clipped. Every encoder writes one channel.

use std::num::NonZeroU32;

use flacenc::bitsink::MemSink;
use flacenc::component::{BitRepr, Stream, StreamInfo};
use flacenc::error::Verify;
use flacenc::source::{Fill, FrameBuf, MemSource};
use mp3lame_encoder::{FlushNoGap, MonoPcm};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use tts_contracts::AudioFormat;

use crate::resample::{ResampleError, StreamResampler};

/// The formats this build can encode, in the order error messages list them. AAC is missing:
/// no maintained, permissively licensed AAC encoder is available to link (FDK AAC's licence is
/// not an open-source one), so asking for it is refused with this list.
pub const OFFERED: [AudioFormat; 5] = [
    AudioFormat::Wav,
    AudioFormat::Pcm,
    AudioFormat::Mp3,
    AudioFormat::Opus,
    AudioFormat::Flac,
];

/// Whether [`encoder`] can produce `format`.
pub fn is_offered(format: AudioFormat) -> bool {
    OFFERED.contains(&format)
}

/// The offered formats' names, comma-separated, for messages.
pub fn offered_names() -> String {
    OFFERED.map(AudioFormat::name).join(", ")
}

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// This build cannot produce the format.
    #[error("{0} audio is not available; formats on offer: {list}", list = offered_names())]
    Unsupported(AudioFormat),
    /// The input's sample rate is 0 or too high for any encoder.
    #[error("cannot encode audio at {0} Hz")]
    InvalidRate(u32),
    #[error(transparent)]
    Resample(#[from] ResampleError),
    /// The codec library refused the audio or its settings.
    #[error("the {format} encoder failed: {what}")]
    Codec {
        format: AudioFormat,
        what: &'static str,
        #[source]
        source: Source,
    },
}

impl EncodeError {
    fn codec(format: AudioFormat, what: &'static str, source: impl Into<Source>) -> Self {
        EncodeError::Codec {
            format,
            what,
            source: source.into(),
        }
    }
}

/// A streaming encoder of mono audio. Bytes returned by `push` may be empty until the encoder
/// has a whole frame or page; the concatenation of all returned bytes, `finish`'s last, is the
/// file.
pub trait Encoder {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, EncodeError>;
    fn finish(self: Box<Self>) -> Result<Vec<u8>, EncodeError>;
}

/// The highest input rate accepted: the one the decoder accepts.
const MAX_INPUT_RATE: u32 = crate::MAX_SAMPLE_RATE;

/// A streaming encoder of `format` for mono audio at `input_rate` Hz.
///
/// A streamed WAV cannot know its length when its header goes out, so its RIFF and data sizes
/// are 0xFFFFFFFF, which players and ffmpeg read as "until the end of the file"; [`encode`]
/// writes exact sizes.
pub fn encoder(
    format: AudioFormat,
    input_rate: u32,
) -> Result<Box<dyn Encoder + Send>, EncodeError> {
    if input_rate == 0 || input_rate > MAX_INPUT_RATE {
        return Err(EncodeError::InvalidRate(input_rate));
    }
    Ok(match format {
        AudioFormat::Wav => Box::new(WavEncoder::new(input_rate)),
        AudioFormat::Pcm => Box::new(PcmEncoder::new(input_rate)?),
        AudioFormat::Mp3 => Box::new(Mp3Encoder::new(input_rate)?),
        AudioFormat::Opus => Box::new(OpusEncoder::new(input_rate)?),
        AudioFormat::Flac => Box::new(FlacEncoder::new(input_rate)?),
        AudioFormat::Aac => return Err(EncodeError::Unsupported(format)),
    })
}

/// Encodes a whole clip of mono audio at `rate` Hz as `format`.
pub fn encode(samples: &[f32], rate: u32, format: AudioFormat) -> Result<Vec<u8>, EncodeError> {
    if rate == 0 || rate > MAX_INPUT_RATE {
        return Err(EncodeError::InvalidRate(rate));
    }
    match format {
        AudioFormat::Wav => {
            let mut out = wav_header(rate, Some(samples.len() as u64));
            out.extend(s16le(samples));
            Ok(out)
        }
        AudioFormat::Flac => flac_whole(samples, rate),
        _ => {
            let mut encoder = encoder(format, rate)?;
            let mut out = encoder.push(samples)?;
            out.extend(encoder.finish()?);
            Ok(out)
        }
    }
}

/// A sample as a 16-bit integer, clipped and rounded.
fn to_i16(sample: f32) -> i16 {
    // NaN becomes 0 through the cast.
    (sample.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16
}

fn s16le(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| to_i16(*s).to_le_bytes())
        .collect()
}

/// A 44-byte header of 16-bit mono PCM WAV. Without a frame count (a stream), the sizes are
/// 0xFFFFFFFF; a count too long for 32-bit sizes gets the same.
fn wav_header(rate: u32, frames: Option<u64>) -> Vec<u8> {
    let data_len = frames
        .map(|f| f * 2)
        .filter(|len| *len <= (u32::MAX - 36) as u64)
        .map(|len| len as u32);
    let mut out = Vec::with_capacity(44);
    out.extend(b"RIFF");
    out.extend(data_len.map_or(u32::MAX, |len| len + 36).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // PCM
    out.extend(1u16.to_le_bytes()); // one channel
    out.extend(rate.to_le_bytes());
    out.extend((rate * 2).to_le_bytes()); // bytes per second
    out.extend(2u16.to_le_bytes()); // bytes per frame
    out.extend(16u16.to_le_bytes()); // bits per sample
    out.extend(b"data");
    out.extend(data_len.unwrap_or(u32::MAX).to_le_bytes());
    out
}

struct WavEncoder {
    rate: u32,
    header_sent: bool,
}

impl WavEncoder {
    fn new(rate: u32) -> Self {
        WavEncoder {
            rate,
            header_sent: false,
        }
    }

    fn header(&mut self) -> Vec<u8> {
        if std::mem::replace(&mut self.header_sent, true) {
            Vec::new()
        } else {
            wav_header(self.rate, None)
        }
    }
}

impl Encoder for WavEncoder {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, EncodeError> {
        let mut out = self.header();
        out.extend(s16le(samples));
        Ok(out)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<u8>, EncodeError> {
        // A stream with no samples is still a (empty) WAV file.
        Ok(self.header())
    }
}

/// Raw s16le at [`AudioFormat::PCM_RATE`], as OpenAI's speech API answers `pcm`.
struct PcmEncoder {
    resampler: StreamResampler,
}

impl PcmEncoder {
    fn new(rate: u32) -> Result<Self, EncodeError> {
        Ok(PcmEncoder {
            resampler: StreamResampler::new(rate, AudioFormat::PCM_RATE)?,
        })
    }
}

impl Encoder for PcmEncoder {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, EncodeError> {
        Ok(s16le(&self.resampler.push(samples)?))
    }

    fn finish(self: Box<Self>) -> Result<Vec<u8>, EncodeError> {
        Ok(s16le(&self.resampler.finish()?))
    }
}

/// The rates MPEG-1, 2 and 2.5 layer III can carry.
const MP3_RATES: [u32; 9] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];
/// What other rates are converted to: the rate the Kokoro models produce, and plenty for speech.
const MP3_FALLBACK_RATE: u32 = 24_000;

/// MP3 through LAME: constant 64 kbit/s mono, ample for speech at every MPEG version's rates.
/// No Xing/LAME tag, because a stream cannot go back to fill it in; players then play the
/// encoder's delay (about 50 ms of leading silence), which is harmless for speech.
struct Mp3Encoder {
    lame: mp3lame_encoder::Encoder,
    resampler: StreamResampler,
    /// Whether LAME has been given any samples: flushing an encoder that has none makes it
    /// complain on stderr, and gives nothing anyway.
    fed: bool,
}

impl Mp3Encoder {
    fn new(input_rate: u32) -> Result<Self, EncodeError> {
        let rate = if MP3_RATES.contains(&input_rate) {
            input_rate
        } else {
            MP3_FALLBACK_RATE
        };
        let fail = |what| move |e| EncodeError::codec(AudioFormat::Mp3, what, e);
        let lame = mp3lame_encoder::Builder::new()
            .ok_or_else(|| {
                EncodeError::codec(AudioFormat::Mp3, "allocating", "LAME returned no encoder")
            })?
            .with_num_channels(1)
            .map_err(fail("setting the channel count"))?
            .with_sample_rate(rate)
            .map_err(fail("setting the input rate"))?
            // Left to itself LAME lowers the rate to suit the bitrate; keep the input's.
            .with_output_sample_rate(NonZeroU32::new(rate))
            .map_err(fail("setting the output rate"))?
            .with_mode(mp3lame_encoder::Mode::Mono)
            .map_err(fail("setting mono"))?
            .with_brate(mp3lame_encoder::Bitrate::Kbps64)
            .map_err(fail("setting the bitrate"))?
            .with_quality(mp3lame_encoder::Quality::Good)
            .map_err(fail("setting the quality"))?
            .with_to_write_vbr_tag(false)
            .map_err(fail("turning the tag frame off"))?
            .build()
            .map_err(fail("building"))?;
        Ok(Mp3Encoder {
            lame,
            resampler: StreamResampler::new(input_rate, rate)?,
            fed: false,
        })
    }
}

impl Encoder for Mp3Encoder {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, EncodeError> {
        let samples = self.resampler.push(samples)?;
        self.fed |= !samples.is_empty();
        let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(samples.len()));
        // LAME clips nothing itself; clipped input keeps loud samples from wrapping.
        let clipped: Vec<f32> = samples.iter().map(|s| s.clamp(-1.0, 1.0)).collect();
        self.lame
            .encode_to_vec(MonoPcm(clipped.as_slice()), &mut out)
            .map_err(|e| EncodeError::codec(AudioFormat::Mp3, "encoding", e))?;
        Ok(out)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<u8>, EncodeError> {
        let rest = std::mem::replace(&mut self.resampler, StreamResampler::new(1, 1)?).finish()?;
        let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(rest.len()));
        self.fed |= !rest.is_empty();
        if !self.fed {
            return Ok(Vec::new());
        }
        let clipped: Vec<f32> = rest.iter().map(|s| s.clamp(-1.0, 1.0)).collect();
        self.lame
            .encode_to_vec(MonoPcm(clipped.as_slice()), &mut out)
            .map_err(|e| EncodeError::codec(AudioFormat::Mp3, "encoding", e))?;
        // A flush needs room for its last frames, 7200 bytes at most.
        out.reserve(7200);
        self.lame
            .flush_to_vec::<FlushNoGap>(&mut out)
            .map_err(|e| EncodeError::codec(AudioFormat::Mp3, "flushing", e))?;
        Ok(out)
    }
}

/// The rates libopus encodes at; others are converted to 48 kHz.
const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// Ogg Opus granule positions count samples at 48 kHz, whatever the encoder's rate (RFC 7845).
const OPUS_GRANULE_RATE: u64 = 48_000;
/// 32 kbit/s: transparent-sounding speech for a mono voice.
const OPUS_BITRATE: i32 = 32_000;
/// The largest packet libopus produces is under 1276 bytes; this leaves room.
const OPUS_MAX_PACKET: usize = 4000;
/// The stream's serial number. One logical stream per file, so any constant does.
const OPUS_SERIAL: u32 = 0x7474_7331;

/// Opus in Ogg (RFC 7845): an OpusHead page, an OpusTags page, then pages of 20 ms packets.
/// Each push ends a page, so what it returns is playable at once; the last page carries the
/// end-of-stream flag and a granule position that trims the final frame's padding.
struct OpusEncoder {
    opus: opus::Encoder,
    resampler: StreamResampler,
    ogg: PacketWriter<'static, Vec<u8>>,
    /// The encoder's rate.
    rate: u32,
    /// Samples per 20 ms frame at `rate`.
    frame: usize,
    /// Input at `rate` not yet a whole frame.
    pending: Vec<f32>,
    /// The encoder's lookahead at 48 kHz, which decoders skip.
    pre_skip: u64,
    /// Samples at `rate` taken from the input so far.
    samples_in: u64,
    /// Samples at `rate` encoded so far, padding included.
    samples_encoded: u64,
}

impl OpusEncoder {
    fn new(input_rate: u32) -> Result<Self, EncodeError> {
        let rate = if OPUS_RATES.contains(&input_rate) {
            input_rate
        } else {
            OPUS_GRANULE_RATE as u32
        };
        let fail = |what| move |e| EncodeError::codec(AudioFormat::Opus, what, e);
        let mut opus = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)
            .map_err(fail("creating"))?;
        opus.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
            .map_err(fail("setting the bitrate"))?;
        let lookahead = opus
            .get_lookahead()
            .map_err(fail("reading the lookahead"))?;
        let pre_skip = lookahead.max(0) as u64 * OPUS_GRANULE_RATE / rate as u64;
        let mut ogg = PacketWriter::new(Vec::new());
        // RFC 7845 §5.1: each header packet on a page of its own, granule position 0.
        let mut head = Vec::with_capacity(19);
        head.extend(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend((pre_skip as u16).to_le_bytes());
        head.extend(input_rate.to_le_bytes()); // the original rate, for information only
        head.extend(0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family: mono or stereo, no table
        let vendor = format!("voice-clone-tts, {}", opus::version());
        let mut tags = Vec::new();
        tags.extend(b"OpusTags");
        tags.extend((vendor.len() as u32).to_le_bytes());
        tags.extend(vendor.as_bytes());
        tags.extend(0u32.to_le_bytes()); // no user comments
        for packet in [head, tags] {
            ogg.write_packet(packet, OPUS_SERIAL, PacketWriteEndInfo::EndPage, 0)
                .map_err(|e| EncodeError::codec(AudioFormat::Opus, "writing a header page", e))?;
        }
        Ok(OpusEncoder {
            opus,
            resampler: StreamResampler::new(input_rate, rate)?,
            ogg,
            rate,
            frame: rate as usize / 50,
            pending: Vec::new(),
            pre_skip,
            samples_in: 0,
            samples_encoded: 0,
        })
    }

    /// The granule position after `samples` samples at the encoder's rate.
    fn granule(&self, samples: u64) -> u64 {
        samples * OPUS_GRANULE_RATE / self.rate as u64
    }

    /// Encodes every whole frame in `pending` into packets on the current page, and ends the
    /// page after the last one (with the end-of-stream flag when `last`).
    fn encode_frames(&mut self, last: bool) -> Result<Vec<u8>, EncodeError> {
        let frames = self.pending.len() / self.frame;
        for i in 0..frames {
            let start = i * self.frame;
            let frame = &self.pending[start..start + self.frame];
            let packet = self
                .opus
                .encode_vec_float(frame, OPUS_MAX_PACKET)
                .map_err(|e| EncodeError::codec(AudioFormat::Opus, "encoding", e))?;
            self.samples_encoded += self.frame as u64;
            let end = if i + 1 < frames {
                PacketWriteEndInfo::NormalPacket
            } else if last {
                PacketWriteEndInfo::EndStream
            } else {
                PacketWriteEndInfo::EndPage
            };
            let mut granule = self.granule(self.samples_encoded);
            if last {
                // The end trims the padding: the decoder plays pre-skip plus the input, no more.
                granule = granule.min(self.pre_skip + self.granule(self.samples_in));
            }
            self.ogg
                .write_packet(packet, OPUS_SERIAL, end, granule)
                .map_err(|e| EncodeError::codec(AudioFormat::Opus, "writing a page", e))?;
        }
        self.pending.drain(..frames * self.frame);
        Ok(std::mem::take(self.ogg.inner_mut()))
    }
}

impl Encoder for OpusEncoder {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, EncodeError> {
        let samples = self.resampler.push(samples)?;
        self.samples_in += samples.len() as u64;
        self.pending
            .extend(samples.iter().map(|s| s.clamp(-1.0, 1.0)));
        self.encode_frames(false)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<u8>, EncodeError> {
        let rest = std::mem::replace(&mut self.resampler, StreamResampler::new(1, 1)?).finish()?;
        self.samples_in += rest.len() as u64;
        self.pending.extend(rest.iter().map(|s| s.clamp(-1.0, 1.0)));
        // Silence to push the lookahead's worth of input out of the encoder, rounded up to a
        // whole frame; at least one frame, so that there is a packet to end the stream with.
        let lookahead = self.pre_skip * self.rate as u64 / OPUS_GRANULE_RATE;
        let needed = (self.samples_in + lookahead).saturating_sub(self.samples_encoded) as usize;
        let padded = needed.max(1).div_ceil(self.frame) * self.frame;
        self.pending.resize(padded, 0.0);
        self.encode_frames(true)
    }
}

/// FLAC samples per block: the reference encoder's default.
const FLAC_BLOCK: usize = 4096;

fn flac_config() -> Result<flacenc::error::Verified<flacenc::config::Encoder>, EncodeError> {
    flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| EncodeError::codec(AudioFormat::Flac, "configuring", e))
}

fn flac_samples(samples: &[f32]) -> Vec<i32> {
    samples.iter().map(|s| to_i16(*s) as i32).collect()
}

/// A whole clip as 16-bit FLAC, with the sample count and MD5 in its STREAMINFO.
fn flac_whole(samples: &[f32], rate: u32) -> Result<Vec<u8>, EncodeError> {
    let fail = |what| move |e| EncodeError::codec(AudioFormat::Flac, what, e);
    let source = MemSource::from_samples(&flac_samples(samples), 1, 16, rate as usize);
    let stream = flacenc::encode_with_fixed_block_size(&flac_config()?, source, FLAC_BLOCK)
        .map_err(|e| fail("encoding")(e.to_string()))?;
    let mut sink = MemSink::<u8>::with_capacity(stream.count_bits());
    stream
        .write(&mut sink)
        .map_err(|e| fail("writing")(e.to_string()))?;
    Ok(sink.into_inner())
}

/// 16-bit FLAC in blocks of [`FLAC_BLOCK`] samples. The STREAMINFO block goes out first, before
/// the length is known, so its sample count is 0 ("unknown", as the format allows) and its MD5 is
/// all zeros ("not computed").
struct FlacEncoder {
    config: flacenc::error::Verified<flacenc::config::Encoder>,
    info: StreamInfo,
    pending: Vec<i32>,
    frames: usize,
    header_sent: bool,
}

impl FlacEncoder {
    fn new(rate: u32) -> Result<Self, EncodeError> {
        let fail = |what| {
            move |e: flacenc::error::VerifyError| {
                EncodeError::codec(AudioFormat::Flac, what, e.to_string())
            }
        };
        let mut info = StreamInfo::new(rate as usize, 1, 16).map_err(fail("describing"))?;
        info.set_block_sizes(FLAC_BLOCK, FLAC_BLOCK)
            .map_err(fail("setting the block size"))?;
        // 0 is "unknown" for both, which a stream has to say.
        info.set_frame_sizes(0, 0)
            .map_err(fail("setting the frame sizes"))?;
        Ok(FlacEncoder {
            config: flac_config()?,
            info,
            pending: Vec::new(),
            frames: 0,
            header_sent: false,
        })
    }

    /// The STREAMINFO block, the first time only, then every whole block in `pending` (and
    /// with `last`, the short block that is left).
    fn drain(&mut self, last: bool) -> Result<Vec<u8>, EncodeError> {
        let fail = |what| move |e: String| EncodeError::codec(AudioFormat::Flac, what, e);
        let mut sink = MemSink::<u8>::new();
        if !self.header_sent {
            self.header_sent = true;
            Stream::with_stream_info(self.info.clone())
                .write(&mut sink)
                .map_err(|e| fail("writing the header")(e.to_string()))?;
        }
        while self.pending.len() >= FLAC_BLOCK || (last && !self.pending.is_empty()) {
            let size = self.pending.len().min(FLAC_BLOCK);
            let block: Vec<i32> = self.pending.drain(..size).collect();
            let mut buf =
                FrameBuf::with_size(1, size).map_err(|e| fail("sizing")(e.to_string()))?;
            buf.fill_interleaved(&block)
                .map_err(|e| fail("filling")(e.to_string()))?;
            let frame =
                flacenc::encode_fixed_size_frame(&self.config, &buf, self.frames, &self.info)
                    .map_err(|e| fail("encoding")(e.to_string()))?;
            self.frames += 1;
            frame
                .write(&mut sink)
                .map_err(|e| fail("writing a frame")(e.to_string()))?;
        }
        Ok(sink.into_inner())
    }
}

impl Encoder for FlacEncoder {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<u8>, EncodeError> {
        self.pending.extend(flac_samples(samples));
        self.drain(false)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<u8>, EncodeError> {
        self.drain(true)
    }
}

/// Every format is checked by ffmpeg's decoders, not by this crate's, so that an encoder and a
/// decoder sharing one misreading of a format cannot pass together.
#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::Command;

    use super::*;

    /// A sine sweep from 100 Hz to 4 kHz at half scale: speech's band, and RMS ≈ 0.354.
    fn sweep(rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        let (f0, f1) = (100.0f64, 4000.0f64);
        (0..n)
            .map(|i| {
                let t = i as f64 / rate as f64;
                let phase = 2.0
                    * std::f64::consts::PI
                    * (f0 * t + (f1 - f0) * t * t / (2.0 * seconds as f64));
                (0.5 * phase.sin()) as f32
            })
            .collect()
    }

    fn rms(samples: &[f32]) -> f32 {
        let energy: f64 = samples.iter().map(|s| (*s as f64).powi(2)).sum();
        (energy / samples.len().max(1) as f64).sqrt() as f32
    }

    /// What ffmpeg makes of a file: its stream's rate and channels, and its samples decoded.
    struct Decoded {
        rate: u32,
        channels: u32,
        codec: String,
        samples: Vec<f32>,
    }

    impl Decoded {
        fn seconds(&self) -> f32 {
            self.samples.len() as f32 / self.rate as f32
        }
    }

    /// Decodes `bytes` with ffprobe and ffmpeg. `raw_pcm` describes headerless s16le input.
    fn ffmpeg_decode(bytes: &[u8], raw_pcm: Option<u32>) -> Decoded {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let raw: Vec<String> = match raw_pcm {
            Some(rate) => ["-f", "s16le", "-ar", &rate.to_string(), "-ac", "1"]
                .map(String::from)
                .to_vec(),
            None => Vec::new(),
        };
        let probe = Command::new("ffprobe")
            .args(["-v", "error"])
            .args(&raw)
            .args([
                "-show_entries",
                "stream=sample_rate,channels,codec_name",
                "-of",
                "default=noprint_wrappers=1",
                &path,
            ])
            .output()
            .expect("ffprobe is needed for these tests: scripts/deps --servers installs ffmpeg");
        assert!(
            probe.status.success(),
            "ffprobe: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let text = String::from_utf8(probe.stdout).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("ffprobe gave no {name}: {text}"))
                .to_string()
        };
        // ffmpeg 5's own Opus decoder garbles some SILK frames that libopus decodes cleanly,
        // so Opus goes through libopus's decoder; ffmpeg still parses the Ogg container.
        let decoder: &[&str] = if text.contains("codec_name=opus") {
            &["-c:a", "libopus"]
        } else {
            &[]
        };
        let decoded = Command::new("ffmpeg")
            .args(["-v", "error"])
            .args(&raw)
            .args(decoder)
            .args(["-i", &path, "-f", "f32le", "-"])
            .output()
            .expect("ffmpeg is needed for these tests");
        assert!(
            decoded.status.success(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&decoded.stderr)
        );
        Decoded {
            rate: field("sample_rate").parse().unwrap(),
            channels: field("channels").parse().unwrap(),
            codec: field("codec_name"),
            samples: decoded
                .stdout
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }

    /// Checks one encoding of `input` (at `rate`) as ffmpeg decodes it.
    fn check(
        format: AudioFormat,
        bytes: &[u8],
        input: &[f32],
        rate: u32,
        expect_rate: u32,
        codec: &str,
        tolerance_s: f32,
    ) {
        let raw = (format == AudioFormat::Pcm).then_some(AudioFormat::PCM_RATE);
        let decoded = ffmpeg_decode(bytes, raw);
        let seconds = input.len() as f32 / rate as f32;
        assert_eq!(decoded.codec, codec, "{format}");
        assert_eq!(decoded.rate, expect_rate, "{format}");
        assert_eq!(decoded.channels, 1, "{format}");
        assert!(
            (decoded.seconds() - seconds).abs() <= tolerance_s,
            "{format}: {} s decoded, {seconds} s encoded",
            decoded.seconds()
        );
        let (want, got) = (rms(input), rms(&decoded.samples));
        assert!(
            (got - want).abs() / want < 0.1,
            "{format}: RMS {got}, input {want}"
        );
    }

    /// The rate ffmpeg reports for `format` from input at `rate`, its codec, and the duration
    /// error allowed. MP3 has no tag to say how much of LAME's delay and padding to cut, so it
    /// decodes up to about 100 ms long.
    fn expectations(format: AudioFormat, rate: u32) -> (u32, &'static str, f32) {
        match format {
            AudioFormat::Wav => (rate, "pcm_s16le", 0.001),
            AudioFormat::Pcm => (AudioFormat::PCM_RATE, "pcm_s16le", 0.002),
            AudioFormat::Mp3 => (rate, "mp3", 0.12),
            // Ogg Opus always decodes at 48 kHz; its granule positions trim it exactly.
            AudioFormat::Opus => (48_000, "opus", 0.002),
            AudioFormat::Flac => (rate, "flac", 0.001),
            AudioFormat::Aac => unreachable!("not offered"),
        }
    }

    #[test]
    fn every_offered_format_decodes_to_the_signal_in_ffmpeg() {
        for rate in [24_000, 22_050] {
            let input = sweep(rate, 1.5);
            for format in OFFERED {
                let bytes = encode(&input, rate, format).unwrap();
                let (expect_rate, codec, tolerance) = expectations(format, rate);
                check(format, &bytes, &input, rate, expect_rate, codec, tolerance);
            }
        }
    }

    #[test]
    fn streaming_in_uneven_pieces_gives_the_same_audio() {
        let rate = 22_050;
        let input = sweep(rate, 1.2);
        for format in OFFERED {
            let mut encoder = encoder(format, rate).unwrap();
            let mut bytes = Vec::new();
            let mut rest = &input[..];
            for size in [1usize, 7000, 333, 0, 4096, 10].iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*size).min(rest.len()));
                bytes.extend(encoder.push(piece).unwrap());
                rest = tail;
            }
            bytes.extend(encoder.finish().unwrap());
            let (expect_rate, codec, tolerance) = expectations(format, rate);
            check(format, &bytes, &input, rate, expect_rate, codec, tolerance);
            let whole = ffmpeg_decode(
                &encode(&input, rate, format).unwrap(),
                (format == AudioFormat::Pcm).then_some(AudioFormat::PCM_RATE),
            );
            let streamed = ffmpeg_decode(
                &bytes,
                (format == AudioFormat::Pcm).then_some(AudioFormat::PCM_RATE),
            );
            assert!(
                (whole.seconds() - streamed.seconds()).abs() < 0.001,
                "{format}: whole {} s, streamed {} s",
                whole.seconds(),
                streamed.seconds()
            );
        }
    }

    #[test]
    fn a_streamed_wav_says_its_sizes_are_unknown_and_a_whole_one_states_them() {
        let input = sweep(16_000, 0.5);
        let whole = encode(&input, 16_000, AudioFormat::Wav).unwrap();
        assert_eq!(&whole[4..8], &((whole.len() - 8) as u32).to_le_bytes());
        assert_eq!(&whole[40..44], &((input.len() * 2) as u32).to_le_bytes());
        let mut streaming = encoder(AudioFormat::Wav, 16_000).unwrap();
        let mut bytes = streaming.push(&input).unwrap();
        bytes.extend(streaming.finish().unwrap());
        assert_eq!(&bytes[4..8], &[0xFF; 4]);
        assert_eq!(&bytes[40..44], &[0xFF; 4]);
        assert_eq!(bytes[44..], whole[44..]);
    }

    #[test]
    fn the_opus_stream_has_its_headers_and_ends_with_the_eos_flag() {
        let bytes = encode(&sweep(24_000, 1.0), 24_000, AudioFormat::Opus).unwrap();
        // The first page holds OpusHead alone and begins the stream (header type 2).
        assert_eq!(&bytes[0..4], b"OggS");
        assert_eq!(bytes[5], 0x02);
        assert_eq!(&bytes[28..36], b"OpusHead");
        let pre_skip = u16::from_le_bytes([bytes[38], bytes[39]]);
        assert!(pre_skip > 0, "pre-skip {pre_skip}");
        // The last page ends the stream (header type 4) at pre-skip plus one second at 48 kHz.
        let last = bytes
            .windows(4)
            .rposition(|w| w == b"OggS")
            .expect("a last page");
        assert_eq!(bytes[last + 5] & 0x04, 0x04);
        let granule = u64::from_le_bytes(bytes[last + 6..last + 14].try_into().unwrap());
        assert_eq!(granule, pre_skip as u64 + 48_000);
    }

    #[test]
    fn aac_and_bad_rates_are_refused() {
        let err = encode(&[0.0; 10], 24_000, AudioFormat::Aac).unwrap_err();
        assert!(matches!(err, EncodeError::Unsupported(AudioFormat::Aac)));
        assert!(
            err.to_string().contains("wav, pcm, mp3, opus, flac"),
            "{err}"
        );
        assert!(matches!(
            encoder(AudioFormat::Mp3, 0).err(),
            Some(EncodeError::InvalidRate(0))
        ));
    }

    #[test]
    fn empty_input_still_makes_files() {
        for format in OFFERED {
            let bytes = encode(&[], 24_000, format).unwrap();
            // Raw PCM and MP3 have no header, so nothing encodes to nothing; the others still
            // say what the stream is.
            if !matches!(format, AudioFormat::Pcm | AudioFormat::Mp3) {
                assert!(!bytes.is_empty(), "{format}");
            }
        }
    }
}
