//! The recorder's WAV file (through `hound`): every payload byte the recorder read, in order.

use std::fs::File;
use std::io::BufWriter;

use anyhow::Context as _;

/// Sample encodings a capture ring can carry: voxring-core's one [`voxring_core::SampleFormat`]
/// (the name stays for the recorder's callers).
pub use voxring_core::SampleFormat as Encoding;

/// A WAV file being written; `finish` writes the final sizes into its header.
pub struct WavSink {
    writer: hound::WavWriter<BufWriter<File>>,
    encoding: Encoding,
    samples: u64,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("encoding", &self.encoding)
            .field("samples", &self.samples)
            .finish()
    }
}

impl WavSink {
    /// Writes the recording into `file` (empty, opened for reading and writing, positioned at
    /// its start). `what` names it in messages.
    pub fn new(
        file: File,
        what: &str,
        rate: u32,
        channels: u16,
        encoding: Encoding,
    ) -> anyhow::Result<Self> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: (encoding.bytes() * 8) as u16,
            sample_format: match encoding {
                Encoding::F32 => hound::SampleFormat::Float,
                Encoding::S16 | Encoding::S32 => hound::SampleFormat::Int,
            },
        };
        let writer = hound::WavWriter::new(BufWriter::new(file), spec)
            .with_context(|| format!("cannot write the header of the recording ({what})"))?;
        Ok(Self {
            writer,
            encoding,
            samples: 0,
        })
    }

    /// Appends interleaved samples given as native-endian bytes (a ring frame's payload).
    /// A trailing partial sample is an error (the payload length is not a whole sample count).
    pub fn write_bytes(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let n = self.encoding.bytes() as usize;
        anyhow::ensure!(
            payload.len().is_multiple_of(n),
            "a frame payload of {} bytes is not a whole number of {n}-byte samples",
            payload.len()
        );
        for chunk in payload.chunks_exact(n) {
            let r = match self.encoding {
                Encoding::S16 => self
                    .writer
                    .write_sample(i16::from_ne_bytes([chunk[0], chunk[1]])),
                Encoding::S32 => self
                    .writer
                    .write_sample(i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])),
                Encoding::F32 => self
                    .writer
                    .write_sample(f32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])),
            };
            r.context("cannot write to the recording (disk full?)")?;
        }
        self.samples += (payload.len() / n) as u64;
        Ok(())
    }

    /// Samples written so far (all channels).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Writes the header's sizes and closes the file.
    pub fn finish(self) -> anyhow::Result<()> {
        self.writer
            .finalize()
            .context("cannot finish the recording's WAV header")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_is_given() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_path_buf();
        let mut w = WavSink::new(file.reopen().unwrap(), "test", 48_000, 1, Encoding::S16).unwrap();
        let samples: Vec<i16> = (0..256).map(|i| i * 3 - 300).collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_ne_bytes()).collect();
        w.write_bytes(&bytes).unwrap();
        assert!(w.write_bytes(&[1, 2, 3]).is_err());
        w.finish().unwrap();
        let mut r = hound::WavReader::open(&path).unwrap();
        let back: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back, samples);
    }
}
