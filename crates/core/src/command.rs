//! What a Raft log entry carries and the pure rules for applying it.
//!
//! The state machine adapter in the node reads the current record, calls
//! [`apply_kv`] / [`apply_map`], and writes the returned effect in the same
//! RocksDB batch as the applied log id. Everything that decides an outcome is
//! here, deterministic in (entry, current state), so every replica agrees.

use serde::{Deserialize, Serialize};

use crate::map::{ClusterMap, MapError, MapV1};
use crate::record::ValueRecord;
use crate::{GroupId, codec, limits};

/// Format version of an encoded [`Request`] inside a log entry.
pub const REQUEST_FORMAT: u8 = 1;

/// The precondition of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key must not exist (or must have expired).
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

/// A log entry's command. Its serde form is [`CommandWire`]: a map that has
/// allocated no replica id travels in the format-1 variants, so nodes of the
/// previous release read it; any other map in variants they do not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// On success writes `value`, or deletes the key when `value` is `None`.
    Cas {
        key: Vec<u8>,
        expected: Expected,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    },
    /// Metadata group: install the bootstrap map. Idempotent for the same cluster id.
    InitMap(ClusterMap),
    /// Metadata group: replace the map only if it is still at `expected_version`.
    UpdateMap {
        expected_version: u64,
        map: ClusterMap,
    },
    /// Data shard: delete those of `keys` whose record has expired at the
    /// request's `proposed_at_ms` (the leader's clock), so expiry is decided
    /// once, by the leader, and every replica deletes the same records.
    Expire {
        keys: Vec<Vec<u8>>,
    },
}

/// The wire form of [`Command`], in variant order (postcard writes the
/// index): the first six are the format the previous release reads, and
/// stay as they are.
#[derive(Serialize)]
enum CommandRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
        ttl_ms: Option<u64>,
    },
    Delete {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: Expected,
        value: Option<&'a [u8]>,
        ttl_ms: Option<u64>,
    },
    InitMap(MapV1),
    UpdateMap {
        expected_version: u64,
        map: MapV1,
    },
    Expire {
        keys: &'a [Vec<u8>],
    },
    InitMapV2(&'a ClusterMap),
    UpdateMapV2 {
        expected_version: u64,
        map: &'a ClusterMap,
    },
}

/// What [`CommandRef`] writes, read back.
#[derive(Deserialize)]
enum CommandWire {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: Vec<u8>,
    },
    Cas {
        key: Vec<u8>,
        expected: Expected,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    },
    InitMap(MapV1),
    UpdateMap {
        expected_version: u64,
        map: MapV1,
    },
    Expire {
        keys: Vec<Vec<u8>>,
    },
    InitMapV2(ClusterMap),
    UpdateMapV2 {
        expected_version: u64,
        map: ClusterMap,
    },
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            Command::Put { key, value, ttl_ms } => CommandRef::Put {
                key,
                value,
                ttl_ms: *ttl_ms,
            },
            Command::Delete { key } => CommandRef::Delete { key },
            Command::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => CommandRef::Cas {
                key,
                expected: *expected,
                value: value.as_deref(),
                ttl_ms: *ttl_ms,
            },
            Command::InitMap(map) => match map.as_v1() {
                Some(v1) => CommandRef::InitMap(v1),
                None => CommandRef::InitMapV2(map),
            },
            Command::UpdateMap { expected_version, map } => match map.as_v1() {
                Some(v1) => CommandRef::UpdateMap {
                    expected_version: *expected_version,
                    map: v1,
                },
                None => CommandRef::UpdateMapV2 {
                    expected_version: *expected_version,
                    map,
                },
            },
            Command::Expire { keys } => CommandRef::Expire { keys },
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match CommandWire::deserialize(d)? {
            CommandWire::Put { key, value, ttl_ms } => Command::Put { key, value, ttl_ms },
            CommandWire::Delete { key } => Command::Delete { key },
            CommandWire::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => Command::Cas {
                key,
                expected,
                value,
                ttl_ms,
            },
            CommandWire::InitMap(v1) => Command::InitMap(v1.into()),
            CommandWire::InitMapV2(map) => Command::InitMap(map),
            CommandWire::UpdateMap { expected_version, map } => Command::UpdateMap {
                expected_version,
                map: map.into(),
            },
            CommandWire::UpdateMapV2 { expected_version, map } => Command::UpdateMap { expected_version, map },
            CommandWire::Expire { keys } => Command::Expire { keys },
        })
    }
}

