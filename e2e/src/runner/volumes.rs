//! A pod's volumes as host directories, prepared once per pod before its
//! containers start: emptyDir, configMap, secret, downwardAPI and projected
//! volumes (the service-account token comes from the TokenRequest API, bound
//! to the pod) are files under the pod's directory; persistentVolumeClaim
//! and hostPath volumes are the PV's / host's directory itself.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
    Volume,
};
use kube::api::{Api, PostParams};

use crate::env::{EnvSources, field_value};

/// Writes a file atomically and applies `mode`.
fn write_file(dir: &Path, rel: &str, data: &[u8], mode: i32) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if !path.starts_with(dir) || rel.split('/').any(|c| c == "..") {
        bail!("volume item path {rel:?} escapes the volume");
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("raftkv-tmp");
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode as u32 & 0o777))?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Key → data of a ConfigMap or Secret, filtered and renamed by `items`.
fn project(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
) -> anyhow::Result<Vec<(String, Vec<u8>, i32)>> {
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, default_mode)).collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let v = data.get(&i.key).with_context(|| format!("key {:?} not found", i.key))?;
                Ok((i.path.clone(), v.clone(), i.mode.unwrap_or(default_mode)))
            })
            .collect(),
    }
}

fn cm_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = cm
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        d.insert(k, v.0);
    }
    d
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        d.insert(k, v.into_bytes());
    }
    d
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?)
}

fn downward_items(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
) -> anyhow::Result<Vec<(String, Vec<u8>, i32)>> {
    let src = EnvSources::default();
    items
        .iter()
        .map(|i| {
            let v = match &i.field_ref {
                Some(f) if f.field_path == "metadata.labels" || f.field_path == "metadata.annotations" => {
                    let m = if f.field_path == "metadata.labels" {
                        &pod.metadata.labels
                    } else {
                        &pod.metadata.annotations
                    };
                    m.clone()
                        .unwrap_or_default()
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}\n"))
                        .collect::<String>()
                }
                Some(f) => field_value(pod, &f.field_path, &src)?,
                None => bail!("downwardAPI item {:?}: only fieldRef is supported", i.path),
            };
            Ok((i.path.clone(), v.into_bytes(), i.mode.unwrap_or(mode)))
        })
        .collect()
}

async fn token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> anyhow::Result<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let resp = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for service account {ns}/{sa}"))?;
    resp.status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

/// Prepares every volume of `pod`; returns volume name → host directory.
/// Fails (to be retried) while a claim is unbound or an object is missing.
pub async fn prepare(client: &kube::Client, pod: &Pod, pod_dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut out = BTreeMap::new();
    let volumes: Vec<Volume> = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    for v in volumes {
        let dir = pod_dir.join("volumes").join(&v.name);
        let mut files: Vec<(String, Vec<u8>, i32)> = Vec::new();
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
        } else if let Some(c) = &v.config_map {
            match get_opt(&cms, &c.name).await? {
                Some(cm) => files = project(cm_data(&cm), c.items.as_ref(), c.default_mode.unwrap_or(0o644))?,
                None if c.optional.unwrap_or(false) => {}
                None => bail!("volume {:?}: ConfigMap {:?} not found", v.name, c.name),
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match get_opt(&secrets, &name).await? {
                Some(sec) => files = project(secret_data(&sec), s.items.as_ref(), s.default_mode.unwrap_or(0o644))?,
                None if s.optional.unwrap_or(false) => {}
                None => bail!("volume {:?}: Secret {name:?} not found", v.name),
            }
        } else if let Some(d) = &v.downward_api {
            files = downward_items(
                pod,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode.unwrap_or(0o644),
            )?;
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.unwrap_or(0o644);
            for src in p.sources.clone().unwrap_or_default() {
                if let Some(t) = &src.service_account_token {
                    let tok = token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                    files.push((t.path.clone(), tok.into_bytes(), mode));
                }
                if let Some(c) = &src.config_map {
                    match get_opt(&cms, &c.name).await? {
                        Some(cm) => files.extend(project(cm_data(&cm), c.items.as_ref(), mode)?),
                        None if c.optional.unwrap_or(false) => {}
                        None => bail!("volume {:?}: ConfigMap {:?} not found", v.name, c.name),
                    }
                }
                if let Some(s) = &src.secret {
                    match get_opt(&secrets, &s.name).await? {
                        Some(sec) => files.extend(project(secret_data(&sec), s.items.as_ref(), mode)?),
                        None if s.optional.unwrap_or(false) => {}
                        None => bail!("volume {:?}: Secret {:?} not found", v.name, s.name),
                    }
                }
                if let Some(d) = &src.downward_api {
                    files.extend(downward_items(pod, d.items.as_deref().unwrap_or_default(), mode)?);
                }
            }
        } else if let Some(c) = &v.persistent_volume_claim {
            let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                .get_opt(&c.claim_name)
                .await?
                .with_context(|| format!("PersistentVolumeClaim {:?} not found", c.claim_name))?;
            let pv_name = pvc.spec.and_then(|s| s.volume_name).filter(|n| !n.is_empty());
            let Some(pv_name) = pv_name else {
                bail!("PersistentVolumeClaim {:?} is not bound yet", c.claim_name)
            };
            let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
            let spec = pv.spec.unwrap_or_default();
            let path = spec
                .host_path
                .map(|h| h.path)
                .or(spec.local.map(|l| l.path))
                .with_context(|| format!("PersistentVolume {pv_name} is neither hostPath nor local"))?;
            std::fs::create_dir_all(&path)?;
            out.insert(v.name.clone(), PathBuf::from(path));
            continue;
        } else if let Some(h) = &v.host_path {
            if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&h.path)?;
            }
            out.insert(v.name.clone(), PathBuf::from(&h.path));
            continue;
        } else {
            bail!(crate::error::Error::UnsupportedVolume(v.name.clone()));
        }
        std::fs::create_dir_all(&dir)?;
        for (rel, data, mode) in files {
            write_file(&dir, &rel, &data, mode)?;
        }
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_select_and_rename_keys() {
        let data: BTreeMap<String, Vec<u8>> =
            [("a".to_string(), b"1".to_vec()), ("b".to_string(), b"2".to_vec())].into();
        let all = project(data.clone(), None, 0o644).unwrap();
        assert_eq!(all.len(), 2);
        let items = vec![KeyToPath {
            key: "b".into(),
            path: "sub/bee".into(),
            mode: Some(0o600),
        }];
        assert_eq!(
            project(data.clone(), Some(&items), 0o644).unwrap(),
            vec![("sub/bee".into(), b"2".to_vec(), 0o600)]
        );
        let missing = vec![KeyToPath {
            key: "z".into(),
            path: "z".into(),
            mode: None,
        }];
        assert!(project(data, Some(&missing), 0o644).is_err());
    }

    #[test]
    fn item_paths_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_file(dir.path(), "../x", b"", 0o644).is_err());
        write_file(dir.path(), "a/b", b"hi", 0o600).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"hi");
    }
}
