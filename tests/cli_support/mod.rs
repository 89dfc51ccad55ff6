//! Shared fixtures for the CLI tests: ConfigMap-shaped source volumes, host directories, a
//! fake kernel (securityfs tree) and the real `apparmor_parser`.
#![allow(dead_code)]

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

/// The real parser, or a test failure in CI / a skip message locally.
pub fn real_parser() -> Option<PathBuf> {
    for p in ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"] {
        if Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("apparmor_parser is missing; CI must install the Debian package `apparmor`");
    }
    eprintln!("skipping: apparmor_parser not installed (apt-get install apparmor)");
    None
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
    cmd.env_clear().env("NODE_NAME", "test-node");
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
# Fake apparmor_parser: compile checks go to the real parser, kernel writes to a file.
real={real}
profiles={profiles}
log={log}
echo "$*" >> "$log"
mode=check
files=""
for a in "$@"; do
  case "$a" in
    --replace) mode=replace ;;
    --remove) mode=remove ;;
    --skip-kernel-load|--names|--debug) mode=check ;;
  esac
done
if [ "$mode" = check ]; then exec "$real" "$@"; fi
skip=""
[ -f {skipfile} ] && skip=$(cat {skipfile})
# Collect file arguments (anything that is an existing regular file).
for a in "$@"; do [ -f "$a" ] && files="$files $a"; done
for f in $files; do
  for name in $("$real" --names "$f"); do
    grep -v "^$name (" "$profiles" > "$profiles.new"; mv "$profiles.new" "$profiles"
    if [ "$mode" = replace ] && [ "$name" != "$skip" ]; then
      if grep -q complain "$f"; then echo "$name (complain)" >> "$profiles"; else echo "$name (enforce)" >> "$profiles"; fi
    fi
  done
done
exit 0
"#,
            real = real_parser.display(),
            profiles = dir.path().join("security/apparmor/profiles").display(),
            log = dir.path().join("calls.log").display(),
            skipfile = dir.path().join("skip").display(),
        );
        let fake = dir.path().join("fake_parser");
        fs::write(&fake, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
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
    /// Loads a profile "by hand", as an administrator would, outside this tool.
    pub fn load_by_hand(&self, line: &str) {
        let mut p = self.profiles();
        p.push_str(line);
        p.push('\n');
        fs::write(self.securityfs().join("apparmor/profiles"), p).unwrap();
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
