//! The compiled policy `apparmor_parser` sends to the kernel, read the way the kernel reads it,
//! to know in advance the hash the kernel will give each profile.
//!
//! The kernel hashes every profile it unpacks (`security/apparmor/policy_unpack.c`,
//! `aa_unpack()` → `aa_calc_profile_hash()`): SHA-1 over the header's `version` (a 32-bit
//! little-endian word) followed by the profile's own bytes, from its named `profile` struct to
//! the end of that struct. It shows the result in securityfs
//! (`apparmor/policy/profiles/<name>.<n>/sha1`). Reading the same bytes from the parser's
//! output (`apparmor_parser -o FILE`) gives the same hash, so a profile in the kernel whose hash
//! equals it is, provably, the one in that output: `load` proves its deny-everything stubs so.
//!
//! The format is a sequence of typed elements (`enum aa_code`): a one-byte code, then its
//! payload, all little-endian; a name is an element of its own in front of the element it names.

use sha1::{Digest, Sha1};

// The element codes (`enum aa_code` in the kernel, `enum sd_code` in the parser).
const U8: u8 = 0;
const U16: u8 = 1;
const U32: u8 = 2;
const U64: u8 = 3;
const NAME: u8 = 4;
const STRING: u8 = 5;
const BLOB: u8 = 6;
const STRUCT: u8 = 7;
const STRUCTEND: u8 = 8;
const LIST: u8 = 9;
const LISTEND: u8 = 10;
const ARRAY: u8 = 11;
const ARRAYEND: u8 = 12;

/// Why a compiled policy could not be read (it is not what this tool expects the parser to write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the compiled policy is not in the format the kernel reads, at byte {at}: {why}")]
pub struct BadBlob {
    pub at: usize,
    pub why: &'static str,
}

/// One element: its code, the name in front of it (if any), and where its payload is.
struct Element<'a> {
    code: u8,
    name: Option<&'a [u8]>,
    payload: &'a [u8],
}

struct Reader<'a> {
    blob: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadBlob> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.blob.len());
        let end = end.ok_or(BadBlob {
            at: self.pos,
            why: "an element runs past the end",
        })?;
        let out = &self.blob[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn le16(&mut self) -> Result<usize, BadBlob> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn le32(&mut self) -> Result<usize, BadBlob> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// The next element, with the name element in front of it folded in.
    fn element(&mut self) -> Result<Element<'a>, BadBlob> {
        let mut name = None;
        let mut code = self.take(1)?[0];
        if code == NAME {
            let len = self.le16()?;
            name = Some(self.take(len)?);
            code = self.take(1)?[0];
        }
        let payload = match code {
            U8 => self.take(1)?,
            U16 => self.take(2)?,
            U32 => self.take(4)?,
            U64 => self.take(8)?,
            STRING => {
                let len = self.le16()?;
                self.take(len)?
            }
            BLOB => {
                let len = self.le32()?;
                self.take(len)?
            }
            // The element count of an array; its elements follow, each typed.
            ARRAY => self.take(2)?,
            STRUCT | STRUCTEND | LIST | LISTEND | ARRAYEND => &[],
            _ => {
                return Err(BadBlob {
                    at: self.pos - 1,
                    why: "unknown element code",
                });
            }
        };
        Ok(Element {
            code,
            name,
            payload,
        })
    }
}

/// A C string's bytes without its terminating NUL.
fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(&[0]).unwrap_or(bytes)
}

