//! The runner as a storage provisioner: StorageClass `raftkv-local` (the
//! default class) gets one directory per claim under `$STATE/volumes/`,
//! published as a hostPath PersistentVolume pre-bound to its claim; the
//! persistent-volume controller completes the binding. Released volumes of
//! the class (reclaim policy Delete) lose their directory and their PV.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

/// Name of the StorageClass the runner serves.
pub const STORAGE_CLASS: &str = "raftkv-local";
/// Provisioner name on the StorageClass and the PVs.
pub const PROVISIONER: &str = "raftkv.io/e2e-local";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The PV a pending claim of our class gets (None: not ours, or bound already).
pub fn pv_for_claim(pvc: &PersistentVolumeClaim, volumes_dir: &Path) -> Option<PersistentVolume> {
    let spec = pvc.spec.as_ref()?;
    let class = spec.storage_class_name.as_deref().or_else(|| {
        pvc.metadata
            .annotations
            .as_ref()?
            .get("volume.beta.kubernetes.io/storage-class")
            .map(String::as_str)
    });
    if class != Some(STORAGE_CLASS) || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return None;
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = pvc.metadata.uid.clone()?;
    let name = format!("pvc-{uid}");
    let size = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?.clone();
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": "Filesystem",
            "hostPath": {"path": volumes_dir.join(&name).display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace, "name": pvc.metadata.name, "uid": uid
            }
        }
    }))
    .ok()?;
    Some(pv)
}

/// Whether a PV is ours and released with reclaim policy Delete.
pub fn reclaimable(pv: &PersistentVolume) -> bool {
    let ours = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .map(String::as_str)
        == Some(PROVISIONER);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    ours && released && delete && pv.metadata.deletion_timestamp.is_none()
}

/// Creates (or updates) the default StorageClass.
pub async fn ensure_storage_class(client: &kube::Client) -> anyhow::Result<()> {
    let sc = StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".into(),
                "true".into(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&sc)?;
    v["apiVersion"] = json!("storage.k8s.io/v1");
    v["kind"] = json!("StorageClass");
    Api::<StorageClass>::all(client.clone())
        .patch(
            STORAGE_CLASS,
            &PatchParams::apply("raftkv-podrunner").force(),
            &Patch::Apply(v),
        )
        .await?;
    Ok(())
}

/// One provisioning pass: PVs for new claims, cleanup of released ones.
pub async fn step(client: &kube::Client, volumes_dir: &Path) -> anyhow::Result<()> {
    let pvcs = Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pvc in &pvcs {
        let Some(pv) = pv_for_claim(pvc, volumes_dir) else {
            continue;
        };
        let name = pv.metadata.name.clone().unwrap_or_default();
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                std::fs::create_dir_all(volumes_dir.join(&name))?;
                tracing::info!(pv = %name, claim = ?pvc.metadata.name, namespace = ?pvc.metadata.namespace, "provisioned");
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pv in pvs.list(&ListParams::default()).await? {
        if !reclaimable(&pv) {
            continue;
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        let dir = volumes_dir.join(&name);
        if dir.starts_with(volumes_dir) && dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(pv = %name, "released volume deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(class: Option<&str>, volume: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-db-0", "namespace": "ns", "uid": "abc"},
            "spec": {"storageClassName": class, "volumeName": volume, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Mi"}}}
        }))
        .unwrap()
    }

    #[test]
    fn claims_of_our_class_get_a_pre_bound_host_path_volume() {
        let pv = pv_for_claim(&pvc(Some(STORAGE_CLASS), None), Path::new("/s/volumes")).unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-abc"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.host_path.unwrap().path, "/s/volumes/pvc-abc");
        let cref = spec.claim_ref.unwrap();
        assert_eq!(
            (cref.namespace.as_deref(), cref.name.as_deref(), cref.uid.as_deref()),
            (Some("ns"), Some("data-db-0"), Some("abc"))
        );
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Mi");
        assert!(pv_for_claim(&pvc(Some("other"), None), Path::new("/s")).is_none());
        assert!(pv_for_claim(&pvc(None, None), Path::new("/s")).is_none());
        assert!(pv_for_claim(&pvc(Some(STORAGE_CLASS), Some("pv-1")), Path::new("/s")).is_none());
    }

    #[test]
    fn only_our_released_delete_volumes_are_reclaimed() {
        let mut pv = pv_for_claim(&pvc(Some(STORAGE_CLASS), None), Path::new("/s")).unwrap();
        assert!(!reclaimable(&pv));
        pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..Default::default()
        });
        assert!(reclaimable(&pv));
        pv.metadata.annotations = None;
        assert!(!reclaimable(&pv));
    }
}
