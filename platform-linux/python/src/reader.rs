//! [`Reader`]: the consumer side, over the shared segment or the producer's socket fallback;
//! its grants ([`ReadGrant`]) and frames ([`Frame`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::types::{PyDict, PyList};
use voxring_core::{FrameFlags, FrameMeta, ReadToken, ReleaseError, SampleFormat};
use voxring_linux::fallback::{FallbackRead, FallbackReader, default_socket_path};
use voxring_linux::ring::{FramesWait, Segment, ShmConsumer, WaitError};
use voxring_linux::segment::AttachOptions;

use crate::cache::Reuse;
use crate::endpoint::{Endpoint, Frames};
use crate::error::{self, Failure, Res};
use crate::grant::{Frame, ReadGrant};
use crate::memory::{Keep, Memory, lock, view};
use crate::wait::{Deadline, WaitResult};

// One per reader, made once: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Shm {
        /// The open read grant, checked by core on release (a stale one is an error).
        token: Option<ReadToken>,
        consumer: ShmConsumer,
    },
    Socket(Arc<Mutex<FallbackReader>>),
}

/// How long a wait spins with the GIL held before it releases it (and spins, then parks,
/// without it): a frame that comes this soon is handed over without a thread switch.
const GIL_SPIN: Duration = Duration::from_micros(20);

/// A slot's cached objects, made the first time the slot is read and reused (slots never
/// move): a read-only view of the slot's whole payload (a frame's `samples` costs no new numpy
/// array), and the Frames handed out last for it, each reused when nothing else holds it.
struct Slot {
    /// The payload's address the view was made for.
    ptr: usize,
    view: Py<PyAny>,
    frames: Reuse<Frame>,
}

struct State {
    /// `None` once closed.
    transport: Option<Transport>,
    /// The generation of the grant handed to Python and not yet released, and its frames'
    /// flags (for the xrun count; the vector is reused).
    open: Option<u64>,
    open_flags: Vec<u32>,
    /// The generation the next grant gets (from 1; 0 means "none open" in `Reader::open_gen`).
    next_gen: u64,
    /// The grant the iterator handed out last (released by the next step).
    iter_grant: Option<u64>,
    /// The views' base: dropped on close, so the mapping (or the fallback socket and buffer)
    /// goes once no view of it is left.
    memory: Option<Py<Memory>>,
    /// Keyed by `seq % frames`.
    slots: Vec<Option<Slot>>,
    lost_seen: u64,
    xruns: u64,
    frames: u64,
}

/// Reads ring `name`. See the package docs (`help(voxring.Reader)`).
#[pyclass(frozen, subclass, extends = Endpoint, module = "voxring._voxring")]
pub struct Reader {
    state: Mutex<State>,
    /// The generation of the open grant (0: none), what frames and grants check to know they
    /// are still granted: a Frame object is reused for a later grant of its slot, so a
    /// generation, not a per-grant flag, says which grant it belongs to.
    open_gen: Arc<AtomicU64>,
    format: SampleFormat,
    /// Bytes of a slot's payload (a frame's capacity).
    payload_bytes: usize,
    transport: &'static str,
    reason: String,
}

fn open_shm(name: &str, owner: Option<u32>) -> Res<(Transport, Segment)> {
    let opts = AttachOptions {
        expected_owner: owner,
        ..AttachOptions::default()
    };
    let seg = Segment::attach(name, &opts).map_err(error::attach)?;
    let consumer = seg.consumer().map_err(error::participant)?;
    Ok((
        Transport::Shm {
            token: None,
            consumer,
        },
        seg,
    ))
}

fn connect(
    path: Option<&PathBuf>,
    name: &str,
    why: &str,
    owner: Option<u32>,
) -> Res<FallbackReader> {
    let failed =
        |name, e: String| Failure::new(name, format!("{why}; the socket fallback failed too: {e}"));
    let path = match path {
        Some(p) => p.clone(),
        None => {
            default_socket_path(name).map_err(|e| failed(error::fallback(&e), e.to_string()))?
        }
    };
    FallbackReader::connect_expecting(&path, Duration::from_secs(5), owner)
        .map_err(|e| failed(error::fallback(&e), e.to_string()))
}

