//! The `objective=` line of a LightGBM model and the output transform it implies.
//!
//! LightGBM turns the summed raw score into a prediction with the objective's
//! `ConvertOutput` (src/objective/*.hpp): identity for the regression family (or
//! `sign(x)·x²` when trained with `reg_sqrt`), `exp` for poisson, gamma and tweedie, and
//! `1 / (1 + exp(-sigmoid·x))` for binary. Everything else (multiclass, ranking,
//! cross-entropy, custom objectives) is rejected.

use crate::RouterError;

/// How a raw score becomes a prediction, exactly as LightGBM's `ConvertOutput` computes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputTransform {
    /// The raw score itself (`regression`, `regression_l1`, `quantile`, `huber`, `fair`,
    /// `mape`).
    Identity,
    /// `sign(x) * x * x`: a regression-family model trained with `reg_sqrt`.
    SignedSquare,
    /// `exp(x)` (`poisson`, `gamma`, `tweedie`).
    Exp,
    /// `1 / (1 + exp(-sigmoid * x))` (`binary`).
    Sigmoid { sigmoid: f64 },
}

impl OutputTransform {
    /// Parses the value of a model's `objective=` line (e.g. `binary sigmoid:1`).
    pub(crate) fn parse(objective: &str) -> Result<Self, RouterError> {
        let tokens: Vec<&str> = objective.split(' ').filter(|t| !t.is_empty()).collect();
        let Some(&name) = tokens.first() else {
            return Err(RouterError::ModelText(
                "the objective line is empty".to_owned(),
            ));
        };
        let sqrt = tokens[1..].contains(&"sqrt");
        match name {
            // RegressionL2loss and the losses derived from it keep `sqrt` ...
            "regression" | "regression_l1" | "quantile" | "fair" | "mape" => Ok(if sqrt {
                Self::SignedSquare
            } else {
                Self::Identity
            }),
            // ... except huber, which disables it (RegressionHuberLoss's constructor).
            "huber" => Ok(Self::Identity),
            // The poisson family disables `sqrt` and predicts exp(score).
            "poisson" | "gamma" | "tweedie" => Ok(Self::Exp),
            "binary" => {
                let sigmoid = tokens[1..]
                    .iter()
                    .find_map(|t| t.strip_prefix("sigmoid:"))
                    .map(lightgbm_atof)
                    .ok_or_else(|| {
                        RouterError::ModelText(
                            "the binary objective has no `sigmoid:` parameter".to_owned(),
                        )
                    })?;
                // BinaryLogloss refuses a non-positive (or unparsable, hence NaN) sigmoid.
                if sigmoid.is_nan() || sigmoid <= 0.0 {
                    return Err(RouterError::ModelText(format!(
                        "the binary objective's sigmoid parameter {sigmoid} is not positive"
                    )));
                }
                Ok(Self::Sigmoid { sigmoid })
            }
            other => Err(RouterError::ModelText(format!(
                "unsupported objective `{other}`: the native evaluator supports regression, \
                 regression_l1, quantile, huber, fair, mape, poisson, gamma, tweedie and binary"
            ))),
        }
    }

    /// Applies the transform to a raw score (LightGBM's `ConvertOutput`).
    #[inline]
    pub fn apply(self, raw: f64) -> f64 {
        match self {
            Self::Identity => raw,
            Self::SignedSquare => sign(raw) * raw * raw,
            Self::Exp => raw.exp(),
            Self::Sigmoid { sigmoid } => 1.0 / (1.0 + (-sigmoid * raw).exp()),
        }
    }
}

/// `Common::Sign`: `(x > 0) - (x < 0)` as a double.
fn sign(x: f64) -> f64 {
    f64::from(i8::from(x > 0.0) - i8::from(x < 0.0))
}

/// `Common::Pow` of LightGBM's utils/common.h, with its exact evaluation order.
fn lightgbm_pow(base: f64, power: i32) -> f64 {
    if power < 0 {
        1.0 / lightgbm_pow(base, -power)
    } else if power == 0 {
        1.0
    } else if power % 2 == 0 {
        lightgbm_pow(base * base, power / 2)
    } else if power % 3 == 0 {
        lightgbm_pow(base * base * base, power / 3)
    } else {
        base * lightgbm_pow(base, power - 1)
    }
}

