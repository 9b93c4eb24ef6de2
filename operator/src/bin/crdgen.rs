//! Prints the `KVCluster` CustomResourceDefinition as YAML (`make crds`
//! writes it to `crds/raftkv.io_kvclusters.yaml`).
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    print!("{}", raftkv_operator::crd::crd_yaml()?);
    Ok(())
}
