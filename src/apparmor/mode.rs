//! A profile's mode, as the kernel's list (`/sys/kernel/security/apparmor/profiles`) and the
//! parser's debug dump spell it.

/// The mode a profile asks for (its flags) or is loaded in (the kernel's list).
///
/// The modes this tool names are variants; any other word the kernel or the parser prints
/// (`prompt`, `user`, a mode of a later release) is kept as it was printed in [`Mode::Other`],
/// so it is compared word for word like every mode, and never taken for `enforce`. Built only
/// from the printed word (`From<String>`), which maps a known word to its variant, so two
/// equal words are always equal modes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Mode {
    Enforce,
    Complain,
    Kill,
    Unconfined,
    Other(String),
}

impl Mode {
    pub fn as_str(&self) -> &str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Complain => "complain",
            Mode::Kill => "kill",
            Mode::Unconfined => "unconfined",
            Mode::Other(word) => word,
        }
    }
}

impl From<String> for Mode {
    fn from(word: String) -> Self {
        match word.as_str() {
            "enforce" => Mode::Enforce,
            "complain" => Mode::Complain,
            "kill" => Mode::Kill,
            "unconfined" => Mode::Unconfined,
            _ => Mode::Other(word),
        }
    }
}

impl From<&str> for Mode {
    fn from(word: &str) -> Self {
        Mode::from(word.to_string())
    }
}

impl From<Mode> for String {
    fn from(mode: Mode) -> String {
        match mode {
            Mode::Other(word) => word,
            known => known.as_str().to_string(),
        }
    }
}

/// As the word (quoted), as logs showed modes before they were a type.
impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_map_to_modes_and_back_unknown_ones_kept_verbatim() {
        for (word, mode) in [
            ("enforce", Mode::Enforce),
            ("complain", Mode::Complain),
            ("kill", Mode::Kill),
            ("unconfined", Mode::Unconfined),
            ("prompt", Mode::Other("prompt".into())),
        ] {
            assert_eq!(Mode::from(word), mode);
            assert_eq!(String::from(mode), word);
        }
        assert_ne!(Mode::from("prompt"), Mode::Enforce);
        assert_ne!(Mode::from("Enforce"), Mode::Enforce);
    }
}