/// A port of LightGBM's `Common::Atof`, the (not correctly rounded) parser that
/// `BinaryLogloss` uses for `sigmoid:`; reproducing it keeps the parameter bit-identical.
/// Returns NaN where LightGBM would store NaN or stop with a fatal error.
pub(crate) fn lightgbm_atof(text: &str) -> f64 {
    let b = text.as_bytes();
    let mut p = 0;
    while b.get(p) == Some(&b' ') {
        p += 1;
    }
    let mut sign = 1.0;
    match b.get(p) {
        Some(b'-') => {
            sign = -1.0;
            p += 1;
        }
        Some(b'+') => p += 1,
        _ => {}
    }
    let is_number =
        matches!(b.get(p), Some(c) if c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E'));
    if !is_number {
        let word = text[p..].to_ascii_lowercase();
        return match word.trim_end() {
            "inf" | "infinity" => sign * 1e308,
            _ => f64::NAN,
        };
    }
    let mut value = 0.0;
    while let Some(c) = b.get(p).filter(|c| c.is_ascii_digit()) {
        value = value * 10.0 + f64::from(c - b'0');
        p += 1;
    }
    if b.get(p) == Some(&b'.') {
        p += 1;
        let mut right = 0.0;
        let mut nn = 0;
        while let Some(c) = b.get(p).filter(|c| c.is_ascii_digit()) {
            right = f64::from(c - b'0') + right * 10.0;
            nn += 1;
            p += 1;
        }
        value += right / lightgbm_pow(10.0, nn);
    }
    let mut frac = false;
    let mut scale = 1.0;
    if matches!(b.get(p), Some(b'e' | b'E')) {
        p += 1;
        match b.get(p) {
            Some(b'-') => {
                frac = true;
                p += 1;
            }
            Some(b'+') => p += 1,
            _ => {}
        }
        let mut expon: u32 = 0;
        while let Some(c) = b.get(p).filter(|c| c.is_ascii_digit()) {
            expon = expon.wrapping_mul(10).wrapping_add(u32::from(c - b'0'));
            p += 1;
        }
        expon = expon.min(308);
        while expon >= 50 {
            scale *= 1e50;
            expon -= 50;
        }
        while expon >= 8 {
            scale *= 1e8;
            expon -= 8;
        }
        while expon > 0 {
            scale *= 10.0;
            expon -= 1;
        }
    }
    sign * if frac { value / scale } else { value * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_map_to_lightgbm_transforms() {
        let t = |s: &str| OutputTransform::parse(s).expect(s);
        assert_eq!(t("regression"), OutputTransform::Identity);
        assert_eq!(t("quantile"), OutputTransform::Identity);
        assert_eq!(t("regression sqrt"), OutputTransform::SignedSquare);
        assert_eq!(t("huber sqrt"), OutputTransform::Identity);
        assert_eq!(t("tweedie"), OutputTransform::Exp);
        assert_eq!(
            t("binary sigmoid:1"),
            OutputTransform::Sigmoid { sigmoid: 1.0 }
        );
        assert_eq!(
            t("binary sigmoid:0.5"),
            OutputTransform::Sigmoid { sigmoid: 0.5 }
        );
    }

    #[test]
    fn unknown_and_invalid_objectives_are_rejected_clearly() {
        for (objective, needle) in [
            (
                "multiclass num_class:3",
                "unsupported objective `multiclass`",
            ),
            ("lambdarank", "unsupported objective `lambdarank`"),
            ("", "objective line is empty"),
            ("binary", "no `sigmoid:` parameter"),
            ("binary sigmoid:-1", "not positive"),
            ("binary sigmoid:abc", "not positive"),
        ] {
            let err = OutputTransform::parse(objective)
                .expect_err(objective)
                .to_string();
            assert!(err.contains(needle), "{objective}: {err}");
        }
    }

    #[test]
    fn transforms_follow_convert_output() {
        assert_eq!(OutputTransform::SignedSquare.apply(-3.0), -9.0);
        assert_eq!(OutputTransform::SignedSquare.apply(0.0), 0.0);
        let s = OutputTransform::Sigmoid { sigmoid: 2.0 };
        assert_eq!(s.apply(0.25), 1.0 / (1.0 + (-0.5f64).exp()));
    }

    #[test]
    fn atof_port_reproduces_lightgbm_rounding() {
        assert_eq!(lightgbm_atof("1"), 1.0);
        assert_eq!(lightgbm_atof("  -2.5"), -2.5);
        assert_eq!(lightgbm_atof("1e-3"), 1.0 / 1000.0);
        assert_eq!(lightgbm_atof("inf"), 1e308);
        assert!(lightgbm_atof("na").is_nan());
        // 0.7 = 7 / 10 here, which happens to round like the correctly rounded literal.
        assert_eq!(lightgbm_atof("0.7"), 7.0 / 10.0);
        // Digits after the point are accumulated, then divided by Pow(10, n).
        assert_eq!(lightgbm_atof("0.123"), 123.0 / (10.0 * 100.0));
    }
}
