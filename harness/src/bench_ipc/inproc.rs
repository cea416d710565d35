//! `rtrb`: two threads of this process, the way an in-process audio pipeline is often wired.
//! The producer copies the message into an `rtrb::RingBuffer<u8>` (`push_entire_slice`, after
//! stamping), the consumer reads it in place (`read_chunk`); the acknowledgement goes back
//! through a second `rtrb` ring. Both sides busy-poll (rtrb has no blocking wait).

use anyhow::{Context, bail};

use super::measure::{now_ns, pin_to, thread_cpu_ns};
use super::{Measure, PEER_TIMEOUT_NS, ProducerReport, wire};

fn spin_until(mut ready: impl FnMut() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = now_ns() + PEER_TIMEOUT_NS;
    let mut spins: u32 = 0;
    while !ready() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(65536) && now_ns() > deadline {
            bail!("{what}: no progress for 10 s");
        }
    }
    Ok(())
}

/// Runs one `rtrb` measurement; returns the consumer's latencies (ns), its CPU time over the
/// measured messages, and the producer's report.
pub fn run(
    m: &Measure<'_>,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<(u64, ProducerReport)> {
    let (plan, payload, cpus) = (m.plan, m.payload, m.cpus);
    let (mut data_tx, mut data_rx) = rtrb::RingBuffer::<u8>::new(payload);
    let (mut ack_tx, mut ack_rx) = rtrb::RingBuffer::<u64>::new(1);
    let plan_p = plan.clone();
    let producer = std::thread::Builder::new()
        .name("bench-rtrb-producer".into())
        .spawn(move || -> anyhow::Result<ProducerReport> {
            pin_to(cpus.0)?;
            let mut buf = vec![0x5au8; payload];
            let mut cpu_ns = 0;
            let mut cpu0 = 0;
            for i in 0..plan_p.total() {
                if i == plan_p.warmup {
                    cpu0 = thread_cpu_ns();
                }
                wire::mark(&mut buf, i);
                wire::stamp(&mut buf);
                data_tx
                    .push_entire_slice(&buf)
                    .map_err(|e| anyhow::anyhow!("rtrb ring full ({e}): protocol error"))?;
                spin_until(
                    || !ack_rx.is_empty(),
                    "the rtrb consumer stopped acknowledging",
                )?;
                let ack = ack_rx
                    .pop()
                    .context("ack ring empty after it was non-empty")?;
                if ack != i {
                    bail!("the rtrb consumer acknowledged {ack}, expected {i}");
                }
                if i + 1 == plan_p.warmup + plan_p.messages {
                    cpu_ns = thread_cpu_ns() - cpu0;
                }
            }
            Ok(ProducerReport {
                cpu_ns,
                // Nothing in this loop calls the kernel: rtrb is atomics on process memory.
                syscalls_per_msg: Some(0.0),
                method: "code-path".into(),
            })
        })
        .context("spawning the rtrb producer thread")?;

    let consumer = (|| -> anyhow::Result<u64> {
        pin_to(cpus.1)?;
        let mut cpu_ns = 0;
        let mut cpu0 = 0;
        for i in 0..plan.total() {
            if i == plan.warmup {
                cpu0 = thread_cpu_ns();
            }
            spin_until(
                || data_rx.slots() >= payload,
                "the rtrb producer stopped sending",
            )?;
            let recv_ns = now_ns();
            let chunk = data_rx
                .read_chunk(payload)
                .map_err(|e| anyhow::anyhow!("rtrb read_chunk: {e}"))?;
            let (a, b) = chunk.as_slices();
            // The ring's capacity is one message and messages are whole, so a message never
            // wraps: `b` is empty. Checked, not assumed.
            if !b.is_empty() || a.len() != payload {
                bail!("an rtrb message wrapped around the ring: protocol error");
            }
            let seq = wire::seq(a);
            let stamp = wire::stamp_ns(a);
            if seq != i || wire::last_seq(a) != i {
                bail!("rtrb message {i} arrived as {seq}: out of step");
            }
            chunk.commit_all();
            if plan.is_measured(i) {
                hist.record(recv_ns.saturating_sub(stamp).max(1))
                    .context("recording a latency")?;
            }
            ack_tx
                .push(i)
                .map_err(|_| anyhow::anyhow!("rtrb ack ring full: protocol error"))?;
            if i + 1 == plan.warmup + plan.messages {
                cpu_ns = thread_cpu_ns() - cpu0;
            }
        }
        Ok(cpu_ns)
    })();
    let report = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the rtrb producer thread panicked"))?;
    let consumer_cpu = consumer?;
    Ok((consumer_cpu, report?))
}
