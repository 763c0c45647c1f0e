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
    pub params: Option<Spanned<RawParam>>,
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

/// A `params` value as written, with the location of every element: the YAML parser reads an
/// integer that does not fit 64 bits as a float, and [`super::parse`] refuses it by looking at
/// its text rather than keeping a rounded number (SPEC.md, "Pipeline files").
pub enum RawParam {
    Null,
    Bool(bool),
    Int(serde_json::Number),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawParam>>),
    Map(Vec<(String, Spanned<RawParam>)>),
}

impl<'de> Deserialize<'de> for RawParam {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamVisitor;
        impl<'de> Visitor<'de> for ParamVisitor {
            type Value = RawParam;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawParam, E> {
                Ok(RawParam::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawParam, E> {
                Ok(RawParam::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawParam, E> {
                Ok(RawParam::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawParam, E> {
                i64::try_from(v)
                    .map(|v| RawParam::Int(v.into()))
                    .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawParam, E> {
                u64::try_from(v)
                    .map(|v| RawParam::Int(v.into()))
                    .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawParam, E> {
                Ok(RawParam::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawParam, E> {
                Ok(RawParam::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawParam, E> {
                Ok(RawParam::Str(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawParam, E> {
                Ok(RawParam::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawParam, E> {
                Ok(RawParam::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawParam, D::Error> {
                RawParam::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawParam, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<RawParam>>()? {
                    items.push(item);
                }
                Ok(RawParam::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawParam, A::Error> {
                let mut items: Vec<(String, Spanned<RawParam>)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Spanned<RawParam>>()? {
                    items.push((key, value));
                }
                Ok(RawParam::Map(items))
            }
        }
        deserializer.deserialize_any(ParamVisitor)
    }
}
