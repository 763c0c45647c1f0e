//! `quantize`: float weights (+ an optional importance matrix) → a self-describing GGUF file.
//!
//! Every matmul weight gets the default type, or the first matching per-tensor override. A
//! weight whose rows do not fit the default type's block falls back (q8_0 when rows are a
//! multiple of 32, else f16); an override that does not fit is a bad-input error (SPEC.md, "`quantize`").
//! Biases and norm parameters stay f32. With an importance matrix, K-quants use
//! `quantize_imatrix`; other types ignore it. Tensors are quantized in parallel by chunks of whole
//! rows, which gives the same bytes as one call (SPEC.md, "`quantize`"). The GGUF's metadata records the
//! architecture, input shape, labels, every decision with its reason and the inputs' hashes.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::{Architecture, FloatWeights, TYPES, gguf_keys, parse_type, type_name};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Quantize;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// The default type of matmul weights.
    #[serde(rename = "type")]
    pub default_type: String,
    /// Per-tensor overrides: glob → type, first match wins (in order).
    #[serde(default)]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub tensors: String,
    #[serde(rename = "type")]
    pub qtype: String,
}

/// What happened to one tensor, recorded in the GGUF and shown in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(rename = "type")]
    pub qtype: String,
    pub reason: String,
    #[serde(default)]
    pub imatrix: bool,
}

fn is_k_quant(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K
    )
}

fn checked_type(name: &str, stage: &str) -> Result<GgmlDType, OpError> {
    parse_type(name).ok_or_else(|| {
        OpError::BadInput(format!(
            "{stage}: unknown quantization type `{name}`; known types: {}",
            TYPES.join(", ")
        ))
    })
}

/// Rows per parallel chunk: large enough to amortize scheduling, small enough to balance.
const ROWS_PER_CHUNK: usize = 64;

/// Quantizes a 2-D `[rows, cols]` tensor in parallel by chunks of whole rows, straight into one
/// block buffer. The result has the same bytes as a single `QTensor::quantize` (or
/// `quantize_imatrix`) call: blocks never span rows, and each row is quantized by the same code.
pub fn quantize_rows(
    tensor: &Tensor,
    dtype: GgmlDType,
    imatrix: Option<&[f32]>,
) -> candle_core::Result<QTensor> {
    use candle_core::quantized::k_quants::*;
    let (rows, cols) = tensor.dims2()?;
    if !matches!(dtype, GgmlDType::F32 | GgmlDType::F16)
        && tensor.dtype() != candle_core::DType::F32
    {
        return quantize_rows(&tensor.to_dtype(candle_core::DType::F32)?, dtype, imatrix);
    }
    // Borrow the f32 data in place: a copy of a large tensor would be serial work.
    let (storage, layout) = tensor.storage_and_layout();
    let data: &[f32] = match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
        _ => {
            drop(storage);
            return quantize_rows(
                &tensor.contiguous()?.to_device(&candle_core::Device::Cpu)?,
                dtype,
                imatrix,
            );
        }
    };
    match dtype {
        GgmlDType::Q4_0 => quantize_blocks::<BlockQ4_0>(data, rows, cols, imatrix),
        GgmlDType::Q4_1 => quantize_blocks::<BlockQ4_1>(data, rows, cols, imatrix),
        GgmlDType::Q5_0 => quantize_blocks::<BlockQ5_0>(data, rows, cols, imatrix),
        GgmlDType::Q5_1 => quantize_blocks::<BlockQ5_1>(data, rows, cols, imatrix),
        GgmlDType::Q8_0 => quantize_blocks::<BlockQ8_0>(data, rows, cols, imatrix),
        GgmlDType::Q2K => quantize_blocks::<BlockQ2K>(data, rows, cols, imatrix),
        GgmlDType::Q3K => quantize_blocks::<BlockQ3K>(data, rows, cols, imatrix),
        GgmlDType::Q4K => quantize_blocks::<BlockQ4K>(data, rows, cols, imatrix),
        GgmlDType::Q5K => quantize_blocks::<BlockQ5K>(data, rows, cols, imatrix),
        GgmlDType::Q6K => quantize_blocks::<BlockQ6K>(data, rows, cols, imatrix),
        // f32 and f16 are conversions, not quantizations: nothing to gain from chunks.
        _ => QTensor::quantize(tensor, dtype),
    }
}

