//! This node's settings from the `VireoNodeConfig`s a source delivers (the manifest directory
//! and the Kubernetes source alike: they arrive in [`Manifests::others`]), and the `Valid`
//! condition each config should show. The rules are [`crate::crd::nodeconfig`]'s; this module
//! finds the objects, reads them, tells when the result may have changed
//! ([`NodeConfigWatch`]), and keeps the last good settings for the agent ([`NodeConfig`]):
//!
//! - no `VireoNodeConfig` at all: the configuration file rules, as without a cluster;
//! - usable configs: the file with their settings written over it
//!   ([`EffectiveSettings::apply_to`]), checked with [`Config::validate`];
//! - configs that cannot be used (invalid, none giving the interfaces, or a result the file's
//!   checks refuse): nothing changes, the last good settings stay, and the error is logged
//!   once and shown in [`NodeConfig::status`].

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{json, Value};

use crate::config::Config;
use crate::crd::nodeconfig::CONDITION_VALID;
use crate::crd::settings::InvalidConfig;
use crate::crd::{
    effective_settings, validate, EffectiveError, EffectiveSettings, FieldError, VireoNodeConfig,
    API_VERSION,
};
use crate::source::Manifests;

/// The kind of the objects read.
pub const KIND: &str = "VireoNodeConfig";

/// What the configs say for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSettings {
    /// No `VireoNodeConfig` exists: the configuration file rules.
    NoConfigs,
    /// These settings apply.
    Settings(EffectiveSettings),
    /// The configs cannot be used (invalid, or none gives the interfaces): the agent keeps
    /// its last good settings.
    Unusable(EffectiveError),
}

/// A config's name (empty when it has none).
fn name_of(v: &serde_yaml_ng::Value) -> String {
    v.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml_ng::Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Reads one object as a `VireoNodeConfig`; an object that does not fit the type is one
/// error naming the field.
pub fn read(v: &serde_yaml_ng::Value) -> Result<VireoNodeConfig, FieldError> {
    serde_path_to_error::deserialize::<_, VireoNodeConfig>(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let msg = msg.lines().next().unwrap_or("").to_string();
        FieldError::new(if path == "." { "" } else { &path }, msg)
    })
}

/// [`read`] then [`validate`]: every error of the object, as its `Valid` condition shows them.
pub fn check(v: &serde_yaml_ng::Value) -> Result<(), Vec<FieldError>> {
    validate(&read(v).map_err(|e| vec![e])?)
}

/// The `VireoNodeConfig` objects of `m` (of the served version), as written.
pub fn objects(m: &Manifests) -> impl Iterator<Item = &serde_yaml_ng::Value> {
    m.others
        .iter()
        .filter(|o| o.kind == KIND && o.api_version == API_VERSION)
        .map(|o| &o.value)
}

/// This node's settings from the configs of `m` and the node's labels.
pub fn settings(node_labels: &BTreeMap<String, String>, m: &Manifests) -> NodeSettings {
    let mut configs = Vec::new();
    let mut unreadable = Vec::new();
    for v in objects(m) {
        match read(v) {
            Ok(c) => configs.push(c),
            Err(e) => unreadable.push(InvalidConfig {
                name: name_of(v),
                errors: vec![e],
            }),
        }
    }
    if !unreadable.is_empty() {
        unreadable.sort_by(|a, b| a.name.cmp(&b.name));
        return NodeSettings::Unusable(EffectiveError::Invalid(unreadable));
    }
    if configs.is_empty() {
        return NodeSettings::NoConfigs;
    }
    match effective_settings(node_labels, &configs) {
        Ok(s) => NodeSettings::Settings(s),
        Err(e) => NodeSettings::Unusable(e),
    }
}

/// The labels of node `node` in `m` (none when the source does not name it).
pub fn node_labels(node: &str, m: &Manifests) -> BTreeMap<String, String> {
    m.nodes
        .get(node)
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default()
}

/// What the settings were computed from: the node's labels and every config's name and spec
/// (not their status, which the agents themselves write).
#[derive(Debug, Clone, PartialEq)]
struct Input {
    labels: BTreeMap<String, String>,
    configs: Vec<(String, Option<serde_yaml_ng::Value>)>,
}

/// Computes this node's settings again only when what they depend on changed.
#[derive(Debug, Default)]
pub struct NodeConfigWatch {
    last: Option<Input>,
}

impl NodeConfigWatch {
    /// A watch that has seen nothing yet (its first [`NodeConfigWatch::update`] answers).
    pub fn new() -> NodeConfigWatch {
        NodeConfigWatch::default()
    }

    /// The settings for node `node` from `m`, when the node's labels or the configs' specs
    /// changed since the last call (`None` otherwise).
    pub fn update(&mut self, node: &str, m: &Manifests) -> Option<NodeSettings> {
        let labels = node_labels(node, m);
        let mut configs: Vec<(String, Option<serde_yaml_ng::Value>)> = objects(m)
            .map(|v| (name_of(v), v.get("spec").cloned()))
            .collect();
        configs.sort_by(|a, b| a.0.cmp(&b.0));
        let input = Input { labels, configs };
        if self.last.as_ref() == Some(&input) {
            return None;
        }
        let out = settings(&input.labels, m);
        self.last = Some(input);
        Some(out)
    }
}

