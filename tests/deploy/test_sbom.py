"""build/sbom.py: the SBOM lists every crate the executable links and every .deb of the rootfs, and its
check notices when one is missing or wrong. Runs against the real `cargo tree` of this repository and a rootfs
manifest in parser-rootfs.sh's format; .ci/check-deploy runs the same check on the images' real rootfs."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "build"))  # gen_profiles_yaml, sbom: release inputs
import sbom  # noqa: E402

DEBS = [
    ("apparmor", "4.1.0-1", "trixie", "a" * 64, "apparmor_4.1.0-1_{arch}.deb"),
    ("apparmor", "3.0.8-3", "bookworm", "b" * 64, "apparmor_3.0.8-3_{arch}.deb"),
    ("libc6", "2.41-12", "trixie", "c" * 64, "libc6_2.41-12_{arch}.deb"),
]


def rootfs(tmp_path: Path, arch: str) -> Path:
    root = tmp_path / f"rootfs-{arch}"
    manifest = root / sbom.MANIFEST
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        "".join(f"{p} {v} {arch} {s} {d} {f.format(arch=arch)}\n" for p, v, s, d, f in DEBS)
    )
    return root


@pytest.fixture(scope="module", params=["amd64", "arm64"])
def built(request, tmp_path_factory):
    arch = request.param
    tmp = tmp_path_factory.mktemp(arch)
    root = rootfs(tmp, arch)
    binary = tmp / "apparmor-loader"
    binary.write_bytes(b"\x7fELF stand-in for " + arch.encode())
    return arch, root, binary, sbom.generate(arch, str(root), str(binary), "0.1.0")


def purls(doc):
    return {r["referenceLocator"] for p in doc["packages"] for r in p.get("externalRefs", [])}


def test_sbom_lists_every_linked_crate_with_version_and_license(built):
    arch, root, binary, doc = built
    crates = sbom.linked_crates(arch)
    assert len(crates) > 50, "cargo tree of the executable lists its dependency graph"
    for name, ver in crates - {(sbom.NAME, "0.1.0")}:
        assert f"pkg:cargo/{name}@{ver}" in purls(doc)
    licensed = [p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-crate-")]
    assert all(p["licenseDeclared"] != "NOASSERTION" for p in licensed), "every crates.io crate declares one"
    assert sbom.check(doc, arch, str(root), str(binary)) == []


def test_sbom_holds_no_dev_or_build_only_crate(built):
    arch, _, _, doc = built
    # dev-dependencies (tests only) and proc-macros (compile time only) are not in the executable
    for dev in ("proptest", "assert_cmd", "tower-test", "serde_derive", "clap_derive"):
        assert not any(p.startswith(f"pkg:cargo/{dev}@") for p in purls(doc)), dev


def test_sbom_lists_every_deb_of_the_rootfs_with_arch_and_checksum(built):
    arch, _, _, doc = built
    for pkg, ver, suite, digest, _ in DEBS:
        matches = [
            p for p in doc["packages"]
            if {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                "referenceLocator": f"pkg:deb/debian/{pkg}@{ver}?arch={arch}&distro={suite}"} in p.get("externalRefs", [])
        ]
        assert len(matches) == 1, (pkg, ver)
        assert matches[0]["checksums"] == [{"algorithm": "SHA256", "checksumValue": digest}]


def test_check_names_a_missing_crate_a_missing_deb_and_a_changed_executable(built, tmp_path):
    arch, root, binary, doc = built
    broken = copy.deepcopy(doc)
    broken["packages"] = [
        p for p in broken["packages"]
        if p["name"] not in ("tokio", "libc6")
    ]
    problems = sbom.check(broken, arch, str(root), str(binary))
    assert any(p.startswith("crate tokio ") for p in problems), problems
    assert any(p.startswith("Debian package libc6 ") for p in problems), problems
    other = tmp_path / "other"
    other.write_bytes(b"another build")
    assert any("executable" in p for p in sbom.check(doc, arch, str(root), str(other)))


def test_rootfs_manifest_of_another_arch_is_refused(tmp_path):
    root = rootfs(tmp_path, "amd64")
    with pytest.raises(SystemExit, match="is for amd64, not arm64"):
        sbom.debian_packages(str(root), "arm64")