/// [`quantize_rows`] for a grouped convolution's `[out, cols]` weight: each group's rows are
/// quantized with that group's importance columns (`imatrix` holds `groups × cols` values).
pub fn quantize_groups(
    tensor: &Tensor,
    dtype: GgmlDType,
    imatrix: Option<&[f32]>,
    groups: usize,
) -> candle_core::Result<QTensor> {
    let Some(imatrix) = imatrix.filter(|_| groups > 1) else {
        return quantize_rows(tensor, dtype, imatrix);
    };
    let (rows, cols) = tensor.dims2()?;
    let per_group = rows / groups;
    let mut bytes = Vec::new();
    for g in 0..groups {
        let part = tensor.narrow(0, g * per_group, per_group)?;
        let q = quantize_rows(&part, dtype, Some(&imatrix[g * cols..(g + 1) * cols]))?;
        bytes.extend_from_slice(&q.data()?);
    }
    candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        &bytes,
        vec![rows, cols],
        &candle_core::Device::Cpu,
    )
}

fn quantize_blocks<T: candle_core::quantized::GgmlType + Send + Sync + 'static>(
    data: &[f32],
    rows: usize,
    cols: usize,
    imatrix: Option<&[f32]>,
) -> candle_core::Result<QTensor> {
    if !cols.is_multiple_of(T::BLCK_SIZE) {
        candle_core::bail!(
            "rows of {cols} values do not fit blocks of {}",
            T::BLCK_SIZE
        );
    }
    let per_row = cols / T::BLCK_SIZE;
    let mut blocks: Vec<T> = (0..rows * per_row).map(|_| T::zeros()).collect();
    blocks
        .par_chunks_mut(per_row * ROWS_PER_CHUNK)
        .zip(data.par_chunks(cols * ROWS_PER_CHUNK))
        .for_each(|(ys, xs)| match imatrix {
            Some(weights) => T::from_float_imatrix(xs, ys, weights, cols),
            None => T::from_float(xs, ys),
        });
    QTensor::new(
        candle_core::quantized::QStorage::Cpu(Box::new(blocks)),
        (rows, cols),
    )
}

/// Reads an importance matrix written by the `imatrix` op: tensor name → per-column weights.
pub fn read_imatrix(path: &Path) -> Result<BTreeMap<String, Vec<f32>>, OpError> {
    let value = edgebuild_engine::op::read_json(path)?;
    let tensors = value
        .get("tensors")
        .and_then(|t| t.as_object())
        .ok_or_else(|| {
            OpError::BadInput(format!(
                "{}: not an importance matrix (no `tensors`)",
                path.display()
            ))
        })?;
    let mut out = BTreeMap::new();
    for (name, entry) in tensors {
        let values: Vec<f32> = entry
            .get("values")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_f64())
                    .map(|v| v as f32)
                    .collect()
            })
            .ok_or_else(|| {
                OpError::BadInput(format!("{}: `{name}` has no values", path.display()))
            })?;
        out.insert(name.clone(), values);
    }
    Ok(out)
}

