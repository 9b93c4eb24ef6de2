//! The runner's per-pod record, `$STATE/runner/pods/<namespace>/<pod>.json`:
//! what the harness needs to inject faults (pids, netns, interface, IP).
//! Written by the runner whenever it changes, removed when the pod is gone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One running (or restarting) pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Network index: netns `rkvS-p<index>`, router interface `p<index>`.
    pub index: u16,
    pub ip: String,
    pub netns: String,
    pub containers: Vec<ContainerRecord>,
    /// Directory with this pod's container log files.
    pub log_dir: PathBuf,
}

/// One container's current process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    /// Pid of the current process (also its process group), if running.
    pub pid: Option<i32>,
    pub log: PathBuf,
}

/// Where the record of a pod lives.
pub fn record_path(state: &Path, namespace: &str, name: &str) -> PathBuf {
    state
        .join("runner")
        .join("pods")
        .join(namespace)
        .join(format!("{name}.json"))
}

/// Where a pod's container logs go.
pub fn log_dir(state: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    state.join("pod-logs").join(namespace).join(format!("{name}_{uid}"))
}

/// Reads a pod's record.
pub fn read(state: &Path, namespace: &str, name: &str) -> std::io::Result<PodRecord> {
    let text = std::fs::read_to_string(record_path(state, namespace, name))?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes a pod's record atomically (rename), so readers never see half of it.
pub fn write(state: &Path, rec: &PodRecord) -> std::io::Result<()> {
    let path = record_path(state, &rec.namespace, &rec.name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(rec).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Removes a pod's record if it still belongs to `uid` (a new pod of the
/// same name may already have written its own).
pub fn remove(state: &Path, namespace: &str, name: &str, uid: &str) {
    if read(state, namespace, name).map(|r| r.uid == uid).unwrap_or(false) {
        let _ = std::fs::remove_file(record_path(state, namespace, name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_remove_only_own_uid() {
        let dir = tempfile::tempdir().unwrap();
        let rec = PodRecord {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "db-0".into(),
            index: 2,
            ip: "10.200.0.2".into(),
            netns: "rkv0-p2".into(),
            containers: vec![ContainerRecord {
                name: "c".into(),
                pid: Some(42),
                log: "/x".into(),
            }],
            log_dir: "/l".into(),
        };
        write(dir.path(), &rec).unwrap();
        assert_eq!(read(dir.path(), "ns", "db-0").unwrap(), rec);
        remove(dir.path(), "ns", "db-0", "other-uid");
        assert!(read(dir.path(), "ns", "db-0").is_ok());
        remove(dir.path(), "ns", "db-0", "u1");
        assert!(read(dir.path(), "ns", "db-0").is_err());
    }
}