/// Most keys one [`Command::Expire`] may name.
pub const MAX_EXPIRE_KEYS: usize = 1_024;

impl Command {
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => Some(key),
            Command::InitMap(_) | Command::UpdateMap { .. } | Command::Expire { .. } => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Cas { .. } => "compare-and-set",
            Command::InitMap(_) => "init-map",
            Command::UpdateMap { .. } => "update-map",
            Command::Expire { .. } => "expire",
        }
    }

    /// Whether this kind of command belongs in `group`'s log: key commands
    /// in data shards, map commands in the metadata group. Part of
    /// [`Proposal::new`], and checked again by apply (a log written by
    /// anything else is rejected there, identically on every replica).
    pub fn check_group(&self, group: GroupId) -> Result<(), CommandError> {
        let is_meta = matches!(self, Command::InitMap(_) | Command::UpdateMap { .. });
        if is_meta != (group == GroupId::Meta) {
            return Err(CommandError::WrongGroup {
                command: self.name(),
                group,
            });
        }
        Ok(())
    }

    /// Every rule a command must pass before it may be proposed: the group,
    /// the input limits, a valid map.
    pub fn validate(&self, group: GroupId) -> Result<(), CommandError> {
        self.check_group(group)?;
        let ttl = |ttl_ms: &Option<u64>| match ttl_ms {
            Some(ms) if *ms == 0 || *ms > limits::MAX_TTL_SECONDS.saturating_mul(1000) => {
                Err(CommandError::BadTtl(*ms))
            }
            _ => Ok(()),
        };
        match self {
            Command::Put { key, value, ttl_ms } => {
                limits::check_key(key)?;
                limits::check_value(value)?;
                ttl(ttl_ms)
            }
            Command::Delete { key } => Ok(limits::check_key(key)?),
            Command::Cas { key, value, ttl_ms, .. } => {
                limits::check_key(key)?;
                if let Some(v) = value {
                    limits::check_value(v)?;
                }
                ttl(ttl_ms)
            }
            Command::InitMap(map) | Command::UpdateMap { map, .. } => Ok(map.validate()?),
            Command::Expire { keys } => {
                if keys.is_empty() || keys.len() > MAX_EXPIRE_KEYS {
                    return Err(CommandError::BadExpireBatch(keys.len()));
                }
                keys.iter().try_for_each(|k| limits::check_key(k))?;
                Ok(())
            }
        }
    }
}

/// Why a command may not be proposed (or, for the group and map checks,
/// why apply rejected it).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("a {command} command does not belong in group {group}'s log")]
    WrongGroup { command: &'static str, group: GroupId },
    #[error(transparent)]
    Input(#[from] limits::InputError),
    #[error("ttl of {0} ms is outside 1 ms ..= {max} s", max = limits::MAX_TTL_SECONDS)]
    BadTtl(u64),
    #[error("invalid cluster map: {0}")]
    Map(#[from] MapError),
    #[error("an expire command names 1 to {MAX_EXPIRE_KEYS} keys, not {0}")]
    BadExpireBatch(usize),
}

/// A request that passed [`Command::validate`] for the group it is for: the
/// only thing the node proposes, whether the request came from a client, an
/// admin call or a peer.
#[derive(Debug, Clone)]
pub struct Proposal {
    group: GroupId,
    request: Request,
}

impl Proposal {
    pub fn new(group: GroupId, request: Request) -> Result<Self, CommandError> {
        request.command.validate(group)?;
        Ok(Proposal { group, request })
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn into_request(self) -> Request {
        self.request
    }
}

/// A command plus the leader's clock when it was proposed; TTLs are measured
/// from this timestamp so every replica computes the same expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub proposed_at_ms: u64,
    pub command: Command,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(REQUEST_FORMAT, self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode("request", REQUEST_FORMAT, bytes)
    }
}

/// What applying an entry answered. `Empty` for blank and membership entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Empty,
    Put {
        version: u64,
        prev_version: Option<u64>,
    },
    Delete {
        prev_version: Option<u64>,
    },
    /// `version` is the new version on success, the current one (if any) on failure.
    Cas {
        succeeded: bool,
        version: Option<u64>,
    },
    Map {
        applied: bool,
        version: u64,
        reason: Option<String>,
    },
    /// The entry was not a command for this group (or its map was invalid):
    /// nothing changed, on every replica alike.
    Rejected {
        reason: String,
    },
    /// How many of an [`Command::Expire`]'s keys were expired and deleted.
    Expired {
        deleted: u64,
    },
}

fn rejected(e: CommandError) -> Response {
    Response::Rejected { reason: e.to_string() }
}

/// What the state machine must do to the key's stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Write(ValueRecord),
    Delete,
    Nothing,
}