impl Op for Quantize {
    fn name(&self) -> &'static str {
        "quantize"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["weights", "architecture"],
            &["imatrix"],
            &["model"],
        )?;
        let params: QuantizeParams =
            serde_json::from_value(stage.params.clone()).map_err(|e| format!("params: {e}"))?;
        for name in
            std::iter::once(&params.default_type).chain(params.overrides.iter().map(|o| &o.qtype))
        {
            if parse_type(name).is_none() {
                return Err(format!(
                    "unknown quantization type `{name}`; known types: {}",
                    TYPES.join(", ")
                ));
            }
        }
        for o in &params.overrides {
            globset::Glob::new(&o.tensors).map_err(|e| format!("override `{}`: {e}", o.tensors))?;
        }
        Ok(())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: QuantizeParams = edgebuild_engine::op::params(ctx)?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let imatrix = match ctx.inputs.get("imatrix") {
            Some(path) => Some(read_imatrix(path)?),
            None => None,
        };
        let default = checked_type(&params.default_type, ctx.stage_id)?;
        let overrides: Vec<(globset::GlobMatcher, GgmlDType, &str)> = params
            .overrides
            .iter()
            .map(|o| {
                let glob = globset::Glob::new(&o.tensors).map_err(|e| {
                    OpError::BadInput(format!("{}: override `{}`: {e}", ctx.stage_id, o.tensors))
                })?;
                Ok((
                    glob.compile_matcher(),
                    checked_type(&o.qtype, ctx.stage_id)?,
                    o.tensors.as_str(),
                ))
            })
            .collect::<Result<_, OpError>>()?;

        let specs = arch.tensor_specs().map_err(OpError::BadInput)?;
        for (matcher, _, pattern) in &overrides {
            if !specs.iter().any(|s| s.matmul && matcher.is_match(&s.name)) {
                let weights: Vec<&str> = specs
                    .iter()
                    .filter(|s| s.matmul)
                    .map(|s| s.name.as_str())
                    .collect();
                return Err(OpError::BadInput(format!(
                    "{}: override `{pattern}` matches no matmul weight (they are: {})",
                    ctx.stage_id,
                    weights.join(", ")
                )));
            }
        }
        let mut decisions: BTreeMap<String, Decision> = BTreeMap::new();
        let mut quantized: Vec<(String, QTensor)> = Vec::new();
        for spec in specs {
            let tensor = &weights.tensors[&spec.name];
            if !spec.matmul {
                quantized.push((
                    spec.name.clone(),
                    QTensor::quantize(tensor, GgmlDType::F32).map_err(super::candle)?,
                ));
                decisions.insert(
                    spec.name.clone(),
                    Decision {
                        qtype: "f32".into(),
                        reason: "not a matmul weight (bias or norm): kept in f32".into(),
                        imatrix: false,
                    },
                );
                continue;
            }
            let rows = spec.shape[0];
            let cols: usize = spec.shape[1..].iter().product();
            let fits = |t: GgmlDType| cols.is_multiple_of(t.block_size());
            let (dtype, reason) = match overrides.iter().find(|(m, _, _)| m.is_match(&spec.name)) {
                Some((_, t, pattern)) => {
                    if !fits(*t) {
                        return Err(OpError::BadInput(format!(
                            "{}: override `{pattern}` asks for {} on `{}`, whose rows of {cols} values are not a multiple of its block of {}",
                            ctx.stage_id,
                            type_name(*t),
                            spec.name,
                            t.block_size()
                        )));
                    }
                    (*t, format!("override `{pattern}`"))
                }
                None if fits(default) => (default, "default type".to_string()),
                None => {
                    let fallback = if cols.is_multiple_of(32) {
                        GgmlDType::Q8_0
                    } else {
                        GgmlDType::F16
                    };
                    (
                        fallback,
                        format!(
                            "rows of {cols} values do not fit {}'s block of {}: fell back to {}",
                            type_name(default),
                            default.block_size(),
                            type_name(fallback)
                        ),
                    )
                }
            };
            let column_weights = match (&imatrix, is_k_quant(dtype)) {
                (Some(m), true) => Some(m.get(&spec.name).ok_or_else(|| {
                    OpError::BadInput(format!(
                        "{}: the importance matrix has no entry for `{}`",
                        ctx.stage_id, spec.name
                    ))
                })?),
                _ => None,
            };
            let groups = spec.groups.max(1);
            if let Some(w) = column_weights
                && w.len() != cols * groups
            {
                return Err(OpError::BadInput(format!(
                    "{}: the importance matrix for `{}` has {} columns, the tensor {cols}{}",
                    ctx.stage_id,
                    spec.name,
                    w.len(),
                    if groups > 1 {
                        format!(" in each of {groups} groups")
                    } else {
                        String::new()
                    }
                )));
            }
            let reason = match (&imatrix, column_weights) {
                (Some(_), None) => format!(
                    "{reason}; importance matrix not used ({} is not a K-quant)",
                    type_name(dtype)
                ),
                _ => reason,
            };
            let matrix = tensor.reshape((rows, cols)).map_err(super::candle)?;
            quantized.push((
                spec.name.clone(),
                quantize_groups(&matrix, dtype, column_weights.map(Vec::as_slice), groups)
                    .map_err(super::candle)?,
            ));
            decisions.insert(
                spec.name.clone(),
                Decision {
                    qtype: type_name(dtype).into(),
                    reason,
                    imatrix: column_weights.is_some(),
                },
            );
        }

        let mut sources = BTreeMap::new();
        for (name, path) in &ctx.inputs {
            let (hash, _) = edgebuild_engine::hash::hash_file(path)
                .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
            sources.insert(name.clone(), hash.hex());
        }
        let quantization = serde_json::json!({
            "params": params,
            "tensors": decisions,
        });
        use gguf_file::Value;
        let metadata: Vec<(&str, Value)> = vec![
            (gguf_keys::ARCHITECTURE, Value::String("edgebuild".into())),
            (gguf_keys::NAME, Value::String(arch.name.clone())),
            (
                gguf_keys::MODEL,
                Value::String(serde_json::to_string(&arch).expect("architectures serialize")),
            ),
            (
                gguf_keys::INPUT_SHAPE,
                Value::Array(
                    arch.input_shape
                        .iter()
                        .map(|&d| Value::U32(d as u32))
                        .collect(),
                ),
            ),
            (
                gguf_keys::LABELS,
                Value::Array(
                    arch.labels
                        .iter()
                        .map(|l| Value::String(l.clone()))
                        .collect(),
                ),
            ),
            (
                gguf_keys::QUANTIZATION,
                Value::String(edgebuild_engine::hash::canonical_json(&quantization)),
            ),
            (
                gguf_keys::SOURCES,
                Value::String(serde_json::to_string(&sources).expect("maps serialize")),
            ),
        ];
        let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut bytes = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut bytes, &metadata_refs, &tensor_refs).map_err(super::candle)?;
        edgebuild_engine::op::write_output(ctx.output("model")?, &bytes.into_inner())?;
        for (name, d) in &decisions {
            ctx.log(format!("{name}: {} ({})", d.qtype, d.reason));
        }
        Ok(OpOutcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parallel_row_chunks_give_the_bytes_of_one_call() {
        // 1024 × 1024 = 1M elements, as SPEC.md, "`quantize`" asks.
        let values: Vec<f32> = (0..1024u64 * 1024)
            .map(|i| ((i * 7919) % 10007) as f32 / 10007.0 - 0.5)
            .collect();
        let tensor = Tensor::from_vec(values, (1024, 1024), &Device::Cpu).unwrap();
        let imatrix: Vec<f32> = (0..1024).map(|i| 1.0 + (i % 13) as f32).collect();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let single = QTensor::quantize(&tensor, dtype)
                .unwrap()
                .data()
                .unwrap()
                .into_owned();
            let parallel = quantize_rows(&tensor, dtype, None)
                .unwrap()
                .data()
                .unwrap()
                .into_owned();
            assert!(single == parallel, "{dtype:?}");
        }
        let single = QTensor::quantize_imatrix(&tensor, &imatrix, GgmlDType::Q4K)
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        let parallel = quantize_rows(&tensor, GgmlDType::Q4K, Some(&imatrix))
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        assert!(single == parallel, "imatrix");
    }
}