/// Spins for at most `spin` with the GIL held, watching the ring for a frame: true when one
/// may be ready. A frame that comes during the spin is taken without giving up and re-taking
/// the GIL (a thread switch in CPython); the GIL is held no longer than `spin`, far below
/// CPython's own switch interval (5 ms). Shared memory only.
fn spin_for(st: &mut State, spin: Duration) -> bool {
    let Some(Transport::Shm { consumer, .. }) = st.transport.as_mut() else {
        return false;
    };
    // The clock is read only once the first look found nothing.
    let mut until = None;
    let mut i: u32 = 0;
    loop {
        if consumer.is_truncated() {
            return false; // the full wait reports it
        }
        if consumer.consumer().frame_ready() {
            return true;
        }
        let until = *until.get_or_insert_with(|| Instant::now() + spin);
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) && Instant::now() >= until {
            return false;
        }
        std::hint::spin_loop();
    }
}

impl Reader {
    fn state(&self, py: Python<'_>) -> std::sync::MutexGuard<'_, State> {
        lock(py, &self.state)
    }

    /// One wait of at most `slice`, without the GIL.
    fn wait_slice(&self, py: Python<'_>, slice: Duration) -> Res<FramesWait> {
        py.detach(|| {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.transport.as_mut() {
                None => Err(error::closed("Reader")),
                Some(Transport::Shm { consumer, .. }) => {
                    consumer.wait_for_frames(Some(slice)).map_err(|e| match e {
                        WaitError::Read(e) => error::read(e),
                        e => Failure::new("VR_E_TRUNCATED", e.to_string()),
                    })
                }
                Some(Transport::Socket(f)) => {
                    let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                    f.wait(Some(slice))
                        .map_err(|e| Failure::new("VR_E_IO", e.to_string()))
                }
            }
        })
    }

    /// Spins for at most `spin` with the GIL held, watching the ring for a frame: true when
    /// one may be ready. False if another thread holds the reader (see [`spin_for`]).
    fn spin_holding_the_gil(&self, spin: Duration) -> bool {
        match self.state.try_lock() {
            Ok(mut st) => spin_for(&mut st, spin),
            Err(_) => false,
        }
    }

    /// Waits until `deadline` for a frame, without the GIL (after a spin holding it if
    /// `spin`).
    fn wait_until(&self, py: Python<'_>, deadline: Deadline, spin: bool) -> PyResult<WaitResult> {
        if spin && !deadline.passed() && self.spin_holding_the_gil(GIL_SPIN) {
            return Ok(WaitResult::Ready);
        }
        loop {
            let slice = deadline.slice();
            match self.wait_slice(py, slice)? {
                FramesWait::Ready => return Ok(WaitResult::Ready),
                FramesWait::EndOfStream => return Ok(WaitResult::End),
                FramesWait::TimedOut if deadline.passed() => return Ok(WaitResult::Timeout),
                // Between slices: Ctrl-C (and other signals) reach Python.
                FramesWait::TimedOut => py.check_signals()?,
            }
        }
    }

    /// Grants up to `n` frames, the state locked: hands each Frame to `emit` and returns the
    /// frames a lossy ring lost before them and the grant's generation (open if any frame was
    /// granted).
    fn grant_locked(
        &self,
        py: Python<'_>,
        st: &mut State,
        n: usize,
        emit: &mut dyn FnMut(Py<Frame>) -> PyResult<()>,
    ) -> PyResult<(u64, u64)> {
        if st.open.is_some() {
            return Err(Failure::new(
                "VR_E_GRANT_OPEN",
                "a read grant is open: release it first (grant.release(), or leave its `with` \
                 block)",
            )
            .into());
        }
        let grant_no = st.next_gen;
        st.next_gen += 1;
        st.open_flags.clear();
        let State {
            transport,
            memory,
            slots,
            open_flags,
            lost_seen,
            ..
        } = st;
        let Some(mem) = memory.as_ref() else {
            return Err(error::closed("Reader").into());
        };
        let mem = mem.bind(py);
        let mut lost = 0;
        let mut made = Ok(());
        let mut each = |meta: FrameMeta, ptr: *const u8, flags: &mut Vec<u32>| {
            flags.push(meta.flags.0);
            if made.is_ok() {
                made = self
                    .frame_at(py, slots, mem, meta, ptr, grant_no)
                    .and_then(&mut *emit);
            }
        };
        match transport.as_mut() {
            None => return Err(error::closed("Reader").into()),
            Some(Transport::Shm { token, consumer }) => {
                let c = consumer.consumer();
                match c.read_token(n) {
                    Ok(t) => {
                        for i in 0..t.len() {
                            if let Some(f) = c.token_frame(t, i) {
                                each(f.meta(), f.payload().as_ptr(), open_flags);
                            }
                        }
                        *token = Some(t);
                    }
                    Err(voxring_core::ReadError::Empty) => {}
                    Err(voxring_core::ReadError::Lost { .. }) => {
                        let total = c.lost_frames();
                        lost = total - *lost_seen;
                        *lost_seen = total;
                    }
                    Err(e) => return Err(error::read(e).into()),
                }
            }
            Some(Transport::Socket(f)) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                match f
                    .read_grant(n)
                    .map_err(|e| Failure::new("VR_E_IO", e.to_string()))?
                {
                    FallbackRead::Frames(k) => {
                        for i in 0..k {
                            if let Some(fr) = f.frame(i) {
                                each(fr.meta, fr.payload.as_ptr(), open_flags);
                            }
                        }
                    }
                    FallbackRead::Empty | FallbackRead::EndOfStream => {}
                    FallbackRead::Lost(k) => lost = k,
                }
            }
        }
        if !st.open_flags.is_empty() {
            st.open = Some(grant_no);
            // Pairs with the Acquire loads of Frame/ReadGrant validity checks (all under the
            // GIL, so this is belt and braces).
            self.open_gen.store(grant_no, Ordering::Release);
        }
        if let Err(e) = made {
            // No grant reaches Python: give the frames back (read again by the next grant),
            // or the reader would stay "a read grant is open" for good.
            self.release_locked(st, grant_no, Some(0))?;
            return Err(e);
        }
        Ok((lost, grant_no))
    }

