//! Data sets for calibration and evaluation: NumPy `.npz` files with an `x` array and, for
//! labelled sets, a `y` array; or CSV as a convenience.
//!
//! `.npz` must be uncompressed (`np.savez`, not `np.savez_compressed`): candle's reader has no
//! deflate (SPEC.md, "Models"). A CSV file has one sample per row; a header row is optional, and a
//! column named `y` or `label` holds the labels. Samples are reshaped to the model's input shape.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// Samples `x` (f32, `[N, input_shape...]`) and optional class labels.
pub struct Dataset {
    pub x: Tensor,
    pub y: Option<Vec<u32>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.x.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Labels, or an error saying which op needs them.
    pub fn labels(&self, path: &Path) -> Result<&[u32], String> {
        self.y.as_deref().ok_or_else(|| {
            format!(
                "{} has no labels: an .npz needs a `y` array, a CSV a `y` or `label` column",
                path.display()
            )
        })
    }

    /// Loads a data set and reshapes samples to `input_shape`.
    pub fn load(path: &Path, input_shape: &[usize]) -> Result<Dataset, String> {
        let (x, y) = match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => read_npz(path)?,
            Some("csv") => read_csv(path)?,
            _ => {
                return Err(format!(
                    "{}: unknown data set format (expected .npz or .csv)",
                    path.display()
                ));
            }
        };
        let n = x.dims().first().copied().unwrap_or(0);
        let per_sample: usize = input_shape.iter().product();
        if n == 0 || x.elem_count() != n * per_sample {
            return Err(format!(
                "{}: `x` has shape {:?}, which does not hold samples of the model's input shape {:?}",
                path.display(),
                x.dims(),
                input_shape
            ));
        }
        let mut shape = vec![n];
        shape.extend_from_slice(input_shape);
        let x = x
            .to_dtype(DType::F32)
            .and_then(|x| x.reshape(shape))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // NaN or an infinity would flow into every statistic and cached result made from the
        // set (SPEC.md, "Models"): refused, naming the sample and the column.
        let values = x
            .flatten_all()
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{}: array `x`, sample {}, column {} is {}: a data set holds finite numbers only",
                path.display(),
                at / per_sample,
                at % per_sample,
                values[at]
            ));
        }
        if let Some(y) = &y
            && y.len() != n
        {
            return Err(format!(
                "{}: {} samples but {} labels",
                path.display(),
                n,
                y.len()
            ));
        }
        Ok(Dataset { x, y })
    }
}

/// The largest data set file edgebuild reads (SPEC.md, "Limits").
pub const MAX_DATASET_BYTES: u64 = 1 << 30;