fn expiry(proposed_at_ms: u64, ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|t| proposed_at_ms.saturating_add(t))
}

/// Applies a key command at log `index` against the key's `current` record.
/// An expired record counts as absent. Total: a metadata command is
/// [`Response::Rejected`] and changes nothing.
pub fn apply_kv(req: &Request, index: u64, current: Option<&ValueRecord>) -> (Effect, Response) {
    if let Err(e) = req.command.check_group(GroupId::Shard(0)) {
        return (Effect::Nothing, rejected(e));
    }
    let now = req.proposed_at_ms;
    let live = current.filter(|r| r.is_live(now));
    let live_version = live.map(|r| r.version);
    match &req.command {
        Command::Put { value, ttl_ms, .. } => (
            Effect::Write(ValueRecord {
                version: index,
                expires_at_ms: expiry(now, *ttl_ms),
                value: value.clone(),
            }),
            Response::Put {
                version: index,
                prev_version: live_version,
            },
        ),
        Command::Delete { .. } => {
            let effect = if current.is_some() {
                Effect::Delete
            } else {
                Effect::Nothing
            };
            (
                effect,
                Response::Delete {
                    prev_version: live_version,
                },
            )
        }
        Command::Cas {
            expected,
            value,
            ttl_ms,
            ..
        } => {
            let matches = match expected {
                Expected::Absent => live.is_none(),
                Expected::Version(v) => live_version == Some(*v),
            };
            if !matches {
                return (
                    Effect::Nothing,
                    Response::Cas {
                        succeeded: false,
                        version: live_version,
                    },
                );
            }
            match value {
                Some(value) => (
                    Effect::Write(ValueRecord {
                        version: index,
                        expires_at_ms: expiry(now, *ttl_ms),
                        value: value.clone(),
                    }),
                    Response::Cas {
                        succeeded: true,
                        version: Some(index),
                    },
                ),
                None => {
                    let effect = if current.is_some() {
                        Effect::Delete
                    } else {
                        Effect::Nothing
                    };
                    (
                        effect,
                        Response::Cas {
                            succeeded: true,
                            version: None,
                        },
                    )
                }
            }
        }
        // Not a one-key command: the state machine applies `Expire` with
        // [`expires`]; the metadata ones belong elsewhere.
        Command::InitMap(_) | Command::UpdateMap { .. } | Command::Expire { .. } => (
            Effect::Nothing,
            rejected(CommandError::WrongGroup {
                command: req.command.name(),
                group: GroupId::Shard(0),
            }),
        ),
    }
}

/// Whether an [`Command::Expire`] deletes a key whose stored record is
/// `current`: only a record that has expired by the leader's clock at
/// proposal. A key written again since the sweep read it is live and stays.
pub fn expires(req: &Request, current: Option<&ValueRecord>) -> bool {
    current.is_some_and(|r| !r.is_live(req.proposed_at_ms))
}

