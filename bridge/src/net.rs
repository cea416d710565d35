//! The Zenoh session both sides open: peer mode, explicit endpoints only, no scouting.
//!
//! Security defaults. Zenoh's own defaults listen on every interface (`tcp/[::]:0` for a
//! peer) and scout by UDP multicast; this bridge overrides both: it listens only where told
//! (`--listen`), by default on `tcp/127.0.0.1:7447` for the exporter and nowhere for the
//! importer, multicast scouting and gossip are off, and a message larger than a frame can be
//! is refused by the transport. A Zenoh configuration file (`--config`, JSON5) adds TLS and
//! access control (see docs/bridge.md); the flags above still override its endpoints.

use std::path::Path;

use anyhow::bail;

/// Where an exporter listens when not told: loopback only.
pub const DEFAULT_EXPORT_LISTEN: &str = "tcp/127.0.0.1:7447";
/// Where an importer connects when not told.
pub const DEFAULT_IMPORT_CONNECT: &str = "tcp/127.0.0.1:7447";
/// Largest Zenoh message accepted: one frame of the largest ring plus the header.
const MAX_MESSAGE: usize = (crate::wire::MAX_PAYLOAD as usize) + 4096;

/// See `config`: microseconds a frame may wait for room in Zenoh's queue.
const WAIT_BEFORE_DROP_US: u64 = 10_000;

/// How a side opens its session.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// Zenoh locators to listen on (`tcp/127.0.0.1:7447`, `tls/host:7447`...).
    pub listen: Vec<String>,
    /// Zenoh locators to connect to.
    pub connect: Vec<String>,
    /// A Zenoh JSON5 configuration file applied first (TLS, access control).
    pub config_file: Option<std::path::PathBuf>,
}

fn json_list(items: &[String]) -> anyhow::Result<String> {
    for e in items {
        if !e.contains('/') {
            bail!(
                "endpoint {e:?} has no protocol: write it as a Zenoh locator, e.g. tcp/127.0.0.1:7447 or tls/host:7447"
            );
        }
    }
    Ok(serde_json::to_string(items)?)
}