/// Reads a data set file whole, refusing one above [`MAX_DATASET_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_DATASET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_DATASET_BYTES {
        return Err(format!(
            "{}: a data set file may hold at most {} MiB",
            path.display(),
            MAX_DATASET_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// Checks an `.npz` before candle reads it: every entry stored uncompressed with its size in
/// its local header, and every `.npy` header well formed and describing exactly the bytes that
/// follow it. candle allocates what a header's shape says; after this check that is never more
/// than the file holds (SPEC.md, "Limits").
pub fn check_npz(bytes: &[u8]) -> Result<(), String> {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let u32_at = |at: usize| {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
    };
    let mut at = 0;
    let mut entries = 0;
    while at + 30 <= bytes.len() && bytes[at..at + 4] == [0x50, 0x4b, 0x03, 0x04] {
        let flags = u16_at(at + 6);
        if u16_at(at + 8) != 0 {
            return Err("it is a compressed .npz; edgebuild reads uncompressed ones: save it with np.savez, not np.savez_compressed".into());
        }
        if flags & 0x8 != 0 {
            return Err(
                "an entry's size is not in its header (a streamed zip): save it with np.savez"
                    .into(),
            );
        }
        let size = u32_at(at + 18);
        let name_len = u16_at(at + 26);
        let extra_len = u16_at(at + 28);
        let data = at + 30 + name_len + extra_len;
        let end = data
            .checked_add(size)
            .filter(|&end| end <= bytes.len())
            .ok_or("an entry runs past the end of the file")?;
        let name = String::from_utf8_lossy(&bytes[at + 30..(at + 30 + name_len).min(bytes.len())]);
        if name.ends_with(".npy") {
            check_npy(&bytes[data..end])
                .map_err(|e| format!("array `{}`: {e}", name.trim_end_matches(".npy")))?;
        }
        entries += 1;
        at = end;
    }
    if entries == 0 {
        return Err("it is not an .npz (a zip archive of .npy arrays)".into());
    }
    Ok(())
}

/// Checks one `.npy`: magic, version, a header `{'descr': ..., 'fortran_order': ..., 'shape':
/// (...)}` whose element size times shape is the data's length.
fn check_npy(npy: &[u8]) -> Result<(), String> {
    if npy.len() < 10 || &npy[..6] != b"\x93NUMPY" {
        return Err("not a .npy array".into());
    }
    let (header_len, start) = match npy[6] {
        1 => (u16::from_le_bytes([npy[8], npy[9]]) as usize, 10usize),
        2 | 3 if npy.len() >= 12 => (
            u32::from_le_bytes([npy[8], npy[9], npy[10], npy[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = npy
        .get(start..start.saturating_add(header_len))
        .ok_or("its header runs past the end of the array")?;
    let header = std::str::from_utf8(header).map_err(|_| "its header is not text")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr").ok_or("its header has no `descr`")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("its header's `descr` is not a string")?;
    let item: usize = match descr.trim_start_matches(['<', '>', '|', '=']) {
        "f2" | "i2" | "u2" => 2,
        "f4" | "i4" | "u4" => 4,
        "f8" | "i8" | "u8" => 8,
        "u1" | "i1" | "b1" => 1,
        other => return Err(format!("element type `{other}` is not supported")),
    };
    let shape = field("shape").ok_or("its header has no `shape`")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("its header's `shape` is not a tuple")?;
    let mut count: usize = 1;
    for dim in shape.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let dim: usize = dim
            .parse()
            .map_err(|_| format!("shape entry `{dim}` is not a size"))?;
        count = count.checked_mul(dim).ok_or("its shape overflows")?;
    }
    let data = npy.len() - (start + header_len);
    if count.checked_mul(item) != Some(data) {
        return Err(format!(
            "its header describes {count} elements of {item} bytes, but {data} bytes follow"
        ));
    }
    Ok(())
}

fn read_npz(path: &Path) -> Result<(Tensor, Option<Vec<u32>>), String> {
    let bytes = read_bounded(path)?;
    check_npz(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    drop(bytes);
    let arrays = Tensor::read_npz(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x = None;
    let mut y = None;
    for (name, tensor) in arrays {
        match name.trim_end_matches(".npy") {
            "x" => x = Some(tensor),
            "y" => y = Some(tensor),
            _ => {}
        }
    }
    let x = x.ok_or_else(|| format!("{} has no `x` array", path.display()))?;
    let y = match y {
        None => None,
        // Labels are class indices: float labels must be whole numbers, never truncated.
        Some(y) => Some(
            y.flatten_all()
                .and_then(|y| y.to_dtype(DType::F64))
                .and_then(|y| y.to_vec1::<f64>())
                .map_err(|e| format!("{}: `y`: {e}", path.display()))?
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
                        Ok(v as u32)
                    } else {
                        Err(format!(
                            "{}: array `y`, sample {i}: label {v} is not a class index (a non-negative integer)",
                            path.display()
                        ))
                    }
                })
                .collect::<Result<Vec<u32>, String>>()?,
        ),
    };
    Ok((x, y))
}

fn read_csv(path: &Path) -> Result<(Tensor, Option<Vec<u32>>), String> {
    let text = String::from_utf8(read_bounded(path)?)
        .map_err(|_| format!("{}: a CSV file is UTF-8 text", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    let first: Vec<&str> = lines
        .peek()
        .ok_or_else(|| format!("{} is empty", path.display()))?
        .split(',')
        .map(str::trim)
        .collect();
    let has_header = first.iter().any(|f| f.parse::<f64>().is_err());
    let label_column = if has_header {
        lines.next();
        first.iter().position(|c| *c == "y" || *c == "label")
    } else {
        None
    };
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut width = None;
    let mut rows = 0;
    for (row, line) in lines.enumerate() {
        rows += 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if *width.get_or_insert(fields.len()) != fields.len() {
            return Err(format!(
                "{}: row {} has {} fields",
                path.display(),
                row + 1,
                fields.len()
            ));
        }
        for (col, field) in fields.iter().enumerate() {
            let value: f64 = field.parse().map_err(|_| {
                format!(
                    "{}: row {}: `{field}` is not a number",
                    path.display(),
                    row + 1
                )
            })?;
            if Some(col) == label_column {
                if value < 0.0 || value.fract() != 0.0 || value > u32::MAX as f64 {
                    return Err(format!(
                        "{}: row {}: label `{field}` is not a class index (a non-negative integer)",
                        path.display(),
                        row + 1
                    ));
                }
                ys.push(value as u32);
            } else {
                xs.push(value as f32);
            }
        }
    }
    let features = width
        .unwrap_or(0)
        .saturating_sub(usize::from(label_column.is_some()));
    let x = Tensor::from_vec(xs, (rows, features), &Device::Cpu)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((x, label_column.map(|_| ys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "a,b,y\n1,2,0\n3,4,1\n").unwrap();
        let data = Dataset::load(&path, &[2]).unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data.y, Some(vec![0, 1]));
        assert_eq!(
            data.x.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
    }

    #[test]
    fn non_finite_values_are_refused_naming_array_sample_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "a,b,y\n1,2,0\n3,inf,1\n").unwrap();
        let err = Dataset::load(&path, &[2]).err().unwrap();
        assert!(
            err.contains("array `x`, sample 1, column 1 is inf"),
            "{err}"
        );
        let path = dir.path().join("d.npz");
        let x = Tensor::new(&[[0f32, 1.0], [f32::NAN, 2.0]], &Device::Cpu).unwrap();
        Tensor::write_npz(&[("x", &x)], &path).unwrap();
        let err = Dataset::load(&path, &[2]).err().unwrap();
        assert!(
            err.contains("array `x`, sample 1, column 0 is NaN"),
            "{err}"
        );
    }

    #[test]
    fn float_labels_must_be_class_indices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let x = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = Tensor::new(&[1f32, 1.7], &Device::Cpu).unwrap();
        Tensor::write_npz(&[("x", &x), ("y", &y)], &path).unwrap();
        let err = Dataset::load(&path, &[2]).err().unwrap();
        assert!(err.contains("array `y`, sample 1: label 1.7"), "{err}");
        // Whole numbers stored as floats are class indices.
        let y = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        Tensor::write_npz(&[("x", &x), ("y", &y)], &path).unwrap();
        assert_eq!(Dataset::load(&path, &[2]).unwrap().y, Some(vec![1, 2]));
    }

    #[test]
    fn an_npy_header_that_claims_more_than_the_file_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let x = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        Tensor::write_npz(&[("x", &x)], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(6)
            .position(|w| w == b"(2,2,)")
            .expect("the shape in the header");
        let mut evil = bytes.clone();
        evil[at..at + 6].copy_from_slice(b"(9,9,)");
        std::fs::write(&path, &evil).unwrap();
        let err = Dataset::load(&path, &[2]).err().unwrap();
        assert!(
            err.contains("81 elements of 4 bytes, but 16 bytes follow"),
            "{err}"
        );
    }

    #[test]
    fn npz_round_trip_and_shape_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let x = Tensor::arange(0f32, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 4))
            .unwrap();
        let y = Tensor::new(&[3i64, 1], &Device::Cpu).unwrap();
        Tensor::write_npz(&[("x", &x), ("y", &y)], &path).unwrap();
        let data = Dataset::load(&path, &[2, 2]).unwrap();
        assert_eq!(data.x.dims(), &[2, 2, 2]);
        assert_eq!(data.y, Some(vec![3, 1]));
        let err = Dataset::load(&path, &[3]).err().unwrap();
        assert!(err.contains("does not hold samples"), "{err}");
    }
}