/// Applies a metadata command to the current map; returns the map to store
/// (if it changes) and the answer. Total: a key command or an invalid map
/// is rejected and changes nothing.
pub fn apply_map(cmd: &Command, current: Option<&ClusterMap>) -> (Option<ClusterMap>, Response) {
    if let Err(e) = cmd.check_group(GroupId::Meta) {
        return (None, rejected(e));
    }
    let reject = |version: u64, reason: String| {
        (
            None,
            Response::Map {
                applied: false,
                version,
                reason: Some(reason),
            },
        )
    };
    if let Command::InitMap(map) | Command::UpdateMap { map, .. } = cmd
        && let Err(e) = map.validate()
    {
        return reject(current.map_or(0, |c| c.version), CommandError::from(e).to_string());
    }
    match (cmd, current) {
        (Command::InitMap(map), None) => (
            Some(map.clone()),
            Response::Map {
                applied: true,
                version: map.version,
                reason: None,
            },
        ),
        (Command::InitMap(map), Some(cur)) if cur.cluster_id == map.cluster_id => {
            // A retried bootstrap: already done, nothing to change.
            (
                None,
                Response::Map {
                    applied: true,
                    version: cur.version,
                    reason: None,
                },
            )
        }
        (Command::InitMap(map), Some(cur)) => reject(
            cur.version,
            format!(
                "already bootstrapped as cluster {:?}, not {:?}",
                cur.cluster_id, map.cluster_id
            ),
        ),
        (Command::UpdateMap { .. }, None) => reject(0, "the cluster is not bootstrapped".into()),
        (Command::UpdateMap { expected_version, map }, Some(cur)) => {
            if cur.version != *expected_version {
                reject(
                    cur.version,
                    format!("map is at version {}, not {expected_version}", cur.version),
                )
            } else if map.version <= cur.version || map.cluster_id != cur.cluster_id {
                reject(
                    cur.version,
                    "a new map must keep the cluster id and raise the version".into(),
                )
            } else {
                (
                    Some(map.clone()),
                    Response::Map {
                        applied: true,
                        version: map.version,
                        reason: None,
                    },
                )
            }
        }
        (other, _) => (
            None,
            rejected(CommandError::WrongGroup {
                command: other.name(),
                group: GroupId::Meta,
            }),
        ),
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys may be large or binary: show their length, never their bytes.
        match &self.command {
            Command::Put { key, value, ttl_ms } => {
                write!(
                    f,
                    "put(key {} B, value {} B, ttl {:?} ms)",
                    key.len(),
                    value.len(),
                    ttl_ms
                )
            }
            Command::Delete { key } => write!(f, "delete(key {} B)", key.len()),
            Command::Cas { key, expected, .. } => {
                write!(f, "cas(key {} B, expected {expected:?})", key.len())
            }
            Command::InitMap(m) => write!(f, "init-map(cluster {}, version {})", m.cluster_id, m.version),
            Command::UpdateMap { expected_version, map } => {
                write!(f, "update-map({expected_version} -> {})", map.version)
            }
            Command::Expire { keys } => write!(f, "expire({} keys)", keys.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(command: Command) -> Request {
        Request {
            proposed_at_ms: 1_000,
            command,
        }
    }

    fn rec(version: u64, expires_at_ms: Option<u64>) -> ValueRecord {
        ValueRecord {
            version,
            expires_at_ms,
            value: b"old".to_vec(),
        }
    }

    #[test]
    fn request_round_trips() {
        let r = req(Command::Cas {
            key: b"k".to_vec(),
            expected: Expected::Version(3),
            value: None,
            ttl_ms: Some(5),
        });
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.command.key(), Some(b"k".as_slice()));
    }

    #[test]
    fn put_versions_are_log_indexes_and_ttl_starts_at_proposal() {
        let put = req(Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ttl_ms: Some(500),
        });
        let (effect, resp) = apply_kv(&put, 12, None);
        assert_eq!(
            effect,
            Effect::Write(ValueRecord {
                version: 12,
                expires_at_ms: Some(1_500),
                value: b"v".to_vec()
            })
        );
        assert_eq!(
            resp,
            Response::Put {
                version: 12,
                prev_version: None
            }
        );
        let (_, resp) = apply_kv(&put, 13, Some(&rec(12, None)));
        assert_eq!(
            resp,
            Response::Put {
                version: 13,
                prev_version: Some(12)
            }
        );
    }

    #[test]
    fn expired_values_count_as_absent() {
        let expired = rec(5, Some(1_000));
        let del = req(Command::Delete { key: b"k".to_vec() });
        // The stale record is still removed, but the answer says it was absent.
        assert_eq!(
            apply_kv(&del, 9, Some(&expired)),
            (Effect::Delete, Response::Delete { prev_version: None })
        );
        assert_eq!(
            apply_kv(&del, 9, None),
            (Effect::Nothing, Response::Delete { prev_version: None })
        );
        let cas = req(Command::Cas {
            key: b"k".to_vec(),
            expected: Expected::Absent,
            value: Some(b"n".to_vec()),
            ttl_ms: None,
        });
        let (effect, resp) = apply_kv(&cas, 9, Some(&expired));
        assert!(matches!(effect, Effect::Write(ValueRecord { version: 9, .. })));
        assert_eq!(
            resp,
            Response::Cas {
                succeeded: true,
                version: Some(9)
            }
        );
    }

    #[test]
    fn cas_checks_the_exact_version() {
        let cur = rec(5, None);
        let cas = |expected| {
            req(Command::Cas {
                key: b"k".to_vec(),
                expected,
                value: Some(b"n".to_vec()),
                ttl_ms: None,
            })
        };
        assert_eq!(
            apply_kv(&cas(Expected::Version(4)), 9, Some(&cur)),
            (
                Effect::Nothing,
                Response::Cas {
                    succeeded: false,
                    version: Some(5)
                }
            )
        );
        assert_eq!(
            apply_kv(&cas(Expected::Absent), 9, Some(&cur)),
            (
                Effect::Nothing,
                Response::Cas {
                    succeeded: false,
                    version: Some(5)
                }
            )
        );
        assert_eq!(
            apply_kv(&cas(Expected::Version(5)), 9, None),
            (
                Effect::Nothing,
                Response::Cas {
                    succeeded: false,
                    version: None
                }
            )
        );
        let (effect, resp) = apply_kv(&cas(Expected::Version(5)), 9, Some(&cur));
        assert!(matches!(effect, Effect::Write(ValueRecord { version: 9, .. })));
        assert_eq!(
            resp,
            Response::Cas {
                succeeded: true,
                version: Some(9)
            }
        );
        let delete_if = req(Command::Cas {
            key: b"k".to_vec(),
            expected: Expected::Version(5),
            value: None,
            ttl_ms: None,
        });
        assert_eq!(
            apply_kv(&delete_if, 9, Some(&cur)),
            (
                Effect::Delete,
                Response::Cas {
                    succeeded: true,
                    version: None
                }
            )
        );
    }

    fn map(cluster: &str, version: u64) -> ClusterMap {
        let nodes = BTreeMap::from([(
            1,
            crate::map::NodeAddr {
                host: "h".into(),
                client_port: 1,
                peer_port: 2,
                admin_port: 3,
            },
        )]);
        let mut m = ClusterMap::bootstrap(cluster.into(), nodes, 2, 1).unwrap();
        m.version = version;
        m
    }

    #[test]
    fn apply_rejects_commands_of_the_other_group_and_changes_nothing() {
        let put = req(Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ttl_ms: None,
        });
        let cur = map("a", 3);
        let (stored, resp) = apply_map(&put.command, Some(&cur));
        assert_eq!(stored, None);
        assert!(
            matches!(&resp, Response::Rejected { reason } if reason.contains("put")),
            "{resp:?}"
        );
        for meta in [
            Command::InitMap(map("a", 1)),
            Command::UpdateMap {
                expected_version: 1,
                map: map("a", 2),
            },
        ] {
            let (effect, resp) = apply_kv(&req(meta), 7, Some(&rec(5, None)));
            assert_eq!(effect, Effect::Nothing);
            assert!(matches!(resp, Response::Rejected { .. }), "{resp:?}");
        }
    }

    #[test]
    fn expire_deletes_only_records_expired_at_the_proposal() {
        let expire = Request {
            proposed_at_ms: 2_000,
            command: Command::Expire {
                keys: vec![b"k".to_vec()],
            },
        };
        assert!(expires(&expire, Some(&rec(5, Some(2_000)))));
        assert!(expires(&expire, Some(&rec(5, Some(1_500)))));
        assert!(
            !expires(&expire, Some(&rec(5, Some(2_001)))),
            "still live at the proposal"
        );
        assert!(!expires(&expire, Some(&rec(5, None))), "no ttl");
        assert!(!expires(&expire, None));
        assert!(Proposal::new(GroupId::Shard(0), expire.clone()).is_ok());
        assert!(Proposal::new(GroupId::Meta, expire).is_err());
        let empty = req(Command::Expire { keys: vec![] });
        assert_eq!(
            Proposal::new(GroupId::Shard(0), empty).unwrap_err(),
            CommandError::BadExpireBatch(0)
        );
        let huge = req(Command::Expire {
            keys: vec![b"k".to_vec(); MAX_EXPIRE_KEYS + 1],
        });
        assert!(Proposal::new(GroupId::Shard(0), huge).is_err());
    }

    #[test]
    fn apply_rejects_invalid_maps() {
        let cur = map("a", 3);
        let mut zero_shards = map("a", 4);
        zero_shards.shard_count = 0;
        zero_shards.shards.clear();
        let (stored, resp) = apply_map(
            &Command::UpdateMap {
                expected_version: 3,
                map: zero_shards.clone(),
            },
            Some(&cur),
        );
        assert_eq!(stored, None);
        assert!(
            matches!(
                resp,
                Response::Map {
                    applied: false,
                    version: 3,
                    ..
                }
            ),
            "{resp:?}"
        );
        let (stored, resp) = apply_map(&Command::InitMap(zero_shards), None);
        assert_eq!(stored, None);
        assert!(matches!(resp, Response::Map { applied: false, .. }), "{resp:?}");
    }

    #[test]
    fn proposals_are_validated_for_their_group_and_limits() {
        let put = |key: Vec<u8>, value: Vec<u8>, ttl_ms| req(Command::Put { key, value, ttl_ms });
        assert!(Proposal::new(GroupId::Shard(3), put(b"k".to_vec(), b"v".to_vec(), Some(1))).is_ok());
        assert!(matches!(
            Proposal::new(GroupId::Meta, put(b"k".to_vec(), b"v".to_vec(), None)),
            Err(CommandError::WrongGroup {
                command: "put",
                group: GroupId::Meta
            })
        ));
        assert!(matches!(
            Proposal::new(GroupId::Shard(0), req(Command::InitMap(map("a", 1)))),
            Err(CommandError::WrongGroup { .. })
        ));
        assert!(matches!(
            Proposal::new(GroupId::Shard(0), put(vec![1; limits::MAX_KEY_BYTES + 1], vec![], None)),
            Err(CommandError::Input(limits::InputError::KeyTooLarge { .. }))
        ));
        assert!(matches!(
            Proposal::new(
                GroupId::Shard(0),
                put(b"k".to_vec(), vec![0; limits::MAX_VALUE_BYTES + 1], None)
            ),
            Err(CommandError::Input(limits::InputError::ValueTooLarge { .. }))
        ));
        assert!(matches!(
            Proposal::new(GroupId::Shard(0), req(Command::Delete { key: vec![] })),
            Err(CommandError::Input(limits::InputError::EmptyKey))
        ));
        assert_eq!(
            Proposal::new(GroupId::Shard(0), put(b"k".to_vec(), vec![], Some(0))).unwrap_err(),
            CommandError::BadTtl(0)
        );
        let mut bad = map("a", 2);
        bad.shards.pop();
        assert!(matches!(
            Proposal::new(
                GroupId::Meta,
                req(Command::UpdateMap {
                    expected_version: 1,
                    map: bad
                })
            ),
            Err(CommandError::Map(MapError::ShardListMismatch { .. }))
        ));
    }

    #[test]
    fn map_init_is_idempotent_per_cluster() {
        let m = map("a", 1);
        let (stored, resp) = apply_map(&Command::InitMap(m.clone()), None);
        assert_eq!(stored, Some(m.clone()));
        assert_eq!(
            resp,
            Response::Map {
                applied: true,
                version: 1,
                reason: None
            }
        );
        let (stored, resp) = apply_map(&Command::InitMap(m.clone()), Some(&m));
        assert_eq!(
            (stored, resp),
            (
                None,
                Response::Map {
                    applied: true,
                    version: 1,
                    reason: None
                }
            )
        );
        let (stored, resp) = apply_map(&Command::InitMap(map("b", 1)), Some(&m));
        assert!(stored.is_none());
        assert!(matches!(resp, Response::Map { applied: false, .. }));
    }

    #[test]
    fn map_update_is_a_compare_and_set_on_version() {
        let cur = map("a", 3);
        let upd = |expected_version, next| Command::UpdateMap {
            expected_version,
            map: next,
        };
        let (stored, _) = apply_map(&upd(3, map("a", 4)), Some(&cur));
        assert_eq!(stored.unwrap().version, 4);
        let (stored, resp) = apply_map(&upd(2, map("a", 4)), Some(&cur));
        assert!(stored.is_none());
        assert!(matches!(
            resp,
            Response::Map {
                applied: false,
                version: 3,
                ..
            }
        ));
        assert!(apply_map(&upd(3, map("a", 3)), Some(&cur)).0.is_none());
        assert!(apply_map(&upd(3, map("b", 4)), Some(&cur)).0.is_none());
        assert!(apply_map(&upd(0, map("a", 1)), None).0.is_none());
    }
}