    /// The Frame for a granted frame: the slot's cached view, and its cached Frame object
    /// refilled when nothing but the cache holds it (else a new one, which is cached).
    fn frame_at(
        &self,
        py: Python<'_>,
        slots: &mut [Option<Slot>],
        mem: &Bound<'_, Memory>,
        meta: FrameMeta,
        ptr: *const u8,
        grant_no: u64,
    ) -> PyResult<Py<Frame>> {
        let cap = self.payload_bytes;
        let i = (meta.seq % slots.len().max(1) as u64) as usize;
        let Some(entry) = slots.get_mut(i) else {
            return Err(error::closed("Reader").into());
        };
        let slot = match entry {
            Some(s) if s.ptr == ptr as usize => s,
            _ => {
                let view = view(mem, ptr.cast_mut(), cap, self.format, false)?
                    .into_any()
                    .unbind();
                entry.insert(Slot {
                    ptr: ptr as usize,
                    view,
                    frames: Default::default(),
                })
            }
        };
        let whole = meta.len as usize == cap;
        // A Frame held elsewhere keeps its old grant (and stays refused once it is over).
        slot.frames.get(
            py,
            |fr| {
                fr.meta = meta;
                fr.whole = whole;
                fr.grant_no = grant_no;
                fr.samples = None;
            },
            || Frame {
                meta,
                full: slot.view.clone_ref(py),
                whole,
                grant_no,
                open: self.open_gen.clone(),
                samples: None,
            },
        )
    }

