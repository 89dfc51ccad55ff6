//! The gate taint, as given on the command line (`KEY[=VALUE]:EFFECT`, the `kubectl taint` form).

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Taint as ApiTaint;

/// The taint new user-pool nodes carry until their profiles are loaded.
pub const GATE_TAINT: &str = "WaitingForAppArmorProfiles=true:NoSchedule";
/// The same gate in the form the cluster autoscaler treats as a startup taint (Azure/AKS#3276):
/// without the prefix it refuses to scale up a pool whose new nodes would carry it.
pub const AUTOSCALER_GATE_TAINT: &str =
    "startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles=true:NoSchedule";

/// A taint to remove. A value of `None` matches any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

impl FromStr for Taint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {s:?} has no effect: expected KEY[=VALUE]:EFFECT"))?;
        if !EFFECTS.contains(&effect) {
            return Err(format!(
                "taint {s:?} has effect {effect:?}; expected one of {}",
                EFFECTS.join(", ")
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        validate_key(key).map_err(|e| format!("taint {s:?}: key {key:?} {e}"))?;
        if let Some(v) = value {
            validate_value(v).map_err(|e| format!("taint {s:?}: value {v:?} {e}"))?;
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.map(String::from),
            effect: effect.to_string(),
        })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}:{}", self.key, v, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

impl Taint {
    /// Whether a taint on a Node is this one.
    pub fn matches(&self, t: &ApiTaint) -> bool {
        t.key == self.key
            && t.effect == self.effect
            && self
                .value
                .as_ref()
                .is_none_or(|v| t.value.as_deref().unwrap_or("") == v)
    }
}

/// A qualified name as Kubernetes accepts it for label and taint keys: an optional DNS-subdomain
/// prefix and `/`, then a name of at most 63 characters.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err("has a prefix that is empty or longer than 253 characters".into());
        }
        let ok = p.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if !ok {
            return Err("has a prefix that is not a lowercase DNS subdomain".into());
        }
    }
    validate_name(name).map_err(|e| format!("is invalid: {e}"))
}

/// A taint value: empty, or a name in the same alphabet as the key's name part.
fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Ok(())
    } else {
        validate_name(value).map_err(|e| format!("is invalid: {e}"))
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err("must start and end with a letter or digit".into());
    }
    if !name
        .chars()
        .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_kubectl_form() {
        let t: Taint = GATE_TAINT.parse().unwrap();
        assert_eq!(t.key, "WaitingForAppArmorProfiles");
        assert_eq!(t.value.as_deref(), Some("true"));
        assert_eq!(t.effect, "NoSchedule");
        let t: Taint = AUTOSCALER_GATE_TAINT.parse().unwrap();
        assert_eq!(
            t.key,
            "startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles"
        );
        let t: Taint = "gate:NoExecute".parse().unwrap();
        assert_eq!(t.value, None);
        let t: Taint = "gate=:NoSchedule".parse().unwrap();
        assert_eq!(t.value.as_deref(), Some(""));
    }

    #[test]
    fn rejects_garbage_with_reasons() {
        let cases = [
            ("", "no effect"),
            ("gate", "no effect"),
            ("gate=true", "no effect"),
            ("gate=true:NoWay", "expected one of"),
            ("=true:NoSchedule", "1 to 63"),
            ("-gate:NoSchedule", "start and end"),
            ("ga te:NoSchedule", "only letters"),
            ("Example.com/gate:NoSchedule", "DNS subdomain"),
            ("/gate:NoSchedule", "prefix"),
            ("a/b/c:NoSchedule", "only letters"),
            ("gate=bad value:NoSchedule", "value"),
        ];
        for (input, want) in cases {
            let err = input.parse::<Taint>().unwrap_err();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        let long = format!("{}:NoSchedule", "k".repeat(64));
        assert!(long.parse::<Taint>().is_err());
    }

    #[test]
    fn matching_honours_value_only_when_given() {
        let api = |key: &str, value: Option<&str>, effect: &str| ApiTaint {
            key: key.into(),
            value: value.map(String::from),
            effect: effect.into(),
            time_added: None,
        };
        let gate: Taint = GATE_TAINT.parse().unwrap();
        assert!(gate.matches(&api(
            "WaitingForAppArmorProfiles",
            Some("true"),
            "NoSchedule"
        )));
        assert!(!gate.matches(&api(
            "WaitingForAppArmorProfiles",
            Some("false"),
            "NoSchedule"
        )));
        assert!(!gate.matches(&api(
            "WaitingForAppArmorProfiles",
            Some("true"),
            "NoExecute"
        )));
        assert!(!gate.matches(&api("Other", Some("true"), "NoSchedule")));
        let any: Taint = "WaitingForAppArmorProfiles:NoSchedule".parse().unwrap();
        assert!(any.matches(&api("WaitingForAppArmorProfiles", None, "NoSchedule")));
        assert!(any.matches(&api("WaitingForAppArmorProfiles", Some("x"), "NoSchedule")));
    }

    proptest! {
        #[test]
        fn valid_taints_parse_and_display_round_trips(
            prefix in proptest::option::of("[a-z]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,10}[a-z0-9])?){0,3}"),
            name in "[A-Za-z]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?",
            value in proptest::option::of("[A-Za-z0-9]{0,10}"),
            effect in prop::sample::select(EFFECTS),
        ) {
            let key = match prefix {
                Some(p) => format!("{p}/{name}"),
                None => name,
            };
            let text = match &value {
                Some(v) => format!("{key}={v}:{effect}"),
                None => format!("{key}:{effect}"),
            };
            let t = text.parse::<Taint>().map_err(TestCaseError::fail)?;
            prop_assert_eq!(&t.key, &key);
            prop_assert_eq!(t.to_string(), text);
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Taint>();
        }
    }
}