/// The node's `VireoNodeConfig` settings as the agent holds them.
#[derive(Debug, Default)]
pub struct NodeConfig {
    watch: NodeConfigWatch,
    /// The last good settings (`None`: no config, the file rules).
    good: Option<EffectiveSettings>,
    /// Why the configs seen last could not be used.
    error: Option<String>,
    /// The fields that differ from the running configuration and need a restart.
    pub needs_restart: Vec<&'static str>,
}

impl NodeConfig {
    /// Takes in the source's objects: the configuration to apply (the file `file` with the
    /// settings for node `node`) when it changed. Unusable configs keep the last good settings
    /// (`None` then), and their error is logged when it is new.
    pub fn observe(&mut self, node: &str, m: &Manifests, file: &Config) -> Option<Config> {
        let settings = self.watch.update(node, m)?;
        let (good, result) = match settings {
            NodeSettings::NoConfigs => (None, Ok(file.clone())),
            NodeSettings::Settings(s) => {
                let r = with_settings(file, Some(&s));
                (Some(s), r)
            }
            NodeSettings::Unusable(e) => (None, Err(e.to_string())),
        };
        match result {
            Ok(cfg) => {
                if self.error.take().is_some() || good != self.good {
                    tracing::info!(
                        configs = ?good.as_ref().map(|g| &g.applied),
                        "VireoNodeConfig settings in force"
                    );
                }
                self.good = good;
                Some(cfg)
            }
            Err(e) => {
                if self.error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        kept = ?self.good.as_ref().map(|g| &g.applied),
                        "VireoNodeConfig not applied, the last good settings stay: {e}"
                    );
                }
                self.error = Some(e);
                None
            }
        }
    }

    /// The configuration in force for the file `file` (after a reload): the file with the
    /// last good settings.
    pub fn effective(&self, file: &Config) -> Result<Config, String> {
        with_settings(file, self.good.as_ref())
    }

    /// `vireo status`'s `node_config`: the configs applied (in layering order), where the
    /// configuration comes from, the error of the configs seen last, and the fields that need a
    /// restart.
    pub fn status(&self) -> Value {
        json!({
            "applied": self.good.as_ref().map(|g| g.applied.clone()).unwrap_or_default(),
            "from": if self.good.is_some() { "VireoNodeConfig" } else { "file" },
            "error": self.error,
            "needs_restart": self.needs_restart,
        })
    }
}

/// `file` with `settings` written over it, checked.
fn with_settings(file: &Config, settings: Option<&EffectiveSettings>) -> Result<Config, String> {
    let mut cfg = file.clone();
    if let Some(s) = settings {
        s.apply_to(&mut cfg);
    }
    cfg.validate(Path::new("VireoNodeConfig"))
        .map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The `Valid` condition a config shows now, if any.
pub fn current_condition(v: &serde_json::Value) -> Option<Condition> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(serde_json::Value::as_str) == Some(CONDITION_VALID))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
}

