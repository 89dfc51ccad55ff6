//! Shared fixtures for the CLI tests: ConfigMap-shaped source volumes, host directories, a
//! fake kernel (securityfs tree) and the real `apparmor_parser`.

use aapl_test_support::{prereq, release_build};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A valid profile that compiles with Debian's and Ubuntu's include trees.
pub fn profile(name: &str) -> String {
    format!(
        "abi <abi/3.0>,\n#include <tunables/global>\nprofile {name} flags=(attach_disconnected) {{\n  \
         #include <abstractions/base>\n  /tmp/** rw,\n  deny /etc/** w,\n}}\n"
    )
}

/// A profile with a syntax error: line 4 lacks its comma, which the parser reports at line 5.
pub const BROKEN: &str =
    "abi <abi/3.0>,\nprofile broken {\n  /tmp/** rw,\n  /etc/** rw\n  junk,\n}\n";

/// Writes an executable script (see `test-support/src/executable_script.rs` for why through a child `sh`).
pub use aapl_test_support::executable_script::write as write_executable;

/// A kernel feature set the parser can compile (and cache) for on a machine whose own kernel has
/// no AppArmor: the one Debian's `apparmor` package ships.
pub const DEBIAN_FEATURES: &str = "/usr/share/apparmor-features/features";

/// One of the committed kernel feature dumps (`tests/fixtures/kernel-features/`, whose README
/// says which AKS kernel each stands for): a securityfs `apparmor/features` as those kernels
/// show it.
pub fn kernel_features_dump(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kernel-features")
        .join(name)
}

/// The real parser; when it is missing, a skip, or a test failure under CI (`prereq`).
pub fn real_parser() -> Option<PathBuf> {
    let found = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| "apparmor_parser is not installed (apt-get install apparmor)".to_string());
    prereq::require("CLI tests with the real apparmor_parser", found)
}

/// Trixie's AppArmor 4.1 parser (the image's), unpacked from the `.deb`s `tests/vm/prepare.sh`
/// caches, with trixie's glibc and its own include tree; a skip, or a failure under CI
/// (`prereq`), when they are not cached.
pub struct Parser41 {
    /// The unpacked packages (removed when this is dropped).
    pub tree: tempfile::TempDir,
    /// The command line that runs it: trixie's loader, its library path, the parser.
    pub argv: Vec<std::ffi::OsString>,
}

impl Parser41 {
    /// Its include tree (`abi/`, `abstractions/`, `tunables/`), as the image has it.
    pub fn base(&self) -> PathBuf {
        self.tree.path().join("etc/apparmor.d")
    }

    /// An executable at `path` that runs it with the arguments it is given (for `--parser`).
    pub fn script(&self, path: &Path) -> PathBuf {
        let quoted: Vec<String> = self
            .argv
            .iter()
            .map(|a| format!("'{}'", a.to_str().expect("a UTF-8 temporary path")))
            .collect();
        write_executable(
            path,
            &format!("#!/bin/sh\nexec {} \"$@\"\n", quoted.join(" ")),
        );
        path.to_path_buf()
    }
}

pub fn parser_41() -> Option<Parser41> {
    let cache = std::env::var_os("AAPL_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/aapl-ci"));
    let debs = cache.join("trixie/debs");
    let find = |prefix: &str| -> Result<PathBuf, String> {
        std::fs::read_dir(&debs)
            .map_err(|e| format!("{}: {e}", debs.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with("_amd64.deb"))
            })
            .ok_or_else(|| format!("no {prefix}*_amd64.deb in {}", debs.display()))
    };
    let found = find("apparmor_4.").and_then(|a| Ok((a, find("libc6_")?)));
    let (apparmor, libc) = prereq::require(
        "the 4.1 parser (run tests/vm/prepare.sh, which caches trixie's .debs)",
        found,
    )?;
    let tree = tempfile::tempdir().unwrap();
    for deb in [&apparmor, &libc] {
        let ok = std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(tree.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "dpkg-deb -x {}", deb.display());
    }
    let root = tree.path();
    let loader = [
        "usr/lib64/ld-linux-x86-64.so.2",
        "lib64/ld-linux-x86-64.so.2",
    ]
    .iter()
    .map(|l| root.join(l))
    .find(|l| l.exists())
    .expect("trixie's libc6 has the loader");
    let argv = vec![
        loader.into(),
        "--library-path".into(),
        root.join("usr/lib/x86_64-linux-gnu").into(),
        root.join("usr/sbin/apparmor_parser").into(),
    ];
    Some(Parser41 { tree, argv })
}

