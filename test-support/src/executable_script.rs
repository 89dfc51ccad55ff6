//! Writing an executable script that a test then runs, for the library's unit tests and the CLI
//! tests.
//!
//! The file is written by a child `sh`, never through a file descriptor of the test process:
//! test threads spawn processes all the time, and a forked child that has not yet exec'd holds
//! a copy of every open descriptor, so a script written here could fail to start with ETXTBSY
//! ("Text file busy") until that child gets to exec.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes `content` to `path` with mode 755.
pub fn write(path: &Path, content: &str) {
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot start /bin/sh to write a script");
    sh.stdin
        .take()
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    assert!(
        sh.wait().unwrap().success(),
        "cannot write {}",
        path.display()
    );
}
