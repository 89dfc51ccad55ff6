//! Profiles as this tool handles them: ConfigMap keys (`keys`), the profile volume (`source`),
//! profile names (`names`), checking a set of profile files with the parser (`check`), the
//! ownership records on the host (`records`) and the rules both steps follow with them
//! (`ownership`), `copy`'s record of the files it owns (`copied`) and `load`'s of what it loaded
//! (`loaded`), what `load` does with profiles that left the ConfigMap (`prune`, and
//! `neutralise` for the children left behind), and the node labels `load` reports to `untaint`
//! (`node_labels`).

pub(crate) mod check;
pub(crate) mod copied;
pub(crate) mod keys;
pub(crate) mod loaded;
pub(crate) mod names;
pub(crate) mod neutralise;
pub mod node_labels;
pub(crate) mod ownership;
pub(crate) mod prune;
pub(crate) mod records;
pub(crate) mod source;

/// A validated string newtype (`Key`, `ProfileName`): `TryFrom<String>` through its rule
/// function (`Err(reason)` becomes its error type, naming the string) is the only way in; read
/// as a `str`, shown as the string, looked up in maps by `&str`, written back to records as the
/// string.
macro_rules! validated_string {
    ($name:ident, $error:ident { $field:ident }, $rule:path) => {
        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from($field: String) -> Result<Self, $error> {
                match $rule(&$field) {
                    Ok(()) => Ok($name($field)),
                    Err(reason) => Err($error { $field, reason }),
                }
            }
        }
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        /// As the string (quoted), so messages read the same as before the type.
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl TryFrom<&str> for $name {
            type Error = <$name as TryFrom<String>>::Error;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                $name::try_from(s.to_string())
            }
        }
    };
}
pub(crate) use validated_string;
