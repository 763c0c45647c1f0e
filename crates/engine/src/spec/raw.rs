//! The raw YAML model of a pipeline file, as serde reads it: every key, with the location of
//! each value that a diagnostic may point at. Validation happens in [`super::parse`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

// ---------------------------------------------------------------------------------------------
// Raw YAML model

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub version: Spanned<u32>,
    #[serde(default)]
    pub description: Option<String>,
    pub stages: BTreeMap<String, Spanned<RawStage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub cmd: Option<Spanned<String>>,
    #[serde(default)]
    pub op: Option<Spanned<String>>,
    #[serde(default)]
    pub manual: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub inputs: RawPorts,
    #[serde(default)]
    pub outputs: RawPorts,
    #[serde(default)]
    pub params: Option<serde_json::Value>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    #[serde(default)]
    pub volatile: bool,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    #[serde(default)]
    pub remote: Option<bool>,
    #[serde(default)]
    pub platform: BTreeMap<String, String>,
}

/// `inputs`/`outputs`: a list of paths or a map of name → path.
#[derive(Default)]
pub enum RawPorts {
    #[default]
    Empty,
    List(Vec<Spanned<String>>),
    Map(Vec<(String, Spanned<String>)>),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortsVisitor;
        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of paths or a map of name to path")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawPorts, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(RawPorts::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPorts, A::Error> {
                let mut items: Vec<(String, Spanned<String>)> = Vec::new();
                while let Some((name, path)) = map.next_entry::<String, Spanned<String>>()? {
                    if items.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate name `{name}`")));
                    }
                    items.push((name, path));
                }
                Ok(RawPorts::Map(items))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawPorts, E> {
                Ok(RawPorts::Empty)
            }
        }
        deserializer.deserialize_any(PortsVisitor)
    }
}