    /// Releases the frame the iterator handed out last, if any, the state locked.
    fn release_iterated(&self, st: &mut State) -> PyResult<()> {
        match st.iter_grant.take() {
            Some(grant_no) => self.release_locked(st, grant_no, None).map(drop),
            None => Ok(()),
        }
    }

    /// One step of iteration, under one lock: releases the iterator's last frame and grants
    /// the next one if one is ready (after a spin holding the GIL for at most [`GIL_SPIN`] if
    /// `spin`).
    fn step(&self, py: Python<'_>, spin: bool) -> PyResult<Option<Py<Frame>>> {
        let mut st = self.state(py);
        self.release_iterated(&mut st)?;
        let mut out = None;
        let (_lost, grant_no) = self.grant_locked(py, &mut st, 1, &mut |f| {
            out = Some(f);
            Ok(())
        })?;
        if out.is_none() && spin && spin_for(&mut st, GIL_SPIN) {
            let (_lost, grant_no) = self.grant_locked(py, &mut st, 1, &mut |f| {
                out = Some(f);
                Ok(())
            })?;
            st.iter_grant = out.as_ref().map(|_| grant_no);
            return Ok(out);
        }
        st.iter_grant = out.as_ref().map(|_| grant_no);
        Ok(out)
    }

    /// Releases the first `k` frames of the open grant `grant_no`. False: a lossy ring overwrote
    /// some while they were read.
    pub(crate) fn release(
        &self,
        py: Python<'_>,
        grant_no: u64,
        k: Option<usize>,
    ) -> PyResult<bool> {
        self.release_locked(&mut self.state(py), grant_no, k)
    }

    fn release_locked(&self, st: &mut State, grant_no: u64, k: Option<usize>) -> PyResult<bool> {
        if st.open != Some(grant_no) {
            return Ok(true); // released already (or the reader was closed)
        }
        let n = st.open_flags.len();
        let k = k.unwrap_or(n);
        if k > n {
            return Err(PyValueError::new_err(format!(
                "release of {k} frames, {n} granted: pass at most {n}"
            )));
        }
        let xruns = st.open_flags[..k]
            .iter()
            .filter(|f| FrameFlags(**f).contains(FrameFlags::XRUN))
            .count() as u64;
        // Whatever the outcome, this grant is over: its frames' views are refused from now.
        // Pairs with the Acquire loads of the validity checks.
        self.open_gen.store(0, Ordering::Release);
        st.open = None;
        let mut intact = true;
        match st.transport.as_mut() {
            None => return Ok(true),
            Some(Transport::Shm { token, consumer }) => {
                let Some(t) = token.take() else {
                    return Ok(true);
                };
                let (c, waiter) = consumer.parts();
                match c.release_token(t, k) {
                    Ok(wake) => wake.wake(waiter),
                    Err(ReleaseError::Overwritten { .. }) => intact = false,
                    Err(e @ ReleaseError::Evicted) => {
                        return Err(Failure::new("VR_E_EVICTED", e.to_string()).into());
                    }
                    Err(e) => return Err(Failure::new("VR_E_INVALID", e.to_string()).into()),
                }
            }
            Some(Transport::Socket(f)) => {
                f.lock().unwrap_or_else(|p| p.into_inner()).release(k);
            }
        }
        st.xruns += xruns;
        st.frames += k as u64;
        Ok(intact)
    }
}

