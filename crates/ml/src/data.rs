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

/// Whether a zip archive stores any entry compressed (local file headers, method != 0).
fn zip_is_compressed(path: &Path) -> Result<bool, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut at = 0;
    while at + 30 <= bytes.len() && bytes[at..at + 4] == [0x50, 0x4b, 0x03, 0x04] {
        let method = u16::from_le_bytes([bytes[at + 8], bytes[at + 9]]);
        if method != 0 {
            return Ok(true);
        }
        let size =
            u32::from_le_bytes(bytes[at + 18..at + 22].try_into().expect("4 bytes")) as usize;
        let name_len = u16::from_le_bytes([bytes[at + 26], bytes[at + 27]]) as usize;
        let extra_len = u16::from_le_bytes([bytes[at + 28], bytes[at + 29]]) as usize;
        at += 30 + name_len + extra_len + size;
    }
    Ok(false)
}

fn read_npz(path: &Path) -> Result<(Tensor, Option<Vec<u32>>), String> {
    if zip_is_compressed(path)? {
        return Err(format!(
            "{} is a compressed .npz; edgebuild reads uncompressed ones: save it with np.savez, not np.savez_compressed",
            path.display()
        ));
    }
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
        Some(y) => Some(
            y.flatten_all()
                .and_then(|y| y.to_dtype(DType::I64))
                .and_then(|y| y.to_vec1::<i64>())
                .map_err(|e| format!("{}: `y`: {e}", path.display()))?
                .into_iter()
                .map(|v| {
                    u32::try_from(v)
                        .map_err(|_| format!("{}: label {v} is negative", path.display()))
                })
                .collect::<Result<Vec<u32>, String>>()?,
        ),
    };
    Ok((x, y))
}

fn read_csv(path: &Path) -> Result<(Tensor, Option<Vec<u32>>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
    let features = width.unwrap_or(0) - usize::from(label_column.is_some());
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
