//! `http`: an HTTP/1.1 POST per message on 127.0.0.1, through the libraries a team would use
//! (ureq as the client, tiny_http as the server), on a kept-alive connection. The body is the
//! message (`[seq][stamp] ... [seq]`); the `200` response is the acknowledgement.

use std::time::Duration;

use anyhow::{Context, bail};

use super::measure::now_ns;
use super::{PEER_TIMEOUT_NS, Received, Rx, Tx, wire};

/// The client (producer) side.
#[derive(Debug)]
pub struct HttpTx {
    agent: ureq::Agent,
    url: String,
    buf: Vec<u8>,
}

impl HttpTx {
    pub fn new(port: u16, payload: usize) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_nanos(PEER_TIMEOUT_NS)))
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            url: format!("http://127.0.0.1:{port}/frame"),
            buf: vec![0x5a; payload],
        }
    }
}

impl Tx for HttpTx {
    fn prepare(&mut self, seq: u64) -> anyhow::Result<()> {
        wire::mark(&mut self.buf, seq);
        Ok(())
    }
    fn send(&mut self, _seq: u64) -> anyhow::Result<()> {
        wire::stamp(&mut self.buf);
        let response = self
            .agent
            .post(&self.url)
            .header("content-type", "application/octet-stream")
            .send(&self.buf[..])
            .with_context(|| format!("POST {}", self.url))?;
        // Read the (empty) body to the end so the connection goes back to the pool.
        response
            .into_body()
            .read_to_vec()
            .context("reading the response body")?;
        Ok(())
    }
    fn wait_ack(&mut self, _seq: u64) -> anyhow::Result<()> {
        // The response to the POST was the acknowledgement.
        Ok(())
    }
    fn own_syscalls(&self) -> Option<u64> {
        // The syscalls happen inside ureq; only the kernel counter can see them.
        None
    }
}

/// The server (consumer) side.
#[allow(missing_debug_implementations)] // tiny_http::Server is not Debug
pub struct HttpRx {
    server: tiny_http::Server,
    pending: Option<tiny_http::Request>,
    buf: Vec<u8>,
    payload: usize,
    next: u64,
}

impl HttpRx {
    /// Binds 127.0.0.1 on a free port; returns the server and the port.
    pub fn bind(payload: usize) -> anyhow::Result<(Self, u16)> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("starting the HTTP server on 127.0.0.1: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .context("the HTTP server has no IP address")?
            .port();
        Ok((
            Self {
                server,
                pending: None,
                buf: Vec::with_capacity(payload),
                payload,
                next: 0,
            },
            port,
        ))
    }
}

impl Rx for HttpRx {
    fn recv(&mut self) -> anyhow::Result<Received> {
        let mut request = self
            .server
            .recv_timeout(Duration::from_nanos(PEER_TIMEOUT_NS))
            .context("waiting for an HTTP request")?
            .context("no HTTP request for 10 s: the producer process stopped")?;
        self.buf.clear();
        request
            .as_reader()
            .read_to_end(&mut self.buf)
            .context("reading the request body")?;
        let recv_ns = now_ns();
        if self.buf.len() != self.payload {
            bail!(
                "request body of {} bytes, expected {}",
                self.buf.len(),
                self.payload
            );
        }
        let seq = wire::seq(&self.buf);
        if seq != self.next {
            bail!("received message {seq}, expected {}", self.next);
        }
        self.pending = Some(request);
        Ok(Received {
            seq,
            stamp_ns: wire::stamp_ns(&self.buf),
            recv_ns,
        })
    }
    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        if wire::last_seq(&self.buf) != msg.seq {
            bail!("body of message {} does not end with its seq", msg.seq);
        }
        let request = self
            .pending
            .take()
            .context("finish called without a pending request")?;
        request
            .respond(tiny_http::Response::empty(200))
            .context("answering the POST")?;
        self.next += 1;
        Ok(())
    }
}
