//! A node's Raft identity, created with its data directory.
//!
//! An empty data directory always gets a new random id: reusing an old id
//! without the old log would let the node vote without what it promised,
//! which breaks Raft's safety. A directory that has data but no identity file
//! is refused rather than guessed at.

use std::io;
use std::path::Path;

use raftkv_core::NodeId;
use serde::{Deserialize, Serialize};

const FILE: &str = "IDENTITY";
const FORMAT: u8 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub node_id: NodeId,
    /// Unix seconds when the data directory was created.
    pub created_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data directory {0} has data but no {FILE} file; refusing to guess this node's identity")]
    MissingIdentity(String),
    #[error("identity file {path} is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("i/o on data directory: {0}")]
    Io(#[from] io::Error),
}

/// Loads the identity in `dir`, or creates one if the directory is empty.
pub fn load_or_create(dir: &Path) -> Result<(Identity, bool), IdentityError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE);
    if path.exists() {
        let bytes = std::fs::read(&path)?;
        let id: Identity =
            raftkv_core::codec::decode("identity", FORMAT, &bytes).map_err(|e| IdentityError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if id.node_id == 0 || id.node_id > raftkv_core::MAX_NODE_ID {
            return Err(IdentityError::Corrupt {
                path: path.display().to_string(),
                reason: format!("node id {} is outside 1..={}", id.node_id, raftkv_core::MAX_NODE_ID),
            });
        }
        return Ok((id, false));
    }
    // Anything but our own leftovers means this is not a fresh directory.
    let foreign = std::fs::read_dir(dir)?
        .flatten()
        .any(|e| e.file_name() != "lost+found" && !e.file_name().to_string_lossy().starts_with(".tmp"));
    if foreign {
        return Err(IdentityError::MissingIdentity(dir.display().to_string()));
    }
    let id = Identity {
        // Never 0 (reserved); 63 bits so it prints the same signed or unsigned.
        node_id: rand::random_range(1..=raftkv_core::MAX_NODE_ID),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let tmp = dir.join(".tmp-identity");
    std::fs::write(&tmp, raftkv_core::codec::encode(FORMAT, &id))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok((id, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_gets_a_new_identity_that_persists() {
        let d = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(d.path()).unwrap();
        assert!(created);
        assert_ne!(a.node_id, 0);
        let (b, created) = load_or_create(d.path()).unwrap();
        assert!(!created);
        assert_eq!(a, b);
    }

    #[test]
    fn wiped_dir_never_reuses_the_old_identity() {
        let d = tempfile::tempdir().unwrap();
        let (a, _) = load_or_create(d.path()).unwrap();
        std::fs::remove_dir_all(d.path()).unwrap();
        let (b, created) = load_or_create(d.path()).unwrap();
        assert!(created);
        assert_ne!(a.node_id, b.node_id);
    }

    #[test]
    fn data_without_identity_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("db")).unwrap();
        assert!(matches!(
            load_or_create(d.path()),
            Err(IdentityError::MissingIdentity(_))
        ));
        std::fs::write(d.path().join(FILE), b"\x09junk").unwrap();
        assert!(matches!(load_or_create(d.path()), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn an_identity_file_naming_an_id_in_the_replica_id_range_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity {
            node_id: raftkv_core::map::FIRST_REPLICA_ID,
            created_at: 1,
        };
        std::fs::write(d.path().join(FILE), raftkv_core::codec::encode(FORMAT, &id)).unwrap();
        assert!(matches!(load_or_create(d.path()), Err(IdentityError::Corrupt { .. })));
    }
}