#[pymethods]
impl Reader {
    #[new]
    #[pyo3(signature = (name, socket_path=None, fallback=true, force_fallback=false, expected_owner=None))]
    fn new(
        py: Python<'_>,
        name: String,
        socket_path: Option<PathBuf>,
        fallback: bool,
        force_fallback: bool,
        expected_owner: Option<i64>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let owner = expected_owner
            .map(|o| {
                u32::try_from(o).map_err(|_| {
                    PyValueError::new_err(format!(
                        "expected_owner {o} is not a uid (0 ..= 4294967295): pass the ring \
                         owner's numeric user id"
                    ))
                })
            })
            .transpose()?;
        let opened = py.detach(|| -> Res<_> {
            if force_fallback {
                let why = "force_fallback=True was given";
                let f = connect(socket_path.as_ref(), &name, why, owner)?;
                return Ok((
                    Transport::Socket(Arc::new(Mutex::new(f))),
                    None,
                    why.to_owned(),
                ));
            }
            match open_shm(&name, owner) {
                Ok((t, seg)) => Ok((t, Some(seg), String::new())),
                Err(e)
                    if fallback
                        && matches!(
                            e.name,
                            "VR_E_NOT_FOUND" | "VR_E_PERMISSION" | "VR_E_ATTACH"
                        ) =>
                {
                    let why = format!("attaching the shared segment failed: {}", e.msg);
                    let f = connect(socket_path.as_ref(), &name, &why, owner).map_err(|f| {
                        // The first failure names the kind of error (a missing ring, say).
                        Failure::new(e.name, f.msg)
                    })?;
                    Ok((Transport::Socket(Arc::new(Mutex::new(f))), None, why))
                }
                Err(e) => Err(e),
            }
        });
        let (transport, seg, reason) =
            opened.map_err(|e| PyErr::from(e.context(&format!("open reader {name:?}"))))?;
        let (keep, config, kind, payload_bytes) = match (&transport, seg) {
            (_, Some(seg)) => {
                let (cfg, n) = (seg.config(), seg.ring().payload_bytes() as usize);
                (Keep::Segment(seg), cfg, "shm", n)
            }
            (Transport::Socket(f), None) => {
                let f0 = f.lock().unwrap_or_else(|p| p.into_inner());
                let (cfg, n) = (f0.config(), f0.payload_bytes());
                drop(f0);
                (Keep::Fallback(f.clone()), cfg, "socket-fallback", n)
            }
            (Transport::Shm { .. }, None) => unreachable!("a shared transport has a segment"),
        };
        let memory = Py::new(py, Memory::new(keep))?;
        let endpoint = Endpoint::new(name, config, memory.get().address());
        Ok(PyClassInitializer::from(endpoint).add_subclass(Reader {
            open_gen: Arc::new(AtomicU64::new(0)),
            payload_bytes,
            state: Mutex::new(State {
                transport: Some(transport),
                open: None,
                open_flags: Vec::new(),
                next_gen: 1,
                iter_grant: None,
                memory: Some(memory),
                slots: (0..config.frames).map(|_| None).collect(),
                lost_seen: 0,
                xruns: 0,
                frames: 0,
            }),
            format: config.format,
            transport: kind,
            reason,
        }))
    }

