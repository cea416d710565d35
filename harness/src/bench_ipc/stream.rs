//! Byte-stream transports: `uds` (a Unix stream socket pair), `tcp` (127.0.0.1, TCP_NODELAY)
//! and `pipe` (two anonymous pipes). A message is `[seq u64][stamp u64] ... [seq u64]`, the
//! acknowledgement is the 8-byte seq sent back.

use std::io::{Read, Write};

use anyhow::{Context, bail};

use super::measure::now_ns;
use super::{Received, Rx, Tx, wire};

/// Producer side of a byte stream.
#[derive(Debug)]
pub struct StreamTx<W, R> {
    pub w: W,
    pub r: R,
    pub buf: Vec<u8>,
    /// `write` calls issued by `send` (the fallback syscall count).
    pub writes: u64,
}

impl<W: Write, R: Read> StreamTx<W, R> {
    pub fn new(w: W, r: R, payload: usize) -> Self {
        Self {
            w,
            r,
            buf: vec![0x5a; payload],
            writes: 0,
        }
    }
}

impl<W: Write, R: Read> Tx for StreamTx<W, R> {
    fn prepare(&mut self, seq: u64) -> anyhow::Result<()> {
        wire::mark(&mut self.buf, seq);
        Ok(())
    }
    fn send(&mut self, _seq: u64) -> anyhow::Result<()> {
        wire::stamp(&mut self.buf);
        let mut off = 0;
        while off < self.buf.len() {
            self.writes += 1;
            match self.w.write(&self.buf[off..]) {
                Ok(0) => bail!("the consumer closed the connection"),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("sending a message"),
            }
        }
        Ok(())
    }
    fn wait_ack(&mut self, seq: u64) -> anyhow::Result<()> {
        let mut ack = [0u8; 8];
        self.r
            .read_exact(&mut ack)
            .context("waiting for the consumer's acknowledgement")?;
        let got = u64::from_le_bytes(ack);
        if got != seq {
            bail!("the consumer acknowledged {got}, expected {seq}");
        }
        Ok(())
    }
    fn own_syscalls(&self) -> Option<u64> {
        Some(self.writes)
    }
}

/// Consumer side of a byte stream.
#[derive(Debug)]
pub struct StreamRx<R, W> {
    pub r: R,
    pub w: W,
    pub buf: Vec<u8>,
    pub next: u64,
}

impl<R: Read, W: Write> StreamRx<R, W> {
    pub fn new(r: R, w: W, payload: usize) -> Self {
        Self {
            r,
            w,
            buf: vec![0; payload],
            next: 0,
        }
    }
}

impl<R: Read, W: Write> Rx for StreamRx<R, W> {
    fn recv(&mut self) -> anyhow::Result<Received> {
        self.r
            .read_exact(&mut self.buf)
            .context("receiving a message (did the producer process die?)")?;
        let recv_ns = now_ns();
        let seq = wire::seq(&self.buf);
        if seq != self.next {
            bail!("received message {seq}, expected {}", self.next);
        }
        Ok(Received {
            seq,
            stamp_ns: wire::stamp_ns(&self.buf),
            recv_ns,
        })
    }
    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        let last = wire::last_seq(&self.buf);
        if last != msg.seq {
            bail!("message {} ends with {last}: stream out of step", msg.seq);
        }
        self.w
            .write_all(&msg.seq.to_le_bytes())
            .context("acknowledging a message")?;
        self.next += 1;
        Ok(())
    }
}
