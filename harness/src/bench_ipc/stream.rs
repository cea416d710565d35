//! Byte-stream transports: `uds` (a Unix stream socket pair), `tcp` (127.0.0.1, TCP_NODELAY)
//! and `pipe` (two anonymous pipes). A message is `[seq u64][stamp u64] ... [seq u64]`, the
//! acknowledgement is the 8-byte seq sent back.

use std::io::{Read, Write};

use anyhow::{Context, bail};

use super::measure::now_ns;
use super::{Received, Rx, Tx, wire};

/// One end of a byte stream: the half it reads, the half it writes, and one message's bytes.
#[derive(Debug)]
pub struct Conn<R, W> {
    pub r: R,
    pub w: W,
    pub buf: Vec<u8>,
}

impl<R: Read, W: Write> Conn<R, W> {
    /// An end for messages of `payload` bytes.
    pub fn new(r: R, w: W, payload: usize) -> Self {
        Self {
            r,
            w,
            buf: vec![0; payload],
        }
    }
}

/// Producer side of a byte stream.
#[derive(Debug)]
pub struct StreamTx<R, W> {
    pub conn: Conn<R, W>,
    /// `write` calls issued by `send` (the fallback syscall count).
    pub writes: u64,
}

impl<R: Read, W: Write> From<Conn<R, W>> for StreamTx<R, W> {
    /// The producer of `conn`; the bytes between the marks are filler (0x5a).
    fn from(mut conn: Conn<R, W>) -> Self {
        conn.buf.fill(0x5a);
        Self { conn, writes: 0 }
    }
}

impl<R: Read, W: Write> Tx for StreamTx<R, W> {
    fn prepare(&mut self, seq: u64) -> anyhow::Result<()> {
        wire::mark(&mut self.conn.buf, seq);
        Ok(())
    }
    fn send(&mut self, _seq: u64) -> anyhow::Result<()> {
        let Conn { w, buf, .. } = &mut self.conn;
        wire::stamp(buf);
        let mut off = 0;
        while off < buf.len() {
            self.writes += 1;
            match w.write(&buf[off..]) {
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
        self.conn
            .r
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
    pub conn: Conn<R, W>,
    /// The sequence number the next message must carry.
    pub next: u64,
}

impl<R: Read, W: Write> From<Conn<R, W>> for StreamRx<R, W> {
    fn from(conn: Conn<R, W>) -> Self {
        Self { conn, next: 0 }
    }
}

impl<R: Read, W: Write> Rx for StreamRx<R, W> {
    fn recv(&mut self) -> anyhow::Result<Received> {
        let Conn { r, buf, .. } = &mut self.conn;
        r.read_exact(buf)
            .context("receiving a message (did the producer process die?)")?;
        let recv_ns = now_ns();
        let seq = wire::seq(buf);
        if seq != self.next {
            bail!("received message {seq}, expected {}", self.next);
        }
        Ok(Received {
            seq,
            stamp_ns: wire::stamp_ns(buf),
            recv_ns,
        })
    }
    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        let last = wire::last_seq(&self.conn.buf);
        if last != msg.seq {
            bail!("message {} ends with {last}: stream out of step", msg.seq);
        }
        self.conn
            .w
            .write_all(&msg.seq.to_le_bytes())
            .context("acknowledging a message")?;
        self.next += 1;
        Ok(())
    }
}