    /// Blocks, without holding the GIL, until a frame may be ready or `timeout` seconds pass
    /// (None: no limit; Ctrl-C still interrupts). Returns "ready", "timeout" or "end" (the
    /// producer is gone and everything was read).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<&'static str> {
        // A frame that is already there (or comes within the spin) needs no deadline.
        Deadline::check(timeout)?;
        if timeout != Some(0.0) && self.spin_holding_the_gil(GIL_SPIN) {
            return Ok(WaitResult::Ready.as_str());
        }
        Ok(self
            .wait_until(py, Deadline::after(timeout)?, true)?
            .as_str())
    }

    /// Grants up to `max_frames` ready frames to read in place (an empty grant if none is
    /// ready; `grant.lost` > 0 if a lossy ring lapped this reader).
    #[pyo3(signature = (max_frames=1))]
    fn read(slf: &Bound<'_, Self>, max_frames: usize) -> PyResult<Py<ReadGrant>> {
        let py = slf.py();
        let this = slf.get();
        let list = PyList::empty(py);
        let mut st = this.state(py);
        this.release_iterated(&mut st)?;
        let (lost, grant_no) =
            this.grant_locked(py, &mut st, max_frames, &mut |f| list.append(f))?;
        drop(st);
        Py::new(
            py,
            PyClassInitializer::from(Frames::new(list.unbind())).add_subclass(ReadGrant {
                reader: slf.clone().unbind(),
                lost,
                grant_no,
                open: this.open_gen.clone(),
            }),
        )
    }

    /// Counters: write_pos, read_pos, lag, lost_frames, xruns, frames.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut st = self.state(py);
        let done = st.frames;
        let (write_pos, read_pos, lost) = match st.transport.as_mut() {
            None => return Err(error::closed("Reader").into()),
            Some(Transport::Shm { consumer, .. }) => {
                let write_pos = consumer.segment().ring().write_pos();
                let c = consumer.consumer();
                (write_pos, c.read_pos(), c.lost_frames())
            }
            Some(Transport::Socket(f)) => {
                let f = f.lock().unwrap_or_else(|p| p.into_inner());
                (done + f.buffered(), done, f.lost_frames())
            }
        };
        let d = PyDict::new(py);
        d.set_item("write_pos", write_pos)?;
        d.set_item("read_pos", read_pos)?;
        d.set_item("lag", write_pos.saturating_sub(read_pos))?;
        d.set_item("lost_frames", lost)?;
        d.set_item("xruns", st.xruns)?;
        d.set_item("frames", st.frames)?;
        Ok(d)
    }

    /// Leaves the ring (or closes the fallback socket). Frames still granted are abandoned
    /// (their `samples` raise ReleasedError); arrays taken from them stay readable memory
    /// (the mapping lives until the last one is gone) but the producer may overwrite them.
    /// Closing twice is allowed.
    fn close(&self, py: Python<'_>) {
        let mut st = self.state(py);
        st.open = None;
        // Pairs with the Acquire loads of the validity checks.
        self.open_gen.store(0, Ordering::Release);
        let transport = st.transport.take();
        let it = st.iter_grant.take();
        let memory = st.memory.take();
        let slots = std::mem::take(&mut st.slots);
        drop(st);
        drop((it, memory, slots));
        // Leaving the ring may wake a parked producer; closing a socket may block briefly.
        py.detach(|| drop(transport));
    }

    /// True once closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.state(py).transport.is_none()
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next frame, waiting for it without the GIL; the frame before it is released
    /// first (a frame from `for frame in reader` is valid until the next step, or the next
    /// `read()`). Ends when the producer is gone and everything was read.
    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<Frame>> {
        let (py, this) = (slf.py(), slf.get());
        let mut spin = true;
        loop {
            // A frame that comes within the spin is granted in the same call.
            if let Some(f) = this.step(py, spin)? {
                return Ok(f);
            }
            spin = false;
            if this.wait_until(py, Deadline::never(), false)? == WaitResult::End {
                return Err(PyStopIteration::new_err(()));
            }
        }
    }

    /// One step of iteration without waiting: releases the frame the last step handed out,
    /// then grants the next one (None if none is ready). What `async for` is made of.
    fn _next_frame(slf: &Bound<'_, Self>) -> PyResult<Option<Py<Frame>>> {
        slf.get().step(slf.py(), false)
    }

    /// "shm", or "socket-fallback" (`transport_reason` says why).
    #[getter]
    fn transport(&self) -> &'static str {
        self.transport
    }

    /// Why the socket fallback is used (empty over shared memory).
    #[getter]
    fn transport_reason(&self) -> &str {
        &self.reason
    }

    /// The memory frames live in (the shared mapping over shared memory): what every view's
    /// `base` is.
    #[getter]
    fn memory(&self, py: Python<'_>) -> Option<Py<Memory>> {
        self.state(py).memory.as_ref().map(|m| m.clone_ref(py))
    }
}