/// The Zenoh configuration for `ep` (see the module documentation).
///
/// # Errors
/// An unreadable or invalid config file, or a malformed endpoint, with what to do.
pub fn config(ep: &Endpoints) -> anyhow::Result<zenoh::Config> {
    let mut c = match &ep.config_file {
        Some(p) => load_config_file(p)?,
        None => zenoh::Config::default(),
    };
    let set = |c: &mut zenoh::Config, k: &str, v: &str| {
        c.insert_json5(k, v)
            .map_err(|e| anyhow::anyhow!("setting Zenoh option {k} = {v}: {e}"))
    };
    set(&mut c, "mode", r#""peer""#)?;
    set(&mut c, "scouting/multicast/enabled", "false")?;
    set(&mut c, "scouting/gossip/enabled", "false")?;
    set(
        &mut c,
        "transport/link/rx/max_message_size",
        &MAX_MESSAGE.to_string(),
    )?;
    // How long a `Drop` publication may wait for room in Zenoh's queue before it is dropped.
    // Only the exporter's sender thread waits (the ring reader hands over through a bounded
    // queue and never waits), so this may exceed Zenoh's 1 ms default.
    set(
        &mut c,
        "transport/link/tx/queue/congestion_control/drop/wait_before_drop",
        &WAIT_BEFORE_DROP_US.to_string(),
    )?;
    // Express frames take a batch each: Zenoh's default of 2 batches for the real-time
    // priority drops frames whenever its sending task is two frames late.
    set(&mut c, "transport/link/tx/queue/size/real_time", "16")?;
    // The file's endpoints count only when no flag was given; without either, Zenoh's default
    // (every interface) is replaced by the empty list or the flag's value.
    let file_listen = ep.config_file.is_some() && !endpoints_empty(&c, "listen/endpoints");
    if !ep.listen.is_empty() || !file_listen {
        set(&mut c, "listen/endpoints", &json_list(&ep.listen)?)?;
    }
    let file_connect = ep.config_file.is_some() && !endpoints_empty(&c, "connect/endpoints");
    if !ep.connect.is_empty() || !file_connect {
        set(&mut c, "connect/endpoints", &json_list(&ep.connect)?)?;
    }
    Ok(c)
}

/// Reads a Zenoh JSON5 configuration file, saying which file failed and why.
///
/// # Errors
/// The file is missing or not a valid Zenoh configuration.
pub fn load_config_file(p: &Path) -> anyhow::Result<zenoh::Config> {
    zenoh::Config::from_file(p).map_err(|e| {
        anyhow::anyhow!(
            "Zenoh configuration {} is not usable: {e}; see docs/bridge.md for a working example",
            p.display()
        )
    })
}

fn endpoints_empty(c: &zenoh::Config, key: &str) -> bool {
    // A mode-dependent value prints as an object; an explicit list as an array.
    c.get_json(key)
        .map(|j| j.trim() == "[]" || j.contains("[::]:0") || j.trim() == "null")
        .unwrap_or(true)
}

/// Opens the session.
///
/// # Errors
/// Zenoh refused (an endpoint already in use, a bad certificate...), with the endpoints.
pub fn open(ep: &Endpoints) -> anyhow::Result<zenoh::Session> {
    use zenoh::Wait;
    let c = config(ep)?;
    zenoh::open(c).wait().map_err(|e| {
        anyhow::anyhow!(
            "opening the Zenoh session (listen {:?}, connect {:?}) failed: {e}; check that the \
             port is free and the addresses exist on this machine",
            ep.listen,
            ep.connect
        )
    })
}

/// Checks a user's key: a Zenoh key expression without wildcards, so it names one stream.
///
/// # Errors
/// What is wrong with it.
pub fn check_key(key: &str) -> anyhow::Result<()> {
    zenoh::key_expr::KeyExpr::try_from(key).map_err(|e| {
        anyhow::anyhow!("{key:?} is not a valid Zenoh key (e.g. voxring/room1/mic): {e}")
    })?;
    if key.contains('*') || key.contains('$') || key.starts_with('@') {
        bail!("key {key:?} must name one stream: no wildcards (*, **, $*) and no leading @");
    }
    Ok(())
}

/// The key the frames of `key` are published on.
pub fn data_key(key: &str) -> String {
    format!("{key}/frames")
}

/// The liveliness token of the exporter of `key`.
pub fn exporter_token(key: &str) -> String {
    format!("{key}/exporter")
}

/// The liveliness token of an importer of `key` (one per importer session).
pub fn importer_token(key: &str, zid: &str) -> String {
    format!("{key}/importer/{zid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_flags_nothing_listens_and_nothing_scouts() {
        let c = config(&Endpoints::default()).unwrap();
        assert_eq!(c.get_json("listen/endpoints").unwrap().trim(), "[]");
        assert_eq!(c.get_json("scouting/multicast/enabled").unwrap(), "false");
        assert_eq!(c.get_json("scouting/gossip/enabled").unwrap(), "false");
        assert_eq!(
            c.get_json("transport/link/tx/queue/size/real_time")
                .unwrap(),
            "16"
        );
    }

    #[test]
    fn endpoints_without_a_protocol_are_refused_with_an_example() {
        let ep = Endpoints {
            listen: vec!["127.0.0.1:7447".into()],
            ..Endpoints::default()
        };
        let e = config(&ep).unwrap_err().to_string();
        assert!(e.contains("tcp/127.0.0.1:7447"), "{e}");
    }

    #[test]
    fn keys_with_wildcards_are_refused() {
        assert!(check_key("voxring/room1/mic").is_ok());
        for bad in ["voxring/*", "voxring/**", "", "a//b", "@/x"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