/// Each profile in a compiled policy, in order, with the hash the kernel will give it:
/// `(name, sha1 hex)`. The name is the profile's full name (`parent//child`) as the kernel
/// lists it.
pub fn profile_hashes(blob: &[u8]) -> Result<Vec<(String, String)>, BadBlob> {
    let mut r = Reader { blob, pos: 0 };
    let mut version: Option<[u8; 4]> = None;
    let mut out = Vec::new();
    while r.pos < blob.len() {
        let start = r.pos;
        let el = r.element()?;
        match (el.code, el.name.map(c_str)) {
            (U32, Some(b"version")) => {
                version = Some(el.payload.try_into().expect("a U32 payload is 4 bytes"));
            }
            (STRING, Some(b"namespace")) => {}
            (STRUCT, Some(b"profile")) => {
                let version = version.ok_or(BadBlob {
                    at: start,
                    why: "a profile before any version header",
                })?;
                let name = r.element()?;
                if name.code != STRING || name.name.is_some() {
                    return Err(BadBlob {
                        at: start,
                        why: "a profile without its name first",
                    });
                }
                let name = String::from_utf8_lossy(c_str(name.payload)).into_owned();
                let mut depth = 1usize;
                while depth > 0 {
                    match r.element()?.code {
                        STRUCT => depth += 1,
                        STRUCTEND => depth -= 1,
                        _ => {}
                    }
                }
                let mut hasher = Sha1::new();
                hasher.update(version);
                hasher.update(&blob[start..r.pos]);
                let hex: String = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                out.push((name, hex));
            }
            _ => {
                return Err(BadBlob {
                    at: start,
                    why: "neither a header nor a profile at the top level",
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element builders, as the parser writes them.
    fn name(n: &str) -> Vec<u8> {
        let mut v = vec![NAME];
        v.extend(((n.len() + 1) as u16).to_le_bytes());
        v.extend(n.as_bytes());
        v.push(0);
        v
    }
    fn string(s: &str) -> Vec<u8> {
        let mut v = vec![STRING];
        v.extend(((s.len() + 1) as u16).to_le_bytes());
        v.extend(s.as_bytes());
        v.push(0);
        v
    }
    fn header(version: u32) -> Vec<u8> {
        let mut v = name("version");
        v.push(U32);
        v.extend(version.to_le_bytes());
        v
    }
    /// A profile with a nested struct and a blob, as the parser nests `policydb` and its DFA.
    fn profile(n: &str) -> Vec<u8> {
        let mut v = name("profile");
        v.push(STRUCT);
        v.extend(string(n));
        v.extend(name("policydb"));
        v.push(STRUCT);
        v.push(BLOB);
        v.extend(3u32.to_le_bytes());
        v.extend([STRUCTEND, STRUCT, 0]);
        v.push(STRUCTEND);
        v.extend([ARRAY, 1, 0, U64]);
        v.extend(7u64.to_le_bytes());
        v.push(ARRAYEND);
        v.push(STRUCTEND);
        v
    }
    fn sha1_hex(parts: &[&[u8]]) -> String {
        let mut h = Sha1::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn each_profile_hashes_as_the_kernel_does_version_then_its_own_bytes() {
        let (a, b) = (profile("p//a\\b"), profile("p//q x"));
        let mut blob = header(0x0020_2007);
        blob.extend(&a);
        // A second profile may follow without a header of its own: the last version holds.
        blob.extend(&b);
        let v = 0x0020_2007u32.to_le_bytes();
        assert_eq!(
            profile_hashes(&blob).unwrap(),
            [
                ("p//a\\b".to_string(), sha1_hex(&[&v, &a])),
                ("p//q x".to_string(), sha1_hex(&[&v, &b])),
            ]
        );
    }

    #[test]
    fn truncated_or_unknown_input_is_an_error_not_a_guess() {
        let mut blob = header(7);
        let headed = blob.len();
        blob.extend(profile("p//kid"));
        // Only a cut right after the header leaves whole elements (and no profile).
        for cut in (1..blob.len()).filter(|&c| c != headed) {
            assert!(profile_hashes(&blob[..cut]).is_err(), "cut at {cut}");
        }
        assert!(profile_hashes(&[0xff]).is_err());
        assert!(profile_hashes(&profile("p//kid")).is_err(), "no header");
        assert_eq!(profile_hashes(&[]).unwrap(), []);
    }
}