/// The release build of the executable (what the image ships), for measurements that only
/// mean something there; a skip, or a failure under CI (`prereq`), when it is missing or older
/// than the sources (`release_build`). `tests/run-all` builds it before the tests.
pub fn release_binary(what: &str) -> Option<PathBuf> {
    prereq::require(&format!("{what} (release build)"), release_build::loader())
}

/// A directory laid out like a ConfigMap volume: `key -> ..data/key`, `..data -> ..<ts>`.
pub struct Volume {
    pub dir: tempfile::TempDir,
    generation: u32,
}

impl Volume {
    pub fn new(files: &[(&str, &str)]) -> Self {
        let mut v = Volume {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        v.update(files);
        v
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Publishes a new generation the way the kubelet does: new timestamped dir, swap `..data`.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let gen_name = format!("..2026_11_24_06_00_00.{:09}", self.generation);
        let generation_dir = self.dir.path().join(&gen_name);
        fs::create_dir(&generation_dir).unwrap();
        for (key, content) in files {
            fs::write(generation_dir.join(key), content).unwrap();
        }
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&gen_name, &tmp).unwrap();
        fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") {
                fs::remove_file(entry.path()).unwrap();
            }
        }
        for (key, _) in files {
            symlink(format!("..data/{key}"), self.dir.path().join(key)).unwrap();
        }
    }
}

/// Every file in a directory with its content (what "untouched" is compared against).
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

pub fn loader() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apparmor-loader"));
    // These tests run copy on this machine, whose os-release is not a node's: declare the
    // node's AppArmor (tests of the os-release lookup pass `--node-apparmor auto`).
    cmd.env_clear()
        .env("NODE_NAME", "test-node")
        .env("APPARMOR_LOADER_NODE_APPARMOR", "4");
    cmd
}

/// `apparmor-loader copy` from a volume into a destination with the real parser.
pub fn copy(parser: &Path, source: &Path, dest: &Path) -> Command {
    let mut cmd = loader();
    cmd.arg("copy")
        .arg("--source")
        .arg(source)
        .arg("--dest")
        .arg(dest)
        .arg("--parser")
        .arg(parser);
    cmd
}

/// `apparmor-loader validate PATH` with the real parser.
pub fn validate(parser: &Path, path: &Path) -> Command {
    let mut cmd = loader();
    cmd.arg("validate").arg(path).arg("--parser").arg(parser);
    cmd
}

/// The file names `copy`'s ownership record lists, in order.
pub fn owned_keys(dest: &Path) -> Vec<String> {
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join(".apparmor-profile-loader.json")).unwrap())
            .unwrap();
    record["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// A fake kernel: `enabled` switch and a securityfs tree whose `profiles` file a fake parser
/// edits. The fake parser delegates compiling, `--names` and `--debug` to the real parser and
/// emulates `--replace`/`--remove` by editing the profiles file, so the loader's load, verify
/// and unload logic runs unchanged against it.
pub struct FakeKernel {
    pub dir: tempfile::TempDir,
}

impl FakeKernel {
    pub fn new(real_parser: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("security/apparmor")).unwrap();
        fs::write(dir.path().join("security/apparmor/profiles"), "").unwrap();
        fs::write(dir.path().join("enabled"), "Y\n").unwrap();
        let script = format!(
            r#"#!/bin/sh
# Fake apparmor_parser: compile checks go to the real parser, kernel writes to a file. Names
# and modes come from the real parser the way the loader reads them: `--names` one per line,
# modes from the `Name:`/`Mode:` pairs of the `--debug` dump (empty mode = enforce).
real={real}
profiles={profiles}
log={log}
echo "$*" >> "$log"
mode=check
for a in "$@"; do
  case "$a" in
    --replace) mode=replace ;;
    --remove) mode=remove ;;
    --skip-kernel-load|--names|--debug) mode=check ;;
  esac
