//! The architecture description: which layers, in which order, and which tensors of the
//! safetensors file hold their weights. A safetensors file carries tensors but not the
//! graph that uses them, so a model is a weights file plus this small JSON file.
//!
//! ```json
//! {
//!   "input": [1, 28, 28],
//!   "layers": [
//!     {"conv": {"weight": "conv1.weight", "bias": "conv1.bias", "padding": "valid"}},
//!     {"maxpool": 2},
//!     "relu",
//!     "flatten",
//!     {"dense": {"weight": "fc1.weight", "bias": "fc1.bias"}}
//!   ]
//! }
//! ```
//!
//! - `input`: the shape of one input image, `[channels, height, width]` (a batch is NCHW).
//! - `{"conv": {...}}`: a 2-D convolution (cross-correlation, as PyTorch's `Conv2d`),
//!   stride 1. `weight` names a tensor `[out, in, kh, kw]`, `bias` one `[out]`; the kernel
//!   size comes from the weight's shape. `padding` is `"valid"` (none: the output shrinks
//!   by `k - 1`) or `"same"` (zeros, `(k - 1) / 2` on each side: the output keeps the
//!   input's size; odd kernels only, where that is symmetric).
//! - `{"maxpool": k}`: max over `k`x`k` windows with stride `k`; a trailing remainder of
//!   rows or columns is dropped (PyTorch's `MaxPool2d(k)`).
//! - `"relu"`: `max(x, 0)`, elementwise.
//! - `"flatten"`: `[c, h, w]` to a vector of `c * h * w`, channel-major (PyTorch's
//!   `flatten` of an NCHW tensor), so dense weights trained in PyTorch apply unchanged.
//! - `{"dense": {...}}`: `y = W x + b` with `weight` `[out, in]` (PyTorch's `Linear`
//!   layout) and `bias` `[out]`; its input must be a vector (flatten first).
//!
//! The last layer's outputs are the logits, one per class. Unknown keys are refused, so a
//! typo is an error, not a silently different model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A model's architecture: input shape and layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    /// The shape of one input, `[channels, height, width]`.
    pub input: [usize; 3],
    /// The layers, applied in order.
    pub layers: Vec<LayerSpec>,
}

/// One layer of an [`Arch`], as written in the JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSpec {
    /// A 2-D convolution, stride 1.
    Conv(ConvSpec),
    /// Max over `k`x`k` windows, stride `k`.
    MaxPool(usize),
    /// `max(x, 0)`.
    Relu,
    /// `[c, h, w]` to a vector, channel-major.
    Flatten,
    /// A fully connected layer.
    Dense(DenseSpec),
}

/// A convolution's tensors and padding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    /// Name of the weight tensor, `[out, in, kh, kw]`.
    pub weight: String,
    /// Name of the bias tensor, `[out]`.
    pub bias: String,
    /// How the borders are handled.
    pub padding: Padding,
}

/// A convolution's padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding: the output is `k - 1` smaller in each dimension.
    Valid,
    /// `(k - 1) / 2` zeros on every side (odd kernels): the output keeps the input's size.
    Same,
}

/// A dense layer's tensors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseSpec {
    /// Name of the weight tensor, `[out, in]`.
    pub weight: String,
    /// Name of the bias tensor, `[out]`.
    pub bias: String,
}

impl Arch {
    /// Parses the JSON form; `path` names its source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::format(
                path,
                format!("invalid architecture description: {e}; see the format in the deeplock::infer docs"),
            )
        })
    }

    /// Reads the JSON file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// The JSON form, pretty-printed, one layer per line.
    pub fn to_json(&self) -> String {
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|l| {
                format!(
                    "    {}",
                    serde_json::to_string(l).expect("layers serialize")
                )
            })
            .collect();
        format!(
            "{{\n  \"input\": {},\n  \"layers\": [\n{}\n  ]\n}}\n",
            serde_json::to_string(&self.input).expect("arrays serialize"),
            layers.join(",\n")
        )
    }

    /// The names of the tensors the layers use, in layer order, without repeats.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for l in &self.layers {
            let (w, b) = match l {
                LayerSpec::Conv(c) => (&c.weight, &c.bias),
                LayerSpec::Dense(d) => (&d.weight, &d.bias),
                LayerSpec::MaxPool(_) | LayerSpec::Relu | LayerSpec::Flatten => continue,
            };
            for n in [w, b] {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form_and_round_trips() {
        let text = r#"{
          "input": [1, 28, 28],
          "layers": [
            {"conv": {"weight": "conv1.weight", "bias": "conv1.bias", "padding": "valid"}},
            {"maxpool": 2},
            "relu",
            "flatten",
            {"dense": {"weight": "fc1.weight", "bias": "fc1.bias"}}
          ]
        }"#;
        let a = Arch::from_json(text, Path::new("a.json")).unwrap();
        assert_eq!(a.input, [1, 28, 28]);
        assert_eq!(a.layers[1], LayerSpec::MaxPool(2));
        assert_eq!(a.layers[2], LayerSpec::Relu);
        assert_eq!(
            a.tensor_names(),
            ["conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias"]
        );
        assert_eq!(Arch::from_json(&a.to_json(), Path::new("b")).unwrap(), a);
        assert!(a.to_json().contains("\n    \"relu\",\n"));
    }

    #[test]
    fn refuses_typos_and_unknown_layers() {
        for text in [
            r#"{"input": [1, 2, 2], "layers": ["relu"], "extra": 1}"#,
            r#"{"input": [1, 2, 2], "layers": ["softmax"]}"#,
            r#"{"input": [1, 2, 2], "layers": [{"conv": {"weight": "w", "bias": "b", "padding": "full"}}]}"#,
            r#"{"input": [1, 2, 2], "layers": [{"dense": {"weight": "w", "bias": "b", "act": "relu"}}]}"#,
            r#"{"input": [1, 2], "layers": []}"#,
        ] {
            let e = Arch::from_json(text, Path::new("a.json")).unwrap_err();
            assert!(
                e.to_string().starts_with("a.json: invalid architecture"),
                "{e}"
            );
        }
    }
}
