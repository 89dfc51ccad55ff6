//! Rules on profile names (placeholder until the fail-closed-ops branch lands).

/// Why a profile name is refused, or `Ok` when this tool can load, verify and unload it.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.chars().any(char::is_control) {
        return Err("the name contains a control character (a newline?)".into());
    }
    if name.starts_with(':') {
        return Err("policy namespaces (`:ns:name`) are not supported".into());
    }
    if name.split("//").any(str::is_empty) {
        return Err("the name has an empty `//` segment".into());
    }
    Ok(())
}

/// Every `parent//child` has its parent in the same set.
pub fn check_name_set(names: &[String]) -> Result<(), String> {
    for name in names {
        if let Some((parent, _)) = name.rsplit_once("//")
            && !names.iter().any(|n| n == parent)
        {
            return Err(format!(
                "{name:?} is a child of {parent:?}, which this file does not define"
            ));
        }
    }
    Ok(())
}