done
if [ "$mode" = check ]; then exec "$real" "$@"; fi
# The parser's options that say what to compile for (kept, with their values), for the kernel's hashes.
cargs="" keep=""
for a in "$@"; do
  if [ -n "$keep" ]; then cargs="$cargs $a"; keep=""; continue; fi
  case "$a" in
    --base|--Include|--policy-features|--kernel-features) cargs="$cargs $a"; keep=1 ;;
  esac
done
skip=""
[ -f {skipfile} ] && skip=$(cat {skipfile})
tab=$(printf '\t')
# File arguments: anything that is an existing regular file.
for f in "$@"; do
  [ -f "$f" ] || continue
  modes=$("$real" --debug --skip-kernel-load --skip-cache "$f" 2>&1 | awk '
    /^Name:\t\t/ {{ name = substr($0, 8); next }}
    /^Mode:( |$)/ && name != "" {{
      m = substr($0, 6); sub(/,.*/, "", m); gsub(/^[ \t]+|[ \t]+$/, "", m)
      if (!(name in seen)) {{ seen[name] = 1; print name "\t" (m == "" ? "enforce" : m) }}
      name = ""
    }}')
  "$real" --names "$f" | while IFS= read -r name; do
    awk -v p="$name (" 'index($0, p) != 1' "$profiles" > "$profiles.new"; mv "$profiles.new" "$profiles"
    if [ "$mode" = replace ] && [ "$name" != "$skip" ]; then
      asked=$(printf '%s\n' "$modes" | awk -F"$tab" -v n="$name" '$1 == n {{ print $2; exit }}')
      # The enforce case is spelled out: load_enforce_as_complain() rewrites it.
      if [ "${{asked:-enforce}}" = enforce ]; then echo "$name (enforce)"; else echo "$name ($asked)"; fi >> "$profiles"
    fi
  done
  # The kernel's policy hashes (`keep_hashes`): what it computes from the bytes the parser sends.
  if [ "$mode" = replace ] && [ -f {hashflag} ]; then
    "$real" $cargs --skip-cache --ofile {dir}/blob "$f" 2>/dev/null
    python3 {dir}/kernel_hash.py {dir}/blob {policy} "$skip"
  fi
done
exit 0
"#,
            real = real_parser.display(),
            profiles = dir.path().join("security/apparmor/profiles").display(),
            log = dir.path().join("calls.log").display(),
            skipfile = dir.path().join("skip").display(),
            hashflag = dir.path().join("hashes").display(),
            dir = dir.path().display(),
            policy = dir
                .path()
                .join("security/apparmor/policy/profiles")
                .display(),
        );
        let fake = dir.path().join("fake_parser");
        write_executable(&fake, &script);
        FakeKernel { dir }
    }

    pub fn parser(&self) -> PathBuf {
        self.dir.path().join("fake_parser")
    }
    pub fn securityfs(&self) -> PathBuf {
        self.dir.path().join("security")
    }
    pub fn enabled_file(&self) -> PathBuf {
        self.dir.path().join("enabled")
    }
    pub fn profiles(&self) -> String {
        fs::read_to_string(self.securityfs().join("apparmor/profiles")).unwrap()
    }
    /// Makes the fake kernel keep policy hashes, as a real one does by default
    /// (`apparmor.hash_policy=1`): securityfs `apparmor/policy/profiles/*/{name,sha1}`, each
    /// profile's SHA-1 computed the way the kernel computes it from what the parser sends
    /// (`aa_unpack()`: the header's version word, then the profile's bytes), by a model of
    /// the kernel's reader written apart from the loader's.
    pub fn keep_hashes(&self) {
        fs::write(self.dir.path().join("hashes"), "").unwrap();
        fs::write(self.dir.path().join("kernel_hash.py"), KERNEL_HASH_PY).unwrap();
    }
    /// The kernel's hash of a loaded profile's policy (a top-level one), if it keeps one.
    pub fn policy_sha1(&self, name: &str) -> Option<String> {
        let mut dir = self.securityfs().join("apparmor/policy/profiles");
        for part in name.split("//") {
            dir = fs::read_dir(&dir)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|d| {
                    fs::read_to_string(d.join("name"))
                        .is_ok_and(|n| n.trim_end_matches('\n') == part)
                })?
                .join("profiles");
        }
        let sha1 = fs::read_to_string(dir.parent()?.join("sha1")).ok()?;
        Some(sha1.trim().to_string())
    }
    /// Loads a top-level profile "by hand" with the kernel's hash of its policy (see
    /// `keep_hashes`).
    pub fn load_by_hand_hashed(&self, name: &str, sha1: &str) {
        self.load_by_hand(&format!("{name} (enforce)"));
        let d = self
            .securityfs()
            .join("apparmor/policy/profiles")
            .join(format!("{name}.by-hand"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("name"), format!("{name}\n")).unwrap();
        fs::write(d.join("sha1"), format!("{sha1}\n")).unwrap();
    }
    /// Loads a profile "by hand", as an administrator would, outside this tool.
    pub fn load_by_hand(&self, line: &str) {
        let mut p = self.profiles();
        p.push_str(line);
        p.push('\n');
        fs::write(self.securityfs().join("apparmor/profiles"), p).unwrap();
    }
    /// The node reboots: the kernel forgets every profile, then the node's boot loads `lines`
    /// (its top-level files, as `apparmor.service` does).
    pub fn reboot(&self, lines: &[&str]) {
        fs::write(self.securityfs().join("apparmor/profiles"), "").unwrap();
        let _ = fs::remove_dir_all(self.securityfs().join("apparmor/policy"));
        for line in lines {
            self.load_by_hand(line);
        }
    }
    /// Makes the fake kernel load every profile that asks for enforce in complain mode, as if
    /// someone flipped it by hand.
    pub fn load_enforce_as_complain(&self) {
        let script = fs::read_to_string(self.parser()).unwrap();
        let flipped = script.replace("echo \"$name (enforce)\"", "echo \"$name (complain)\"");
        assert_ne!(
            script, flipped,
            "the fake parser has no enforce case to flip"
        );
        write_executable(&self.parser(), &flipped);
    }
    /// Makes the fake parser run `shell` (one or more lines of sh) first in every call, before it
    /// hands checks to the real parser: a fault to inject (`$mode` is `check`, `replace` or
    /// `remove`; `$*` the arguments).
    pub fn run_first(&self, shell: &str) {
        let anchor = "if [ \"$mode\" = check ]; then";
        let script = fs::read_to_string(self.parser()).unwrap();
        assert!(script.contains(anchor), "the fake parser has no {anchor:?}");
        write_executable(
            &self.parser(),
            &script.replacen(anchor, &format!("{shell}\n{anchor}"), 1),
        );
    }
    /// Makes the fake parser skip one profile silently, as the real one does for
    /// `disable/<file>`.
    pub fn skip_silently(&self, name: &str) {
        fs::write(self.dir.path().join("skip"), name).unwrap();
    }
    pub fn clear_parser_calls(&self) {
        let _ = fs::remove_file(self.dir.path().join("calls.log"));
    }
    pub fn parser_calls(&self) -> String {
        fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    /// `apparmor-loader load` against this fake kernel.
    pub fn load(&self, dest: &Path, cache: &Path) -> Command {
        let mut cmd = loader();
        cmd.arg("load")
            .arg("--dest")
            .arg(dest)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--securityfs")
            .arg(self.securityfs())
            .arg("--enabled-file")
            .arg(self.enabled_file())
            .arg("--parser")
            .arg(self.parser());
        cmd
    }
}

/// The fake kernel's model of how the kernel hashes each profile it unpacks
/// (`security/apparmor/policy_unpack.c`, `aa_unpack()` → `aa_calc_profile_hash()`): SHA-1 of the
/// header's `version` word (little-endian) and the profile's bytes, from its named `profile`
/// struct to the end of that struct. Writes each hash where the kernel shows it: under the policy
/// root, a directory per profile with its `name` (its own name only) and `sha1`, a child's below
/// its parent's `profiles/`.
const KERNEL_HASH_PY: &str = r#"import hashlib, os, struct, sys
b = open(sys.argv[1], "rb").read()
root, skip = sys.argv[2], sys.argv[3].encode()
pos = 0
def element():
    global pos
    name = None
    code = b[pos]; pos += 1
    if code == 4:
        n = struct.unpack_from("<H", b, pos)[0]; pos += 2
        name = b[pos:pos + n].rstrip(b"\0"); pos += n
        code = b[pos]; pos += 1
    size = {0: 1, 1: 2, 2: 4, 3: 8, 11: 2}.get(code)
    if code == 5:
        size = struct.unpack_from("<H", b, pos)[0]; pos += 2
    elif code == 6:
        size = struct.unpack_from("<I", b, pos)[0]; pos += 4
    payload = b[pos:pos + (size or 0)]; pos += size or 0
    return code, name, payload
version = None
while pos < len(b):
    start = pos
    code, name, payload = element()
    if code == 2 and name == b"version":
        version = payload
    elif code == 7 and name == b"profile":
        profile = element()[2].rstrip(b"\0")
        depth = 1
        while depth:
            c = element()[0]
            depth += (c == 7) - (c == 8)
        sha = hashlib.sha1(version + b[start:pos]).hexdigest()
        if profile == skip:
            continue
        d = root.encode()
        for part in profile.split(b"//"):
            d = os.path.join(d, hashlib.sha1(part).hexdigest()[:16].encode())
            os.makedirs(d, exist_ok=True)
            if not os.path.exists(os.path.join(d, b"name")):
                open(os.path.join(d, b"name"), "wb").write(part + b"\n")
            d = os.path.join(d, b"profiles")
        open(os.path.join(os.path.dirname(d), b"sha1"), "w").write(sha + "\n")
"#;

/// A node for `copy` and `load`: fake kernel (with a feature file, so the parser's cache works
/// without AppArmor on this machine), host profile directory, cache directory, ConfigMap volume.
/// `copy_cmd`/`load_cmd` run the steps as the DaemonSet does: `copy` sees the node's kernel
/// (read-only) and fills the cache `load` reads.
pub struct Node {
    pub kernel: FakeKernel,
    pub dest: tempfile::TempDir,
    pub cache: tempfile::TempDir,
    pub volume: Volume,
}

impl Node {
    pub fn with(files: &[(&str, &str)]) -> Option<Self> {
        let parser = real_parser()?;
        let kernel = FakeKernel::new(&parser);
        fs::copy(
            DEBIAN_FEATURES,
            kernel.securityfs().join("apparmor/features"),
        )
        .expect("Debian's apparmor package ships /usr/share/apparmor-features/features");
        Some(Node {
            kernel,
            dest: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            volume: Volume::new(files),
        })
    }

    pub fn copy_cmd(&self) -> Command {
        let mut cmd = copy(&self.kernel.parser(), self.volume.path(), self.dest.path());
        cmd.arg("--securityfs")
            .arg(self.kernel.securityfs())
            .arg("--enabled-file")
            .arg(self.kernel.enabled_file())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--node-root")
            .arg(self.cache.path().join("no-node-root"));
        cmd
    }

    pub fn load_cmd(&self) -> Command {
        let mut cmd = self.kernel.load(self.dest.path(), self.cache.path());
        cmd.arg("--node-root")
            .arg(self.cache.path().join("no-node-root"));
        cmd
    }

    pub fn copy(&self) -> assert_cmd::assert::Assert {
        self.copy_cmd().assert()
    }

    pub fn load(&self) -> assert_cmd::assert::Assert {
        self.load_cmd().assert()
    }
}
