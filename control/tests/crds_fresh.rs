//! `deploy/crds/` and `deploy/cilium-crds/` are exactly what the Rust types render: a change
//! of a type without regenerating the files fails here, naming the command to run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vireo_control::crd::{render_all, render_cilium, CrdFile};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn check(dir: &str, files: &[CrdFile], command: &str) {
    let dir_path = deploy().join(dir);
    let mut stale = Vec::new();
    for f in files {
        let path = dir_path.join(&f.name);
        match std::fs::read_to_string(&path) {
            Ok(text) if text == f.yaml => {}
            Ok(text) => {
                let line = text
                    .lines()
                    .zip(f.yaml.lines())
                    .position(|(a, b)| a != b)
                    .map_or_else(
                        || text.lines().count().min(f.yaml.lines().count()) + 1,
                        |i| i + 1,
                    );
                stale.push(format!("deploy/{dir}/{} differs from line {line}", f.name));
            }
            Err(e) => stale.push(format!("deploy/{dir}/{}: {e}", f.name)),
        }
    }
    let want: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    for entry in std::fs::read_dir(&dir_path).expect("the directory exists") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !want.contains(name.as_str()) {
            stale.push(format!(
                "deploy/{dir}/{name} is not rendered by any type: delete it"
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/{dir} is stale; regenerate it with `cargo run -p vireo -- {command}`:\n  {}",
        stale.join("\n  ")
    );
}

#[test]
fn deploy_crds_are_fresh() {
    let files = render_all().expect("renders");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vireo.io_vireoendpoints.yaml",
            "vireo.io_vireoidentities.yaml",
            "vireo.io_vireonodeconfigs.yaml",
            "kustomization.yaml"
        ]
    );
    check("crds", &files, "crds --out deploy/crds");
}

#[test]
fn deploy_cilium_crds_are_fresh() {
    let files = render_cilium().expect("renders");
    check(
        "cilium-crds",
        &files,
        "crds --cilium --out deploy/cilium-crds",
    );
}

/// Rendering twice gives the same text (no map order leaks into the files).
#[test]
fn rendering_is_deterministic() {
    assert_eq!(render_all().unwrap(), render_all().unwrap());
    assert_eq!(render_cilium().unwrap(), render_cilium().unwrap());
}