/// Whether two `Valid` conditions say the same (their transition times aside).
pub fn same_condition(a: &Condition, b: &Condition) -> bool {
    a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_text;

    fn manifests(text: &str) -> Manifests {
        let mut m = Manifests::default();
        load_text(&mut m, text, Path::new("t.yaml"));
        m
    }

    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {zone: a}}\n";

    const FILE: &str =
        "node: n1\nsource: {manifests: /tmp}\ninterfaces: [{name: eth0, role: uplink}]\n";

    fn file() -> Config {
        Config::parse_with_node_env(FILE, Path::new("f.yaml"), None).unwrap()
    }

    fn with_configs(configs: &[&str]) -> Manifests {
        let mut text =
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {zone: a}}\n".to_string();
        for (i, spec) in configs.iter().enumerate() {
            text.push_str(&format!(
                "---\napiVersion: vireo.io/v1alpha1\nkind: VireoNodeConfig\nmetadata: {{name: c{i}}}\nspec: {spec}\n"
            ));
        }
        let m = manifests(&text);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        m
    }

    const GOOD: &str = "{interfaces: [{name: ens5, role: uplink}], maglev: {tableSize: 251, hashSeed: 9}, vxlan: {df: true}}";
    const BAD: &str = "{interfaces: [{name: ens5, role: uplink}], maglev: {tableSize: 1000}}";

    #[test]
    fn valid_settings_apply_and_invalid_ones_keep_the_last_good() {
        let f = file();
        let mut nc = NodeConfig::default();
        assert_eq!(nc.status()["from"], "file");

        // A valid config: the file with its settings.
        let cfg = nc
            .observe("n1", &with_configs(&[GOOD]), &f)
            .expect("applied");
        assert_eq!(cfg.interfaces[0].name, "ens5");
        assert_eq!(cfg.services.maglev_table_size, 251);
        assert_eq!(cfg.services.hash_seed, 9);
        assert!(cfg.vxlan_df);
        assert_eq!(
            cfg.node.as_deref(),
            Some("n1"),
            "what the configs do not hold stays"
        );
        assert_eq!(nc.status()["applied"], json!(["c0"]));
        assert_eq!(nc.status()["error"], Value::Null);
        assert!(
            nc.observe("n1", &with_configs(&[GOOD]), &f).is_none(),
            "no change"
        );

        // Invalid: nothing to apply, the error shown, the last good settings kept.
        assert!(nc.observe("n1", &with_configs(&[BAD]), &f).is_none());
        let st = nc.status();
        assert!(
            st["error"]
                .as_str()
                .unwrap()
                .contains("c0: spec.maglev.tableSize: 1000 is not prime"),
            "{st}"
        );
        assert_eq!(st["applied"], json!(["c0"]), "{st}");
        assert_eq!(nc.effective(&f).unwrap().services.maglev_table_size, 251);

        // No interfaces anywhere: kept too.
        assert!(nc
            .observe("n1", &with_configs(&["{workers: [{cores: []}]}"]), &f)
            .is_none());
        assert!(nc.status()["error"]
            .as_str()
            .unwrap()
            .contains("sets spec.interfaces"));

        // A result the file's checks refuse (a core this machine lacks): kept.
        let many = "{interfaces: [{name: ens5, role: uplink}], workers: [{cores: [100000]}]}";
        assert!(nc.observe("n1", &with_configs(&[many]), &f).is_none());
        assert!(nc.status()["error"]
            .as_str()
            .unwrap()
            .contains("workers[0].cores"));

        // Fixed: applied, the error gone.
        let cfg = nc
            .observe("n1", &with_configs(&[GOOD]), &f)
            .expect("applied again");
        assert_eq!(cfg.services.maglev_table_size, 251);
        assert_eq!(nc.status()["error"], Value::Null);

        // Every config deleted: the file rules again.
        let cfg = nc.observe("n1", &with_configs(&[]), &f).expect("the file");
        assert_eq!(cfg, f);
        assert_eq!(nc.status()["from"], "file");
        assert_eq!(nc.effective(&f).unwrap(), f);
    }

    #[test]
    fn no_configs_leave_the_file_in_charge() {
        let m = manifests(NODE);
        assert_eq!(
            settings(&node_labels("n1", &m), &m),
            NodeSettings::NoConfigs
        );
    }

    #[test]
    fn configs_layer_with_the_nodes_labels_and_are_read_again_only_on_change() {
        let text = format!(
            "{NODE}---\napiVersion: vireo.io/v1alpha1\nkind: VireoNodeConfig\nmetadata: {{name: default}}\nspec: {{interfaces: [{{name: eth0, role: uplink}}]}}\n---\napiVersion: vireo.io/v1alpha1\nkind: VireoNodeConfig\nmetadata: {{name: zone-a}}\nspec: {{nodeSelector: {{matchLabels: {{zone: a}}}}, xdp: {{busyPoll: true}}}}\n"
        );
        let mut m = manifests(&text);
        let mut w = NodeConfigWatch::new();
        let NodeSettings::Settings(s) = w.update("n1", &m).unwrap() else {
            panic!("settings expected");
        };
        assert_eq!(s.applied, ["default", "zone-a"]);
        assert!(s.busy_poll);
        assert!(w.update("n1", &m).is_none(), "nothing changed");
        // A status written changes nothing.
        let mut o = m.others[0].value.clone();
        o["status"] = serde_yaml_ng::from_str("{conditions: []}").unwrap();
        m.others[0].value = o;
        assert!(w.update("n1", &m).is_none(), "status only");
        // Another node: only the default.
        let NodeSettings::Settings(s) = w.update("n2", &m).unwrap() else {
            panic!("settings expected");
        };
        assert_eq!(s.applied, ["default"]);
    }

    #[test]
    fn an_object_that_does_not_fit_the_type_is_invalid() {
        let text = "apiVersion: vireo.io/v1alpha1\nkind: VireoNodeConfig\nmetadata: {name: bad}\nspec: {priority: high}\n";
        let m = manifests(text);
        let NodeSettings::Unusable(e) = settings(&BTreeMap::new(), &m) else {
            panic!("unusable expected");
        };
        let msg = e.to_string();
        assert!(msg.contains("bad: spec.priority: invalid type"), "{msg}");
        let errs = check(&m.others[0].value).unwrap_err();
        assert_eq!(errs[0].field, "spec.priority");
    }

    #[test]
    fn conditions_are_compared_without_their_times() {
        let v = serde_json::json!({"status": {"conditions": [
            {"type": "Other", "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"},
            {"type": "Valid", "status": "False", "reason": "InvalidSpec", "message": "m", "observedGeneration": 2, "lastTransitionTime": "2024-01-01T00:00:00Z"},
        ]}});
        let c = current_condition(&v).unwrap();
        assert_eq!(c.status, "False");
        let mut d = c.clone();
        d.last_transition_time =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
        assert!(same_condition(&c, &d));
        d.observed_generation = Some(3);
        assert!(!same_condition(&c, &d));
        assert!(current_condition(&serde_json::json!({})).is_none());
    }
}
