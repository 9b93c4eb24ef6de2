//! The image table: which local binary a container image stands for.
//!
//! Nothing pulls images here. A container's image is mapped to a binary on
//! this machine, in this order:
//!
//! 1. an exact `repository:tag` line in the table file (`$STATE/images`,
//!    lines `image=/path/to/binary`), so two tags can be two builds and an
//!    upgrade from one to the other can be tested;
//! 2. the built-in default of the repository, any tag: the binary of that
//!    name in `$RAFTKV_BIN_DIR`.
//!
//! | repository | binary |
//! |---|---|
//! | `raftkv/raftkv-node` | `raftkv-node` |
//! | `raftkv/raftkv-operator` | `raftkv-operator` |
//! | `raftkv/e2e-echo` | `raftkv-e2e-echo` (this crate's test binary) |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Built-in repository → binary name defaults.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("raftkv/raftkv-node", "raftkv-node"),
    ("raftkv/raftkv-operator", "raftkv-operator"),
    ("raftkv/e2e-echo", "raftkv-e2e-echo"),
];

/// A parsed image reference: registry prefixes of Docker Hub are dropped so
/// `docker.io/raftkv/raftkv-node:1` and `raftkv/raftkv-node:1` are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: String,
}

impl ImageRef {
    /// Parses `repo[:tag][@digest]`; the tag defaults to `latest` as in a runtime.
    pub fn parse(image: &str) -> ImageRef {
        let without_digest = image.split('@').next().unwrap_or(image);
        let mut repo = without_digest;
        let mut tag = "latest";
        // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
        if let Some(colon) = without_digest.rfind(':')
            && !without_digest[colon..].contains('/')
        {
            repo = &without_digest[..colon];
            tag = &without_digest[colon + 1..];
        }
        let repo = repo
            .strip_prefix("docker.io/library/")
            .or_else(|| repo.strip_prefix("docker.io/"))
            .or_else(|| repo.strip_prefix("index.docker.io/"))
            .unwrap_or(repo);
        ImageRef {
            repository: repo.to_string(),
            tag: tag.to_string(),
        }
    }

    /// `repository:tag`, the key of the table file.
    pub fn key(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// Exact `repository:tag` → binary entries from the table file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageTable {
    entries: BTreeMap<String, PathBuf>,
}

impl ImageTable {
    /// Parses the table file: `image=path` per line, `#` comments, blank lines.
    pub fn parse(text: &str) -> Result<ImageTable> {
        let mut entries = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((image, path)) = line.split_once('=') else {
                return Err(Error::BadImageTable {
                    line: i + 1,
                    text: raw.to_string(),
                });
            };
            let (image, path) = (image.trim(), path.trim());
            if image.is_empty() || path.is_empty() {
                return Err(Error::BadImageTable {
                    line: i + 1,
                    text: raw.to_string(),
                });
            }
            entries.insert(ImageRef::parse(image).key(), PathBuf::from(path));
        }
        Ok(ImageTable { entries })
    }

    /// Renders the table back to its file format.
    pub fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={}\n", v.display()))
            .collect()
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, image: &str, path: PathBuf) {
        self.entries.insert(ImageRef::parse(image).key(), path);
    }

    /// The binary an image stands for, without checking that it exists.
    pub fn lookup(&self, image: &str, bin_dir: &Path) -> Option<PathBuf> {
        let r = ImageRef::parse(image);
        if let Some(p) = self.entries.get(&r.key()) {
            return Some(p.clone());
        }
        DEFAULTS
            .iter()
            .find(|(repo, _)| *repo == r.repository)
            .map(|(_, bin)| bin_dir.join(bin))
    }
}

/// Resolves an image to an existing binary, or says why it cannot.
pub fn resolve(image: &str, table: &ImageTable, table_path: &Path, bin_dir: &Path) -> Result<PathBuf> {
    let path = table.lookup(image, bin_dir).ok_or_else(|| Error::UnknownImage {
        image: image.to_string(),
        table: table_path.to_path_buf(),
    })?;
    if !path.is_file() {
        return Err(Error::MissingBinary {
            image: image.to_string(),
            path,
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            ImageRef::parse("raftkv/raftkv-node:0.2.0"),
            ImageRef {
                repository: "raftkv/raftkv-node".into(),
                tag: "0.2.0".into()
            }
        );
        assert_eq!(ImageRef::parse("docker.io/raftkv/raftkv-node").tag, "latest");
        assert_eq!(
            ImageRef::parse("docker.io/raftkv/raftkv-node").repository,
            "raftkv/raftkv-node"
        );
        let r = ImageRef::parse("localhost:5000/x/y:3@sha256:abc");
        assert_eq!((r.repository.as_str(), r.tag.as_str()), ("localhost:5000/x/y", "3"));
        assert_eq!(ImageRef::parse("localhost:5000/x/y").tag, "latest");
    }

    #[test]
    fn table_entry_wins_over_default_and_tags_differ() {
        let t = ImageTable::parse("# upgrades\nraftkv/raftkv-node:0.1.0 = /old/raftkv-node\n\n").unwrap();
        let bin = Path::new("/bin-dir");
        assert_eq!(
            t.lookup("raftkv/raftkv-node:0.1.0", bin),
            Some(PathBuf::from("/old/raftkv-node"))
        );
        assert_eq!(
            t.lookup("raftkv/raftkv-node:0.2.0", bin),
            Some(PathBuf::from("/bin-dir/raftkv-node"))
        );
        assert_eq!(
            t.lookup("raftkv/raftkv-operator:x", bin),
            Some(PathBuf::from("/bin-dir/raftkv-operator"))
        );
        assert_eq!(
            t.lookup("raftkv/e2e-echo:1", bin),
            Some(PathBuf::from("/bin-dir/raftkv-e2e-echo"))
        );
        assert_eq!(t.lookup("nginx:1.27", bin), None);
    }

    #[test]
    fn bad_table_lines_are_reported_with_their_number() {
        let err = ImageTable::parse("a=b\nnot a mapping\n").unwrap_err();
        assert!(matches!(err, Error::BadImageTable { line: 2, .. }), "{err}");
        assert!(ImageTable::parse("=x").is_err());
    }

    #[test]
    fn render_round_trips() {
        let mut t = ImageTable::default();
        t.insert("raftkv/raftkv-node:9", PathBuf::from("/p"));
        assert_eq!(ImageTable::parse(&t.render()).unwrap(), t);
    }

    #[test]
    fn resolve_reports_unknown_and_missing() {
        let t = ImageTable::default();
        let dir = tempfile::tempdir().unwrap();
        let e = resolve("nginx", &t, Path::new("/t"), dir.path()).unwrap_err();
        assert!(matches!(e, Error::UnknownImage { .. }));
        let e = resolve("raftkv/raftkv-node:1", &t, Path::new("/t"), dir.path()).unwrap_err();
        assert!(matches!(e, Error::MissingBinary { .. }));
        std::fs::write(dir.path().join("raftkv-node"), b"").unwrap();
        assert_eq!(
            resolve("raftkv/raftkv-node:1", &t, Path::new("/t"), dir.path()).unwrap(),
            dir.path().join("raftkv-node")
        );
    }
}
